"""A merge that is killed, or that races another merge for the same OUT, never leaves a partial OUT.

The sources are two MLP regressors built with onnx.helper (as benchmarks/bench_merge.py builds them),
each with SOURCE_MIB MiB of float32 weights in external data, so that writing the fused file takes
long enough to be interrupted. `onnxfuse merge` runs as a real process
(`python -c "from onnxfuse.cli import main; main()" merge ...`); the test polls OUT's folder for the
workspace (`emit.workspace`: `.OUT.*.tmp`) and sends the signal in the chosen phase:

    workspace   the temp folder has existed for SETTLE seconds and the fused file is not begun
                (a signal the very instant the folder appears is the last test's case)
    writing     `packed.onnx` (the fused file itself) is being written into it: at least MID_WRITE
                bytes there and the view that verify reads not yet written (in practice the signal
                lands when 1-2 MB of the ~300 MB are written)
    verifying   the staged file is complete and verify is running on it

What users rely on (INTERFACE.md: "On any failure no OUT file is left behind, and an existing OUT
is replaced only by a complete, verified file") is asserted for SIGTERM and SIGINT in every phase.
That the temp folder is removed too (README: "Ctrl-C or SIGTERM leave nothing behind") is a separate
test: with Python's default SIGTERM handler the process would end without running `finally` blocks,
so it relies on `cli.main` installing a SIGTERM handler that raises.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from generators import write_mlp

from onnxfuse import digest
from onnxfuse.cli import cli

SOURCE_MIB = 144  # per source: two of them make a ~288 MiB fused file
HIDDEN = int((SOURCE_MIB * 2**20 / 4) ** 0.5)  # W1 is HIDDEN x HIDDEN float32
FEATURES = ("a,b,c,d", "e,f,g,h")
RUN_SECONDS = 120
SETTLE = 0.02
MID_WRITE = 1 << 20  # "writing": the fused file has at least this many bytes, and is not complete
PREVIOUS = b"the previous, good fused model"


# ------------------------------------------------------------------------------------------------
# Sources and processes
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """a.onnx and b.onnx, SOURCE_MIB MiB of weights each; removed afterwards (pytest keeps its temp dirs)."""
    folder = tmp_path_factory.mktemp("interrupt_sources")
    a, b = folder / "a.onnx", folder / "b.onnx"
    write_mlp(a, widths=(4, HIDDEN, HIDDEN, 1), seed=1)
    write_mlp(b, widths=(4, HIDDEN, HIDDEN, 1), seed=2)
    yield a, b
    shutil.rmtree(folder, ignore_errors=True)


MAIN = "from onnxfuse.cli import main; main()"
# the same command with every fused file counted as over 2 GB: OUT + OUT-stem.<hash>.data, in seconds
MAIN_OVER_LIMIT = (
    "import functools; from onnxfuse import emit, pipeline; "
    "pipeline.stage = functools.partial(emit.stage, limit=0); " + MAIN
)


def start_merge(models: tuple[Path, Path], out: Path, log: Path, *, main: str = MAIN) -> subprocess.Popen:
    """`onnxfuse merge A B --fusion mean -o OUT` in its own process; stdout and stderr go to `log`.*"""
    command = [sys.executable, "-c", main, "merge", *map(str, models)]
    command += ["--features", FEATURES[0], "--features", FEATURES[1], "--fusion", "mean", "-o", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "ONNXFUSE_DEBUG"}
    with open(log.with_suffix(".out"), "wb") as stdout, open(log.with_suffix(".err"), "wb") as stderr:
        return subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)


def finish(process: subprocess.Popen, log: Path) -> tuple[int, str]:
    try:
        code = process.wait(timeout=RUN_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"merge {process.args} did not end within {RUN_SECONDS} s")
    return code, log.with_suffix(".err").read_text(errors="replace")


def workspaces(folder: Path, out: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(f".{out.name}.") and p.name.endswith(".tmp"))


def leftovers(folder: Path, out: Path) -> list[str]:
    """Everything in OUT's folder but OUT, with sizes: what an interrupted merge left behind."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path != out:
            size = f" ({path.stat().st_size} bytes)" if path.is_file() else "/"
            found.append(f"{path.relative_to(folder)}{size}")
    return found


def out_state(out: Path) -> str:
    if not out.exists():
        return "absent"
    size = out.stat().st_size
    if size == len(PREVIOUS) and out.read_bytes() == PREVIOUS:
        return "previous"
    return f"{size} bytes that are not the previous OUT"


