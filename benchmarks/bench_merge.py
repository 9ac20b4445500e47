"""Time and peak memory of `onnxfuse merge` on two large models, beside the floors it is judged against.

What it measures, each in its own fresh subprocess so every peak RSS is that process's own
(read with `os.wait4`, which returns the child's rusage: its peak, or that of a subprocess it
waited for if higher):

    baseline  python + `import onnxfuse.pipeline`: the interpreter and its imports
    (a) floor onnx-ir: `ir.load` both sources, `ir.save` each to a new file with external data
    (b) floor onnxruntime: one InferenceSession of the fused file (prepacking off), one run on 64 rows
    (c) onnxfuse: the whole `onnxfuse merge A B --features a,b,c,d --features e,f,g,h --fusion mean -o OUT`
    (d) onnxfuse compile stages only: `pipeline.merge` itself with `verify` replaced by a no-op

The two sources are generated first (deterministic, seeded numpy): MLP regressors built with
onnx.helper at opset 21 / IR 10, input `X` float [N, 4], output `variable` float [N, 1], each
with `--mb` MiB of float32 MatMul weights in one `.data` file beside its `.onnx`. All files live
in a temporary folder that is deleted at the end (unless `--keep`).

After one uncounted warm-up round, every measurement runs `--repeat` times, interleaved, each
after `os.sync()`; the table shows medians. `wall` is the whole subprocess (interpreter start
and imports included), `work` the part after the imports. The children run in the temporary
folder's root, not beside the sources; every path given to them is absolute.

Targets (PASS/MISS is printed, the exit status is 0 unless something fails):

    (d) wall / (a) wall           <= 2x    compile stages vs the load+save floor
    (d) peak RSS                  <  300 MiB
    (c) peak RSS / fused file     <  1.3x  whole merge vs the weights it writes

Run it from the repository root:

    python benchmarks/bench_merge.py               # 2 x 200 MiB sources, 3 repeats
    python benchmarks/bench_merge.py --mb 20 --repeat 1 --keep

Sizes are in MiB (2**20 bytes). The driver process imports only the standard library: on Linux a
child's ru_maxrss starts from the RSS of the process that spawned it, so the driver stays small
(its own peak is printed; measured peaks cannot be below it).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _children import (
    WARMUP,
    Measurement,
    Sample,
    drive,
    driver_peak_mib,
    header,
    interleaved,
    median,
    proc_status,
    repo_module,
    run_child,
    script,
)

MIB = 1 << 20
FEATURES = ("a,b,c,d", "e,f,g,h")
SEEDS = (1, 2)
RUN_ROWS = 64
TARGET_TIME_RATIO = 2.0
TARGET_STAGES_RSS_MIB = 300.0
TARGET_MERGE_RSS_RATIO = 1.3


@dataclasses.dataclass(frozen=True)
class Paths:
    """Every file of one benchmark, inside the temporary folder."""

    root: Path

    @property
    def sources(self) -> tuple[Path, Path]:
        return (self.root / "src" / "a.onnx", self.root / "src" / "b.onnx")

    def fused(self, key: str, run: int) -> Path:
        return self.root / "out" / f"{key}{run}" / "fused.onnx"

    def copies(self, run: int) -> Path:
        return self.root / "out" / f"floor{run}"

    def result(self, key: str, run: int) -> Path:
        return self.root / "log" / f"{key}{run}.json"


# ---------------------------------------------------------------------------------------------
# Child side: each function below runs in its own subprocess (`bench_merge.py _child MODE ...`).
# ---------------------------------------------------------------------------------------------


def _memory_now() -> dict[str, float]:
    """VmHWM / VmRSS / RssAnon / RssFile of this process, MiB (Linux)."""
    return proc_status("VmHWM", "VmRSS", "RssAnon", "RssFile")


class _Clock:
    """Stage timings and memory, from the moment the imports are done."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.last = self.start
        self.stages: list[dict] = []

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.stages.append({"stage": name, "s": now - self.last, **_memory_now()})
        self.last = now

    def report(self, **extra: object) -> dict:
        return {"work_s": time.perf_counter() - self.start, "stages": self.stages, **extra}


