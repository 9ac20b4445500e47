"""Throughput and peak memory of `onnxfuse.score.score` beside plain onnxruntime on the same spliced graph.

A generate step (its own subprocess) writes, into a temporary folder:

    X.npy        `--rows` x `--features` float32 (default 1,000,000 x 20, seeded normal)
    m1.onnx      skl2onnx LogisticRegression on columns f00-f07           (default ZipMap output)
    m2.onnx      skl2onnx DecisionTreeClassifier (depth 8) on f06-f13     (default ZipMap output)
    m3.onnx      skl2onnx RandomForestClassifier (10 trees, depth 6) on f12-f19 (default ZipMap output)
    spliced/score.onnx   the three spliced by onnxfuse's load -> normalize -> bind -> splice, saved by
                 `onnxfuse.score.save_with_outputs` with the outputs a merge scores (each source's
                 probabilities, as `roles.output_role` names them): the very graph `score` saves and runs

(the sources are trained on the first 20,000 rows with a seeded label). Then, each in its own
fresh subprocess, so every peak RSS is that process's own (`os.wait4` rusage, as bench_merge.py
reads it), every child importing the same modules and loading X.npy before the clock starts:

    baseline        imports + X.npy loaded: nothing else
    score           `onnxfuse.score.score(model, outputs, {"features": X}, batch_rows=--batch)` on the
                    spliced model (load/normalize/bind/splice run before the clock; score's own save
                    of the graph and its session are timed, as a merge pays them)
    raw one-shot    InferenceSession(spliced/score.onnx) + one `run` on all rows
    raw batched     the same session, a plain loop over batches of --batch rows, np.concatenate at the end
    raw prealloc    (info) the same loop writing into preallocated output arrays (no concatenation copy)

The raw sessions use onnxruntime's default SessionOptions (its default thread count); score
runs each batch on one onnxruntime thread, batches side by side on every core (so its scores do
not depend on the core count: see onnxfuse.score). After one uncounted warm-up round, every child runs `--repeat` times,
interleaved; the table shows medians. `work s` runs from just before `score` is called or the
raw session is created (data loaded, splice done) to the outputs being complete; `best s` is the
fastest run, `cpu s` the process CPU seconds of the work (all threads); rows/s = rows / work s.
Peak RSS minus X.npy's own size, and minus the baseline child's peak, are shown; `outputs` is
the bytes of the returned arrays, which every method must hold.

Targets (PASS/MISS printed; exit status 0 unless something fails):

    score rows/s >= 0.9 x raw (the faster of raw one-shot and raw batched)
    memory bounded by the batch: score's peak - baseline <= raw batched's + max(5 %, 8 MiB) (the
    same bounded loop; the slack covers the spliced onnx-ir model the score child also holds), and
    less than raw one-shot's (which grows with the rows)

Run it from anywhere:

    python benchmarks/bench_score.py                         # 1M x 20, batches of 65,536, 5 repeats
    python benchmarks/bench_score.py --rows 200000 --repeat 1 --keep
"""

from __future__ import annotations

import argparse
import shutil
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
    run_child,
    script,
)

MIB = 1 << 20
TRAIN_ROWS = 20_000
SOURCES = (
    ("m1", "logistic regression", 0, 8),  # name, family, first column, width
    ("m2", "decision tree depth 8", 6, 8),
    ("m3", "random forest 10 trees depth 6", 12, 8),
)
TARGET_THROUGHPUT = 0.9
TARGET_MEMORY_SLACK = 1.05
TARGET_MEMORY_SLACK_MIB = 8.0


# ---------------------------------------------------------------------------------------------
# Child side: each function below runs in its own subprocess (`bench_score.py _child MODE ...`).
# ---------------------------------------------------------------------------------------------


def _columns(first: int, width: int) -> tuple[str, ...]:
    return tuple(f"f{i:02d}" for i in range(first, first + width))


