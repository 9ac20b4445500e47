"""What the benchmark scripts share: run a measurement in a fresh child process and read its peak RSS.

A script re-runs itself as `SCRIPT _child MODE RESULT.json ARGS...`; the child writes its report
as JSON and the driver reads the child's own peak RSS from `os.wait4`. Standard library only,
so the driver stays small (on Linux a child's ru_maxrss starts from its parent's size).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path

CHILD = "_child"


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


def child_main(children: Mapping[str, Callable[..., dict]], argv: Sequence[str]) -> None:
    """`_child MODE RESULT.json ARGS...`: run MODE, write its report as JSON."""
    mode, result, *args = argv
    Path(result).write_text(json.dumps(children[mode](*args)))


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


def driver_peak_mib() -> float:
    """This (driver) process's own peak RSS: measured children cannot be below it."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")
