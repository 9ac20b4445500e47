"""What the benchmark scripts share: run a measurement in a fresh child process and read its peak RSS.

A script re-runs itself as `SCRIPT _child MODE RESULT.json ARGS...`; the child writes its report
as JSON and the driver reads the child's own peak RSS from `os.wait4`. Standard library only,
so the driver stays small (on Linux a child's ru_maxrss starts from its parent's size).
Also: the driver's temporary folder, /proc memory figures, the machine's load, and the
repository's modules that are not installed (tests/generators.py, models/make_examples.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType

CHILD = "_child"
WARMUP = 1  # uncounted rounds: on a fresh VM the first writes into new page cache are several times slower
REPO = Path(__file__).resolve().parents[1]


class BenchError(RuntimeError):
    """A measured subprocess failed: the benchmark cannot go on."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One subprocess run: wall seconds, peak RSS and what the child reported."""

    wall_s: float
    peak_mib: float
    report: dict


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One row of a table: a child mode and how to build its arguments for run `i`."""

    key: str
    title: str
    mode: str
    args: Callable[[int], list[str]]


def script(children: Mapping[str, Callable[..., dict]], main: Callable[[], int]) -> None:
    """A benchmark script's entry point: `_child MODE RESULT.json ARGS...` runs MODE and writes its report
    as JSON; anything else is the driver, `main`."""
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        mode, result, *args = sys.argv[2:]
        Path(result).write_text(json.dumps(children[mode](*args)))
    else:
        sys.exit(main())


def run_child(script: str, mode: str, args: Sequence[str], result: Path, *, cwd: Path) -> Sample:
    """Run one child of `script` in `cwd`; its own peak RSS comes from `os.wait4`. Raise BenchError if it fails."""
    result.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(script).resolve()), CHILD, mode, str(result), *args]
    env = {**os.environ, "ONNXFUSE_DEBUG": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    log = result.with_suffix(".log")
    with open(log, "wb") as handle:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    returncode = os.waitstatus_to_exitcode(status)
    if returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise BenchError(f"{mode} exited with {returncode}: {shlex.join(command)}\n{tail}")
    return Sample(wall_s=wall, peak_mib=usage.ru_maxrss / 1024, report=json.loads(result.read_text()))


def interleaved(
    measurements: Sequence[Measurement],
    repeat: int,
    measure: Callable[[Measurement, int], Sample],
    after: Callable[[int, dict[str, Sample]], None],
) -> dict[str, list[Sample]]:
    """WARMUP uncounted rounds, then `repeat` counted ones, each running every measurement once in turn
    (`measure(m, run)`; a line of progress each), then `after(run, that round's samples)`."""
    samples: dict[str, list[Sample]] = {}
    for run in range(WARMUP + repeat):
        label = "warm-up" if run < WARMUP else f"run {run - WARMUP + 1}/{repeat}"
        current = {}
        for m in measurements:
            current[m.key] = sample = measure(m, run)
            work = sample.report.get("work_s")
            shown = f"{work:6.2f} s work" if work is not None else " " * 13
            print(
                f"  {label:>9} {m.key:>9}: {sample.wall_s:6.2f} s wall {shown} {sample.peak_mib:8.1f} MiB", flush=True
            )
        if run >= WARMUP:
            for key, sample in current.items():
                samples.setdefault(key, []).append(sample)
        after(run, current)
    return samples


def median(samples: Sequence[Sample], value: Callable[[Sample], float]) -> float:
    return statistics.median(value(s) for s in samples)


def versions(names: Sequence[str]) -> str:
    """The installed versions of `names`, and Python's."""
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found) + f", python {sys.version.split()[0]}"


def proc_status(*keys: str) -> dict[str, float]:
    """This process's /proc/self/status entries `keys` (VmHWM, VmRSS, RssAnon, RssFile, ...) in MiB (Linux)."""
    found = dict.fromkeys(keys, float("nan"))
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in found:
                found[key] = int(value.split()[0]) / 1024
    return found


def driver_peak_mib() -> float:
    """This (driver) process's own peak RSS: measured children cannot be below it."""
    return proc_status("VmHWM")["VmHWM"]


def header(packages: Sequence[str]) -> str:
    """The lines every benchmark prints: its command, the versions of `packages` and Python, the machine."""
    command = shlex.join([sys.executable, *sys.argv])
    return f"command: {command}\nversions: {versions(packages)}\nmachine: {machine()}"


def machine() -> str:
    """Cores and the 1/5/15-minute load averages: other processes on a small machine distort the medians."""
    return f"{os.cpu_count()} cores; load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def repo_module(relative: str) -> ModuleType:
    """A module of this repository that is not installed, e.g. `tests/generators.py`, imported by path once."""
    path = REPO / relative
    name = path.stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise BenchError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before running it: dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


@contextlib.contextmanager
def temporary_folder(prefix: str, *, keep: bool) -> Iterator[Path]:
    """A fresh folder for one benchmark run: removed afterwards, or kept and its path printed with --keep."""
    if not keep:
        with tempfile.TemporaryDirectory(prefix=prefix) as folder:
            yield Path(folder)
        return
    folder = tempfile.mkdtemp(prefix=prefix)
    try:
        yield Path(folder)
    finally:
        print(f"\nkept: {folder}")


def drive(prefix: str, keep: bool, run: Callable[[Path], int]) -> int:
    """Run a driver in its temporary folder; a failed child prints one `error:` line and exits 1."""
    with temporary_folder(prefix, keep=keep) as root:
        try:
            return run(root)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