def _imports() -> None:
    """Every measured child imports the same modules, so the baselines agree."""
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401

    import onnxfuse.bind
    import onnxfuse.load
    import onnxfuse.normalize
    import onnxfuse.pipeline
    import onnxfuse.roles
    import onnxfuse.score
    import onnxfuse.splice  # noqa: F401


def _spliced(root: Path, features: int) -> tuple[Any, dict[str, Any], Any]:
    """load -> normalize -> bind -> splice the three sources; the outputs a merge scores: each source's
    signal (its probabilities, or its prediction), found by `output_role`, inside the spliced graph."""
    from onnxfuse.bind import bind
    from onnxfuse.load import load_model
    from onnxfuse.normalize import normalize
    from onnxfuse.roles import output_role
    from onnxfuse.spec import ModelSpec
    from onnxfuse.splice import splice

    specs = [ModelSpec(root / f"{name}.onnx", _columns(first, width)) for name, _, first, width in SOURCES]
    sources = tuple(load_model(spec, index) for index, spec in enumerate(specs, start=1))
    models, versions = normalize(sources)
    binding = bind(models, data_columns=[f"f{i:02d}" for i in range(features)])
    spliced = splice(models, binding, versions)
    roles = [output_role(model) for model in models]
    wanted = {
        f"{index}/signal": outputs[role.probabilities or role.prediction]
        for index, (outputs, role) in enumerate(zip(spliced.outputs, roles))
    }
    return spliced, wanted, binding


def _load_x(root: Path) -> Any:
    import numpy as np

    return np.load(root / "X.npy")


def _digest(arrays: Sequence) -> list[dict]:
    import hashlib

    import numpy as np

    return [
        {
            "shape": list(a.shape),
            "bytes": int(a.nbytes),
            "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16],
            "sum": float(a.astype(np.float64).sum()),
        }
        for a in arrays
    ]


def _rss_mib() -> float:
    return proc_status("VmRSS")["VmRSS"]