def child_generate(out_dir: str, mb: str) -> dict:
    """Write a.onnx/a.data and b.onnx/b.data: two seeded MLP regressors of `mb` MiB each, 4 MatMuls
    (`X[N,4]` -> 4xH -> HxH -> HxH -> Hx1 -> `variable [N,1]`), by tests/generators.py's `write_mlp`."""
    write_mlp = repo_module("tests/generators.py").write_mlp
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    hidden = max(8, round((float(mb) * MIB / 8) ** 0.5))
    widths = (4, hidden, hidden, hidden, 1)
    sizes = [write_mlp(folder / f"{name}.onnx", widths=widths, seed=seed) for name, seed in zip(("a", "b"), SEEDS)]
    return {"hidden": hidden, "weight_bytes": sizes}


def child_baseline() -> dict:
    """The interpreter plus the imports every onnxfuse run pays."""
    import onnxfuse.pipeline  # noqa: F401

    return _Clock().report()


def child_floor_save(a: str, b: str, out_dir: str) -> dict:
    """onnx-ir's natural load+save: both models loaded, each saved with its own external data."""
    import onnx_ir as ir

    clock = _Clock()
    models = [ir.load(a), ir.load(b)]
    clock.mark("ir.load x2")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for model, name in zip(models, ("a", "b"), strict=True):
        ir.save(model, folder / f"{name}.onnx", external_data=f"{name}.data")
        clock.mark(f"ir.save {name}")
    return clock.report()


def child_floor_ort(fused: str) -> dict:
    """One onnxruntime session on the fused file, prepacking off, one run on 64 rows."""
    import numpy as np
    import onnxruntime as ort

    clock = _Clock()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(fused, options, providers=["CPUExecutionProvider"])
    clock.mark("InferenceSession")
    width = session.get_inputs()[0].shape[1]
    rows = np.random.default_rng(0).normal(size=(RUN_ROWS, width)).astype(np.float32)
    outputs = session.run(None, {session.get_inputs()[0].name: rows})
    clock.mark(f"run {RUN_ROWS} rows")
    first = np.asarray(outputs[0])
    return clock.report(output_shape=list(first.shape), finite=bool(np.isfinite(first).all()))


def child_merge(*argv: str) -> dict:
    """The `onnxfuse` console script (`onnxfuse.cli:main`) with these arguments."""
    import onnxfuse.pipeline  # noqa: F401 - the command imports it lazily; count it as an import
    from onnxfuse.cli import main

    clock = _Clock()
    sys.argv = ["onnxfuse", *argv]
    try:
        main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    return clock.report()