def in_phase(phase: str, folder: Path, out: Path) -> Callable[[], str | None]:
    """A probe: None until the merge is in `phase`, then a note on what the workspace held."""

    first_seen: dict[str, float] = {}

    def probe() -> str | None:
        for workspace in workspaces(folder, out):
            try:
                names = {p.name: p.stat().st_size for p in workspace.iterdir()}
            except FileNotFoundError:
                return None
            age = time.perf_counter() - first_seen.setdefault(workspace.name, time.perf_counter())
            if phase == "workspace" and (age >= SETTLE or names):
                return f"workspace {workspace.name} ({age * 1000:.0f} ms old): {names}"
            if phase == "writing" and names.get("packed.onnx", 0) >= MID_WRITE and "view.onnx" not in names:
                return f"workspace {workspace.name}: {names}"
            if phase == "verifying" and "verify.onnx" in names:
                return f"workspace {workspace.name}: {names}"
        return None

    return probe


# ------------------------------------------------------------------------------------------------
# (a) killed mid-merge
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Killed:
    """One merge that got `signal` in `phase`, and what it left."""

    signal: str
    phase: str
    existing: bool
    hit: str | None  # what the workspace held when the signal went, None if the merge ended first
    code: int
    stderr: str
    out: str  # "absent", "previous" (the existing OUT, unchanged) or what else is there
    leftovers: list[str]
    seconds: float

    def describe(self) -> str:
        return (
            f"{self.signal} in phase {self.phase!r} (existing OUT: {self.existing}): signal sent when {self.hit}; "
            f"exit status {self.code}, stderr {self.stderr[-600:]!r}, OUT {self.out}, left {self.leftovers}"
        )


SCENARIOS = [
    ("SIGTERM", "workspace", False),
    ("SIGTERM", "writing", True),
    ("SIGTERM", "verifying", False),
    ("SIGINT", "workspace", True),
    ("SIGINT", "writing", False),
    ("SIGINT", "verifying", True),
]
IDS = [f"{name}-{phase}-{'existing_out' if existing else 'no_out'}" for name, phase, existing in SCENARIOS]


def kill_merge(sources: tuple[Path, Path], root: Path, name: str, phase: str, existing: bool) -> Killed:
    folder = root / f"{name}-{phase}"
    folder.mkdir()
    out = folder / "fused.onnx"
    if existing:
        out.write_bytes(PREVIOUS)
    log = root / f"{name}-{phase}.log"
    start = time.perf_counter()
    process = start_merge(sources, out, log)
    probe, hit = in_phase(phase, folder, out), None
    while process.poll() is None and time.perf_counter() - start < RUN_SECONDS:
        hit = probe()
        if hit is not None:
            process.send_signal(getattr(signal, name))
            break
        time.sleep(0.0005)
    code, stderr = finish(process, log)
    return Killed(
        signal=name,
        phase=phase,
        existing=existing,
        hit=hit,
        code=code,
        stderr=stderr,
        out=out_state(out),
        leftovers=leftovers(folder, out),
        seconds=time.perf_counter() - start,
    )


@pytest.fixture(scope="module")
def killed(sources: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Killed]:
    """Every scenario once; the tests below look at different sides of the same runs."""
    root = tmp_path_factory.mktemp("interrupt_killed")
    runs = {
        case_id: kill_merge(sources, root, name, phase, existing)
        for case_id, (name, phase, existing) in zip(IDS, SCENARIOS, strict=True)
    }
    for path in root.rglob("*.onnx"):  # what a killed merge left can be hundreds of MB
        path.unlink()
    return runs


@pytest.mark.parametrize("case_id", IDS)
def test_killed_merge_leaves_no_partial_out(killed: dict[str, Killed], case_id: str) -> None:
    run = killed[case_id]
    assert run.hit is not None, f"the merge ended (exit {run.code}) before phase {run.phase!r}: {run.describe()}"
    assert run.code != 0, run.describe()
    assert run.out == ("previous" if run.existing else "absent"), run.describe()
    assert not any(e.startswith("fused.data") for e in run.leftovers), run.describe()


@pytest.mark.parametrize("case_id", IDS)
def test_killed_merge_exits_130_with_one_error_line(killed: dict[str, Killed], case_id: str) -> None:
    """README: exit status 130 when interrupted; Ctrl-C and SIGTERM alike end in one `error:` line.

    Blank lines are not counted: click echoes one newline to stderr on KeyboardInterrupt (after `^C`).
    """
    run = killed[case_id]
    assert run.hit is not None, run.describe()
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.code == 130, run.describe()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), run.describe()


@pytest.mark.parametrize("case_id", IDS)
def test_killed_merge_leaves_no_temp_folder(killed: dict[str, Killed], case_id: str) -> None:
    """The workspace is removed whatever ends the merge (SIGTERM needs a handler that raises)."""
    run = killed[case_id]
    assert run.hit is not None, run.describe()
    assert run.leftovers == [], f"temp files left behind: {run.describe()}"