def child_generate(root: str, rows: str, features: str, seed: str) -> dict:
    """X.npy, the three source models and spliced/score.onnx."""
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    from onnxfuse.score import SCORE_FILE, save_with_outputs

    folder, count, width = Path(root), int(rows), int(features)
    rng = np.random.default_rng(int(seed))
    x = np.empty((count, width), dtype=np.float32)
    for start in range(0, count, 1 << 18):  # in blocks: no float64 copy of the whole matrix
        stop = min(count, start + (1 << 18))
        x[start:stop] = rng.standard_normal((stop - start, width), dtype=np.float32)
    np.save(folder / "X.npy", x)
    train = x[:TRAIN_ROWS].astype(np.float64)
    weights = rng.normal(size=width)
    logit = train @ weights / np.sqrt(width) * 2 + 1.5 * train[:, 0] * train[:, width - 1]
    y = (rng.random(len(train)) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    described = []
    for name, family, first, size in SOURCES:
        cols = train[:, first : first + size].astype(np.float32)
        if family.startswith("logistic"):
            estimator = LogisticRegression(max_iter=1000)
        elif family.startswith("decision"):
            estimator = DecisionTreeClassifier(max_depth=8, random_state=int(seed))
        else:
            estimator = RandomForestClassifier(n_estimators=10, max_depth=6, random_state=int(seed))
        estimator.fit(cols, y)
        proto = to_onnx(estimator, cols[:1], target_opset=18)
        (folder / f"{name}.onnx").write_bytes(proto.SerializeToString())
        described.append(f"{name}: {family} on {','.join(_columns(first, size))}")
    spliced, wanted, binding = _spliced(folder, width)
    target = folder / "spliced" / SCORE_FILE
    target.parent.mkdir()
    save_with_outputs(spliced.model, list(wanted.values()), target)
    return {
        "x_bytes": int(x.nbytes),
        "x_file_bytes": (folder / "X.npy").stat().st_size,
        "sources": described,
        "outputs": {key: value.name for key, value in wanted.items()},
        "features": list(binding.features),
        "nodes": len(list(spliced.model.graph)),
    }


def child_baseline(root: str) -> dict:
    _imports()
    start = time.perf_counter()
    x = _load_x(Path(root))
    return {"load_s": time.perf_counter() - start, "rss_after_load_mib": _rss_mib(), "rows": len(x)}


def child_score(root: str, features: str, batch: str, work_dir: str) -> dict:
    """onnxfuse.score.score on the spliced sources, as a merge calls it to fit its head."""
    _imports()
    from onnxfuse.score import SCORE_FILE, score

    folder = Path(root)
    x = _load_x(folder)
    spliced, wanted, _ = _spliced(folder, int(features))
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rss_before = _rss_mib()
    cpu = time.process_time()
    start = time.perf_counter()
    result = score(spliced.model, wanted, {"features": x}, folder=work, batch_rows=int(batch))
    work_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu
    same = [(work / name).read_bytes() == (folder / "spliced" / name).read_bytes() for name in (SCORE_FILE,)]
    data = work / Path(SCORE_FILE).with_suffix(".data").name
    if data.exists():
        same.append(data.read_bytes() == (folder / "spliced" / data.name).read_bytes())
    return {
        "work_s": work_s,
        "cpu_s": cpu_s,
        "rss_before_mib": rss_before,
        "outputs": _digest([result[k] for k in wanted]),
        "same_graph_as_raw": all(same),
    }


def _session(root: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(root / "spliced" / "score.onnx"), options, providers=["CPUExecutionProvider"])


def child_raw(root: str, mode: str, batch: str) -> dict:
    """Plain onnxruntime on spliced/score.onnx: one shot, a batched loop, or a preallocated loop."""
    _imports()
    import numpy as np

    folder = Path(root)
    x = _load_x(folder)
    rss_before = _rss_mib()
    cpu = time.process_time()
    start = time.perf_counter()
    session = _session(folder)
    names = [o.name for o in session.get_outputs()]
    session_s = time.perf_counter() - start
    rows, step = len(x), int(batch)
    if mode == "oneshot":
        outputs = session.run(names, {"features": x})
    elif mode == "batched":
        parts: list[list] = [[] for _ in names]
        for begin in range(0, rows, step):
            for part, value in zip(parts, session.run(names, {"features": x[begin : begin + step]})):
                part.append(value)
        outputs = [np.concatenate(part) for part in parts]
    else:  # prealloc
        outputs = []
        for begin in range(0, rows, step):
            values = session.run(names, {"features": x[begin : begin + step]})
            if not outputs:
                outputs = [np.empty((rows, *v.shape[1:]), dtype=v.dtype) for v in values]
            for out, value in zip(outputs, values):
                out[begin : begin + len(value)] = value
    work_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu
    return {
        "work_s": work_s,
        "cpu_s": cpu_s,
        "session_s": session_s,
        "rss_before_mib": rss_before,
        "outputs": _digest(outputs),
    }


CHILDREN: dict[str, Callable[..., dict]] = {
    "generate": child_generate,
    "baseline": child_baseline,
    "score": child_score,
    "raw": child_raw,
}


# ---------------------------------------------------------------------------------------------
# Driver side: standard library only.
# ---------------------------------------------------------------------------------------------


def measurements(root: Path, args: argparse.Namespace) -> list[Measurement]:
    r, batch = str(root), str(args.batch)
    return [
        Measurement("baseline", "baseline: imports + X.npy loaded", "baseline", lambda i: [r]),
        Measurement(
            "score",
            f"onnxfuse score (batches of {args.batch:,})",
            "score",
            lambda i: [r, str(args.features), batch, str(root / "work" / f"score{i}")],
        ),
        Measurement("oneshot", "raw onnxruntime, one shot", "raw", lambda i: [r, "oneshot", batch]),
        Measurement("batched", f"raw onnxruntime, batches of {args.batch:,}", "raw", lambda i: [r, "batched", batch]),
        Measurement("prealloc", "raw, batched into preallocated (info)", "raw", lambda i: [r, "prealloc", batch]),
    ]


def run_all(root: Path, args: argparse.Namespace) -> dict[str, list[Sample]]:
    def measure(m: Measurement, run: int) -> Sample:
        return run_child(__file__, m.mode, m.args(run), root / "log" / f"{m.key}{run}.json", cwd=root)

    def after(run: int, current: dict[str, Sample]) -> None:
        shutil.rmtree(root / "work", ignore_errors=True)

    return interleaved(measurements(root, args), args.repeat, measure, after)


def print_report(root: Path, generated: dict, samples: dict[str, list[Sample]], args: argparse.Namespace) -> int:
    x_mib = generated["x_bytes"] / MIB
    baseline = median(samples["baseline"], lambda s: s.peak_mib)
    outputs = samples["score"][0].report["outputs"]
    out_mib = sum(o["bytes"] for o in outputs) / MIB
    print(
        "\n"
        + header(("onnxruntime", "onnx", "onnx-ir", "numpy", "scikit-learn", "skl2onnx", "onnxfuse"))
        + " at the end"
    )
    print(f"driver peak RSS {driver_peak_mib():.1f} MiB; children run in {root}")
    print(
        f"data: {args.rows:,} x {args.features} float32 = {x_mib:.1f} MiB (seed {args.seed}); "
        f"spliced graph: {generated['nodes']} nodes, features {generated['features'][0]}..{generated['features'][-1]}"
    )
    for line in generated["sources"]:
        print(f"  source {line}")
    print(
        f"outputs scored: {', '.join(generated['outputs'].values())} "
        f"({', '.join(str(o['shape']) for o in outputs)}; {out_mib:.1f} MiB together)"
    )
    print("onnxruntime: default SessionOptions everywhere (default intra-op threads), CPUExecutionProvider")
    print(f"repeats: {args.repeat} (after {WARMUP} warm-up round), medians shown")

    digests = {key: [o["sha256"] for o in samples[key][0].report["outputs"]] for key in samples if key != "baseline"}
    equal = len({tuple(d) for d in digests.values()}) == 1
    sums = {key: [round(o["sum"], 3) for o in samples[key][0].report["outputs"]] for key in digests}
    print(
        f"outputs bitwise equal across score / one-shot / batched / prealloc: {equal}" + ("" if equal else f" {sums}")
    )
    print(f"score saved the same graph bytes as spliced/score.onnx: {samples['score'][0].report['same_graph_as_raw']}")

    print(
        f"\n{'measurement':42} {'work s':>7} {'best s':>7} {'cpu s':>6} {'rows/s':>12} {'x raw':>6} {'peak MiB':>9} "
        f"{'- X.npy':>8} "
        f"{'- baseline':>11} {'- outputs':>10} {'- before':>9}  runs (work s / peak MiB)"
    )
    throughput: dict[str, float] = {}
    best: dict[str, float] = {}
    extra: dict[str, float] = {}
    for m in measurements(root, args):
        rows = samples[m.key]
        peak = median(rows, lambda s: s.peak_mib)
        runs = " ".join(
            f"{s.report['work_s']:.2f}/{s.peak_mib:.0f}" if "work_s" in s.report else f"-/{s.peak_mib:.0f}"
            for s in rows
        )
        if m.key == "baseline":
            blank = f"{'':>7} {'':>7} {'':>6} {'':>12} {'':>6}"
            print(f"{m.title:42} {blank} {peak:9.1f} {peak - x_mib:8.1f} {'':>11} {'':>10} {'':>9}  {runs}")
            continue
        work = median(rows, lambda s: s.report["work_s"])
        best[m.key] = min(s.report["work_s"] for s in rows)
        cpu = median(rows, lambda s: s.report["cpu_s"])
        throughput[m.key] = args.rows / work
        extra[m.key] = peak - baseline
        raw_best = max(args.rows / median(samples[k], lambda s: s.report["work_s"]) for k in ("oneshot", "batched"))
        print(
            f"{m.title:42} {work:7.3f} {best[m.key]:7.3f} {cpu:6.2f} {throughput[m.key]:12,.0f} "
            f"{throughput[m.key] / raw_best:6.2f} {peak:9.1f} {peak - x_mib:8.1f} {extra[m.key]:11.1f} "
            f"{extra[m.key] - out_mib:10.1f} {median(rows, lambda s: s.peak_mib - s.report['rss_before_mib']):9.1f}  "
            f"{runs}"
        )
    session_s = median(samples["batched"], lambda s: s.report["session_s"])
    print(
        f"(x raw: rows/s over the faster of raw one-shot / raw batched; raw work includes creating the session, "
        f"median {session_s * 1e3:.0f} ms;\n best s: fastest run; cpu s: process CPU seconds of the work, all threads; "
        f"- outputs: minus the {out_mib:.1f} MiB of returned arrays;\n - before: peak minus the child's own RSS "
        "just before the work, after its imports, data and (score) splice)"
    )

    raw_best_key = max(("oneshot", "batched"), key=lambda k: throughput[k])
    ratio = throughput["score"] / throughput[raw_best_key]
    allowed = max(extra["batched"] * TARGET_MEMORY_SLACK, extra["batched"] + TARGET_MEMORY_SLACK_MIB)
    bounded = extra["score"] <= allowed and extra["score"] < extra["oneshot"]
    print("\ntargets:")
    for ok, name, value in (
        (
            ratio >= TARGET_THROUGHPUT,
            f"score rows/s vs raw {raw_best_key} (the faster raw)",
            f"{ratio:.2f}x (target >= {TARGET_THROUGHPUT}x); vs one-shot "
            f"{throughput['score'] / throughput['oneshot']:.2f}x, vs batched "
            f"{throughput['score'] / throughput['batched']:.2f}x; fastest runs: "
            f"{min(best['oneshot'], best['batched']) / best['score']:.2f}x",
        ),
        (
            bounded,
            "memory bounded by the batch (peak - baseline)",
            f"score +{extra['score']:.1f} MiB, raw batched +{extra['batched']:.1f} MiB, raw one-shot "
            f"+{extra['oneshot']:.1f} MiB ({extra['oneshot'] / max(extra['score'], 1e-9):.1f}x score's)",
        ),
    ):
        print(f"  {'PASS' if ok else 'MISS'}  {name:48} {value}")
    print(
        f"  info  preallocated batched loop: +{extra['prealloc']:.1f} MiB, "
        f"{throughput['prealloc'] / throughput['batched']:.2f}x the rows/s of the concatenating loop"
    )
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark onnxfuse.score.score (rows/s, peak RSS) against plain onnxruntime, one shot and "
        "batched, on three spliced scikit-learn sources over generated float32 rows.",
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of data (default 1,000,000)")
    parser.add_argument("--features", type=int, default=20, help="float32 columns, at least 20 (default 20)")
    parser.add_argument("--batch", type=int, default=65_536, help="rows per batch for score and raw (default 65,536)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each measurement; medians shown (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the sources (default 0)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    args = parser.parse_args(argv)
    if args.rows < TRAIN_ROWS or args.features < 20 or args.batch < 1 or args.repeat < 1:
        parser.error(f"--rows must be >= {TRAIN_ROWS}, --features >= 20, --batch and --repeat >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def run(root: Path) -> int:
        print(f"generating {args.rows:,} x {args.features} rows and 3 sources in {root} ...", flush=True)
        generate = [str(root), str(args.rows), str(args.features), str(args.seed)]
        generated = run_child(__file__, "generate", generate, root / "log" / "generate.json", cwd=root)
        return print_report(root, generated.report, run_all(root, args), args)

    return drive("bench_score.", args.keep, run)


if __name__ == "__main__":
    script(CHILDREN, main)