def child_stages(a: str, b: str, out: str) -> dict:
    """`pipeline.merge` itself, `--fusion mean` without --data, with `verify` replaced by a no-op.

    Each stage function the pipeline calls is wrapped to mark the clock when it returns,
    so the table shows load, normalize, bind, splice, fuse, optimize, stage and emit
    without this script restating the pipeline.
    """
    import onnxfuse.pipeline as pipeline
    from onnxfuse.spec import FuseSpec, ModelSpec

    clock = _Clock()

    def timed(name: str, function: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = function(*args, **kwargs)
            clock.mark(name)
            return result

        return wrapper

    for name in ("load_model", "normalize", "bind", "splice", "fuse", "optimize", "stage", "emit"):
        setattr(pipeline, name, timed(name.removesuffix("_model"), getattr(pipeline, name)))
    pipeline.verify = lambda *args, **kwargs: None
    models = tuple(ModelSpec(Path(p), tuple(f.split(","))) for p, f in zip((a, b), FEATURES, strict=True))
    pipeline.merge(FuseSpec(models=models, output=Path(out), fusion="mean"))
    return clock.report()


CHILDREN: dict[str, Callable[..., dict]] = {
    "generate": child_generate,
    "baseline": child_baseline,
    "floor-save": child_floor_save,
    "floor-ort": child_floor_ort,
    "merge": child_merge,
    "stages": child_stages,
}


# ---------------------------------------------------------------------------------------------
# Driver side: standard library only.
# ---------------------------------------------------------------------------------------------


def measurements(paths: Paths) -> list[Measurement]:
    a, b = (str(p) for p in paths.sources)
    features = [arg for f in FEATURES for arg in ("--features", f)]
    return [
        Measurement("baseline", "baseline: python + import onnxfuse.pipeline", "baseline", lambda i: []),
        Measurement("a", "(a) floor: ir.load x2 + ir.save x2", "floor-save", lambda i: [a, b, str(paths.copies(i))]),
        Measurement(
            "c",
            "(c) onnxfuse merge (whole CLI)",
            "merge",
            lambda i: ["merge", a, b, *features, "--fusion", "mean", "-o", str(paths.fused("c", i))],
        ),
        Measurement("d", "(d) compile stages (no verify)", "stages", lambda i: [a, b, str(paths.fused("d", i))]),
        Measurement("b", "(b) floor: ORT session + run 64 rows", "floor-ort", lambda i: [str(paths.fused("c", i))]),
    ]


def run_all(paths: Paths, repeat: int, *, keep: bool) -> tuple[dict[str, list[Sample]], list[dict]]:
    """One warm-up round, then every measurement `repeat` times, interleaved.

    Each child starts after `os.sync()` (no dirty pages left by the one before); each round's
    outputs are deleted after it (except the last one with --keep). The warm-up round is not
    counted: on a fresh VM the first writes into new page cache are several times slower.
    """
    checks = []

    def after(run: int, current: dict[str, Sample]) -> None:
        if run >= WARMUP:
            checks.append(check_outputs(paths, run, current["b"]))
        if run < WARMUP + repeat - 1 or not keep:
            _remove_outputs(paths, run)

    samples = interleaved(measurements(paths), repeat, lambda m, run: _measure(paths, m, run), after)
    return samples, checks


def _measure(paths: Paths, measurement: Measurement, run: int) -> Sample:
    if measurement.key in ("c", "d"):
        paths.fused(measurement.key, run).parent.mkdir(parents=True, exist_ok=True)
    os.sync()
    return run_child(
        __file__, measurement.mode, measurement.args(run), paths.result(measurement.key, run), cwd=paths.root
    )


def check_outputs(paths: Paths, run: int, ort: Sample) -> dict:
    """The whole merge and the compile stages must write the same bytes; the run must be finite."""
    merged, staged = paths.fused("c", run), paths.fused("d", run)
    data = sorted(merged.parent.glob(f"{merged.stem}.*.data"))  # above 2 GB: OUT-stem.<16 hex of sha256>.data
    same = _sha256(merged) == _sha256(staged)
    same = same and [(p.name, _sha256(p)) for p in data] == [
        (p.name, _sha256(p)) for p in sorted(staged.parent.glob(f"{staged.stem}.*.data"))
    ]
    return {
        "same_bytes": same,
        "fused_bytes": merged.stat().st_size + sum(p.stat().st_size for p in data),
        "weights_inline": not data,
        "output_shape": ort.report.get("output_shape"),
        "finite": ort.report.get("finite"),
    }


def _remove_outputs(paths: Paths, run: int) -> None:
    for folder in (paths.copies(run), paths.fused("c", run).parent, paths.fused("d", run).parent):
        for file in sorted(folder.glob("*")) if folder.is_dir() else []:
            file.unlink()
        if folder.is_dir():
            folder.rmdir()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def print_table(paths: Paths, samples: dict[str, list[Sample]]) -> None:
    baseline = median(samples["baseline"], lambda s: s.peak_mib)
    print(
        f"\n{'measurement':44} {'wall s':>8} {'work s':>8} {'peak RSS MiB':>13} {'- baseline':>11}  runs (wall s / MiB)"
    )
    for m in measurements(paths):
        rows = samples[m.key]
        wall = median(rows, lambda s: s.wall_s)
        work = median(rows, lambda s: s.report.get("work_s", float("nan")))
        peak = median(rows, lambda s: s.peak_mib)
        runs = " ".join(f"{s.wall_s:.2f}/{s.peak_mib:.0f}" for s in rows)
        print(f"{m.title:44} {wall:8.2f} {work:8.2f} {peak:13.1f} {peak - baseline:11.1f}  {runs}")


def print_stages(samples: dict[str, list[Sample]]) -> None:
    """Per-stage seconds and memory of the median-wall run of (a), (b) and (d)."""
    for key, title in (("d", "(d) compile stages"), ("a", "(a) floor load+save"), ("b", "(b) floor onnxruntime")):
        rows = sorted(samples[key], key=lambda s: s.wall_s)
        stages = rows[len(rows) // 2].report.get("stages", [])
        print(f"\n{title}, median run, after each stage (MiB):")
        print(f"  {'stage':20} {'s':>7} {'VmHWM':>8} {'VmRSS':>8} {'RssAnon':>8} {'RssFile':>8}")
        for row in stages:
            print(
                f"  {row['stage']:20} {row['s']:7.2f} {row.get('VmHWM', 0):8.1f} {row.get('VmRSS', 0):8.1f} "
                f"{row.get('RssAnon', 0):8.1f} {row.get('RssFile', 0):8.1f}"
            )


def print_targets(samples: dict[str, list[Sample]], fused_mib: float) -> None:
    def med(key: str, value: Callable[[Sample], float]) -> float:
        return median(samples[key], value)

    time_ratio = med("d", lambda s: s.wall_s) / med("a", lambda s: s.wall_s)
    work_ratio = med("d", lambda s: s.report["work_s"]) / med("a", lambda s: s.report["work_s"])
    stages_rss = med("d", lambda s: s.peak_mib)
    merge_ratio = med("c", lambda s: s.peak_mib) / fused_mib
    print("\ntargets:")
    for name, value, target, ok in (
        (
            "compile-stages wall / load+save floor wall",
            f"{time_ratio:.2f}x",
            f"<= {TARGET_TIME_RATIO}x",
            time_ratio <= TARGET_TIME_RATIO,
        ),
        (
            "compile-stages peak RSS",
            f"{stages_rss:.1f} MiB",
            f"< {TARGET_STAGES_RSS_MIB:.0f} MiB",
            stages_rss < TARGET_STAGES_RSS_MIB,
        ),
        (
            "whole-merge peak RSS / fused file size",
            f"{merge_ratio:.2f}x",
            f"< {TARGET_MERGE_RSS_RATIO}x",
            merge_ratio < TARGET_MERGE_RSS_RATIO,
        ),
    ):
        print(f"  {'PASS' if ok else 'MISS'}  {name:44} {value:>12}   target {target}")
    print(f"  info  compile-stages work / load+save floor work (imports excluded): {work_ratio:.2f}x")


def print_report(
    paths: Paths, generated: dict, samples: dict[str, list[Sample]], checks: list[dict], args: argparse.Namespace
) -> None:
    fused_mib = checks[0]["fused_bytes"] / MIB
    weights = [b / MIB for b in generated["weight_bytes"]]
    print("\n" + header(("onnxruntime", "onnx", "onnx-ir", "numpy", "onnxfuse")) + " at the end")
    print(f"driver peak RSS {driver_peak_mib():.1f} MiB")
    print(f"source weights: A {weights[0]:.1f} MiB, B {weights[1]:.1f} MiB (4 MatMuls, hidden {generated['hidden']})")
    where = "weights inline" if checks[0]["weights_inline"] else "graph + OUT.data"
    print(f"fused file: {fused_mib:.1f} MiB ({where}); repeats: {args.repeat}, medians shown")
    print(
        f"(c) and (d) wrote identical bytes: {all(c['same_bytes'] for c in checks)}; "
        f"(b) output {checks[0]['output_shape']} finite: {all(c['finite'] for c in checks)}"
    )
    print(f"children run in {paths.root} (all their paths absolute; sources in {paths.sources[0].parent})")
    merge = measurements(paths)[2]
    print(f"merge command (first measured run): onnxfuse {shlex.join(merge.args(WARMUP))}")
    print_table(paths, samples)
    print_stages(samples)
    print_targets(samples, fused_mib)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark `onnxfuse merge` (time, peak RSS) against the onnx-ir load+save and "
        "onnxruntime floors, on two generated models with external data.",
    )
    parser.add_argument("--mb", type=float, default=200.0, help="MiB of float32 weights per source model (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; medians are shown (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    args = parser.parse_args(argv)
    if args.mb <= 0 or args.repeat < 1:
        parser.error("--mb must be > 0 and --repeat >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def run(root: Path) -> int:
        paths = Paths(root)
        print(f"generating 2 x {args.mb:g} MiB sources in {root} ...", flush=True)
        generate = [str(paths.sources[0].parent), str(args.mb)]
        generated = run_child(__file__, "generate", generate, paths.result("generate", 0), cwd=paths.root)
        samples, checks = run_all(paths, args.repeat, keep=args.keep)
        print_report(paths, generated.report, samples, checks, args)
        return 0

    return drive("bench_merge.", args.keep, run)


if __name__ == "__main__":
    script(CHILDREN, main)