def test_interrupt_right_after_the_workspace_is_made_leaves_no_folder(
    sources: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal can land the moment the temp folder exists, before the `finally` that removes it is armed.

    Seen with real signals: sending SIGTERM the instant `.fused.onnx.*.tmp` appears left that (empty)
    folder in about 1 run in 12. Here the KeyboardInterrupt that `cli.main`'s handler raises is raised
    by `os.mkdir` itself, right after it made the folder (Python runs signal handlers between
    bytecodes, so a real signal can land there).
    """
    real_mkdir = os.mkdir

    def interrupted_mkdir(path: object, *args: object, **kwargs: object) -> None:
        real_mkdir(path, *args, **kwargs)
        if Path(str(path)).name.startswith(".fused.onnx."):
            raise KeyboardInterrupt(f"signal {int(signal.SIGTERM)}")

    monkeypatch.delenv("ONNXFUSE_DEBUG", raising=False)
    monkeypatch.setattr(os, "mkdir", interrupted_mkdir)
    out = tmp_path / "fused.onnx"
    args = ["merge", *map(str, sources), "--features", FEATURES[0], "--features", FEATURES[1], "--fusion", "mean"]
    result = CliRunner().invoke(cli, [*args, "-o", str(out)])
    monkeypatch.undo()

    assert result.exit_code == 130, (result.exit_code, result.stderr)
    assert not out.exists()
    assert leftovers(tmp_path, out) == [], "the interrupted merge left its temp folder"


# ------------------------------------------------------------------------------------------------
# (b) two merges racing for the same OUT
# ------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def references(sources: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """sha256 of the fused file of A+B and of B+A, each merged alone."""
    root = tmp_path_factory.mktemp("interrupt_references")
    a, b = sources
    found = {}
    for key, models in (("ab", (a, b)), ("ba", (b, a))):
        out = root / f"{key}.onnx"
        code, stderr = finish(start_merge(models, out, root / f"{key}.log"), root / f"{key}.log")
        assert code == 0, stderr
        found[key] = sha256(out)
        out.unlink()
    assert found["ab"] != found["ba"], "the two orders should give different files"
    return found


@pytest.mark.parametrize("orders", [("ab", "ab"), ("ab", "ba")], ids=["same_inputs", "different_inputs"])
def test_concurrent_merges_leave_one_complete_valid_out(
    sources: tuple[Path, Path], references: dict[str, str], tmp_path: Path, orders: tuple[str, str]
) -> None:
    a, b = sources
    models = {"ab": (a, b), "ba": (b, a)}
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "fused.onnx"
    logs = [tmp_path / f"merge{i}.log" for i in range(2)]
    processes = [start_merge(models[order], out, log) for order, log in zip(orders, logs, strict=True)]
    overlap, start = 0, time.perf_counter()
    while any(p.poll() is None for p in processes) and time.perf_counter() - start < RUN_SECONDS:
        overlap = max(overlap, len(workspaces(folder, out)))
        time.sleep(0.001)
    results = [finish(process, log) for process, log in zip(processes, logs, strict=True)]
    try:
        assert overlap == 2, "the two merges were never in their workspaces at the same time: no race tested"
        check_race(folder, out, results, {references[order] for order in orders})
    finally:
        shutil.rmtree(folder)


def check_race(folder: Path, out: Path, results: list[tuple[int, str]], expected: set[str]) -> None:
    """Both merges succeeded, OUT is one of the `expected` files and runs (`expected` empty: checked by the caller)."""
    for code, stderr in results:
        assert code == 0, f"a concurrent merge failed: exit {code}, {stderr!r}"
    if expected:
        assert sorted(p.name for p in folder.iterdir()) == ["fused.onnx"], leftovers(folder, out)
        assert sha256(out) in expected, "OUT is neither merge's complete file"
    onnx.checker.check_model(str(out), full_check=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    rows = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    (prediction,) = session.run(None, {session.get_inputs()[0].name: rows})
    assert prediction.shape == (16,)
    assert np.isfinite(prediction).all()


# ------------------------------------------------------------------------------------------------
# (c) over 2 GB: OUT and its weights' file switch together
# ------------------------------------------------------------------------------------------------


def data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".data"))


@pytest.fixture(scope="module")
def pair_references(sources: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """(sha256 of OUT, name of its weights' file) of A+B and of B+A over the limit, each merged alone."""
    root = tmp_path_factory.mktemp("interrupt_pairs")
    a, b = sources
    found = {}
    for key, models in (("ab", (a, b)), ("ba", (b, a))):
        folder = root / key
        folder.mkdir()
        out = folder / "fused.onnx"
        code, stderr = finish(start_merge(models, out, root / f"{key}.log", main=MAIN_OVER_LIMIT), root / f"{key}.log")
        assert code == 0, stderr
        (data,) = data_files(folder)
        found[key] = (sha256(out), data.name)
        shutil.rmtree(folder)
    assert found["ab"][1] != found["ba"][1], "the two orders should give different weights' files"
    return found


@pytest.mark.parametrize("orders", [("ab", "ab"), ("ab", "ba")], ids=["same_inputs", "different_inputs"])
@pytest.mark.parametrize("existing", [False, True], ids=["no_out", "previous_pair"])
def test_concurrent_merges_over_the_limit_leave_one_complete_valid_pair(
    sources: tuple[Path, Path],
    pair_references: dict[str, tuple],
    tmp_path: Path,
    orders: tuple[str, str],
    existing: bool,
) -> None:
    """Two merges race for OUT, which (when `existing`) names a previous pair's weights: one whole pair is left."""
    a, b = sources
    models = {"ab": (a, b), "ba": (b, a)}
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "fused.onnx"
    if existing:  # a previous pair, of other weights than either merge writes
        code, stderr = finish(
            start_merge((a, a), out, tmp_path / "old.log", main=MAIN_OVER_LIMIT), tmp_path / "old.log"
        )
        assert code == 0, stderr
        (previous,) = data_files(folder)
    logs = [tmp_path / f"merge{i}.log" for i in range(2)]
    processes = [start_merge(models[o], out, log, main=MAIN_OVER_LIMIT) for o, log in zip(orders, logs, strict=True)]
    overlap, start = 0, time.perf_counter()
    while any(p.poll() is None for p in processes) and time.perf_counter() - start < RUN_SECONDS:
        overlap = max(overlap, len(workspaces(folder, out)))
        time.sleep(0.001)
    results = [finish(process, log) for process, log in zip(processes, logs, strict=True)]
    try:
        assert overlap == 2, "the two merges were never in their workspaces at the same time: no race tested"
        for code, stderr in results:
            assert code == 0, f"a concurrent merge failed: exit {code}, {stderr!r}"
        (data,) = data_files(folder)
        assert sorted(p.name for p in folder.iterdir()) == sorted(["fused.onnx", data.name]), leftovers(folder, out)
        assert (sha256(out), data.name) in {pair_references[o] for o in orders}, "OUT is neither merge's pair"
        assert not existing or not previous.exists()
        digest.check_digest(out)  # OUT's bytes, and the weights' file its name's hash says
        check_race(folder, out, [], set())
    finally:
        shutil.rmtree(folder)


# the over-limit command, killed (SIGKILL: no cleanup of any kind) right after the weights' file is in place and
# before OUT's rename, the one atomic switch
MAIN_KILLED_AT_THE_SWITCH = (
    "import functools, os, signal; from onnxfuse import emit, pipeline; "
    "pipeline.stage = functools.partial(emit.stage, limit=0); real = os.replace; "
    "moved = []; "
    "kill = lambda: os.kill(os.getpid(), signal.SIGKILL); "
    "os.replace = lambda src, dst: (kill() if moved and str(dst).endswith('.onnx') else "
    "(moved.append(dst) if str(dst).endswith('.data') else None, real(src, dst))[1]); " + MAIN
)


def predictions(out: Path, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (prediction,) = session.run(None, {session.get_inputs()[0].name: rows})
    return prediction


def test_kill_between_the_weights_and_out_leaves_the_previous_pair_whole(sources: tuple[Path, Path], tmp_path: Path):
    """SIGKILL after the new weights' file is moved in and before OUT is renamed: OUT still names its own weights,
    whose content matches the hash in their name, and gives the outputs it gave before; the next merge's switch
    removes the weights' file the killed one left."""
    a, b = sources
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "fused.onnx"
    code, stderr = finish(start_merge((a, b), out, tmp_path / "old.log", main=MAIN_OVER_LIMIT), tmp_path / "old.log")
    assert code == 0, stderr
    (previous,) = data_files(folder)
    before = sha256(out)
    rows = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
    expected = predictions(out, rows)

    code, _ = finish(
        start_merge((b, a), out, tmp_path / "killed.log", main=MAIN_KILLED_AT_THE_SWITCH), tmp_path / "killed.log"
    )

    assert code == -signal.SIGKILL, "the merge was not killed at the switch"
    assert sha256(out) == before, "OUT changed although its rename never happened"
    assert previous.exists() and digest.external_locations(out) == [previous.name]
    digest.check_digest(out)
    np.testing.assert_array_equal(predictions(out, rows), expected)
    left = [p.name for p in data_files(folder) if p != previous]
    assert len(left) == 1, f"the killed merge's weights' file should be the one thing left behind: {left}"
    code, stderr = finish(start_merge((a, a), out, tmp_path / "next.log", main=MAIN_OVER_LIMIT), tmp_path / "next.log")
    assert code == 0, stderr
    assert [p.name for p in data_files(folder)] == digest.external_locations(out), "the next switch sweeps them"
