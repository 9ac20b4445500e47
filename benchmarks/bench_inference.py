"""Inference latency of a fused file beside what users would run instead, measured side by side in one run.

The cases (benchmarks/cases/): (i) the models/ example, (ii) three sources on generated data;
each merged with and without optimization. For batch sizes 1, 64 and 4096 (rows of the fusion
data), every method is timed call by call (benchmarks/harness.py):

    fused           one InferenceSession of the fused file (optimized), `run(None, {"features": x})`
    (a) separate    each source file in its own InferenceSession (its columns sliced out of x), the
                    fitted head in numpy (`harness.numpy_head`, scikit-learn's predict_proba). In case (i)
                    the sources are the same estimators re-exported with ZipMap off (the fair comparison);
                    `(a) zipmap` runs the given ZipMap files and turns their list-of-dicts output into arrays
    (a) numpy head  as (a), the head as plain numpy (`sigmoid(m @ coef.T + b)`): info only
    (b) sklearn     StackingClassifier(cv="prefit") over the ORIGINAL fitted estimators, final
                    LogisticRegression(max_iter=2000) fitted on the fusion rows, `predict_proba(x)`
    (c) no-optimize one InferenceSession of the `--no-optimize` file
    floor           (info) the same call on a 1-node Identity graph: the cost of one `session.run` from
                    Python, which bounds what any ONNX file can reach vs (b)

Every onnxruntime session has `intra_op_num_threads = --threads` (default 1), sequential execution;
numpy / scikit-learn / LightGBM are held to the same number of threads. Each method gets `--warmup`
uncounted calls, then up to `--calls` timed calls (fewer past `--max-seconds`), split over `--rounds`
rounds that interleave the methods; the tables show the median ms per call and its interquartile range.

Also, on the fused three-source file: `execution_mode = ORT_PARALLEL` (inter_op 2) vs sequential,
beside the sources timed alone, with CPU over wall time (~2 when two cores work at once).

Targets (PASS/MISS printed; the exit status is 0 unless something fails): at batch 1 the fused file
>= 2x faster than (a) and >= 300x faster than (b); at every batch not slower than (c) (within noise:
< 3 % slower and the interquartile ranges overlap).

    python benchmarks/bench_inference.py                     # 1 thread, the defaults
    python benchmarks/bench_inference.py --threads 2 --calls 200 --max-seconds 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from _children import machine, temporary_folder
from cases import Case, separate_sessions, stacking_classifier
from cases.example import example_case
from cases.three_sources import three_source_case
from harness import (
    Settings,
    Timing,
    at_least,
    batch_rows,
    fmt_ms,
    identity_model,
    limited_threads,
    measure,
    not_slower,
    numpy_head,
    output_of,
    print_timings,
    session,
)

BATCHES = (1, 64, 4096)
TARGET_VS_SEPARATE = 2.0
TARGET_VS_SKLEARN = 300.0
PACKAGES = ("onnxruntime", "onnx", "onnx-ir", "scikit-learn", "skl2onnx", "lightgbm", "onnxmltools", "numpy")
LABELS = {
    "fused": "fused (optimized)",
    "a": "(a) separate sessions + predict()",
    "a_zip": "(a) zipmap: given files + predict()",
    "a_np": "(a) separate + numpy head (info)",
    "b": "(b) sklearn StackingClassifier",
    "c": "(c) --no-optimize",
    "floor": "floor: 1-node Identity session (info)",
}
Verdict = tuple[str, str, str]  # PASS/MISS, what, value


def methods(case: Case, threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Every method of the table, as `x -> probabilities` (the floor: `x -> x`)."""
    features = case.result.features

    def separate(sources: Sequence, *, plain: bool = False) -> Callable[[np.ndarray], np.ndarray]:
        runners, roles = separate_sessions(sources, features, threads)
        head = numpy_head(case.result, roles, plain=plain)
        return lambda x: head([r.probabilities(x) for r in runners], x)

    stack = stacking_classifier(case)
    found = {
        "fused": output_of(session(case.fused, threads), "probabilities"),
        "a": separate(case.plain_sources),
        "a_np": separate(case.plain_sources, plain=True),
        "b": stack.predict_proba,
        "c": output_of(session(case.unoptimized, threads), "probabilities"),
    }
    if any(s.path != p.path for s, p in zip(case.sources, case.plain_sources)):
        found["a_zip"] = separate(case.sources)
    floor = identity_model(case.fused.parent / "identity.onnx", len(features))
    found["floor"] = output_of(session(floor, threads), "out")
    return found


def run_case(case: Case, settings: Settings) -> list[Verdict]:
    """Check that every method computes the fused file's probabilities, time them, print the tables."""
    found = methods(case, settings.threads)
    describe(case)
    x_big = batch_rows(case.x, max(BATCHES))
    reference = found["fused"](x_big)
    agree = [
        f"{key} {np.max(np.abs(np.asarray(f(x_big), np.float64) - reference)):.1e}"
        for key, f in found.items()
        if key not in ("fused", "floor")
    ]
    print(f"   max |P - P_fused| on {max(BATCHES)} rows: " + ", ".join(agree))
    timings: dict[int, dict[str, Timing]] = {}
    for batch in BATCHES:
        x = batch_rows(case.x, batch)
        timings[batch] = measure({key: (lambda f=f, x=x: f(x)) for key, f in found.items()}, settings)
    print_timings(f"case {case.key}, {settings.threads} intra-op thread(s)", timings, LABELS)
    print_ratios(case.key, timings)
    one = timings[1]
    verdicts = [
        (*at_least(one["a"].median / one["fused"].median, TARGET_VS_SEPARATE), "vs (a) separate + predict()"),
        (*at_least(one["b"].median / one["fused"].median, TARGET_VS_SKLEARN, 0), "vs (b) StackingClassifier"),
    ]
    verdicts = [(ok, f"case {case.key} batch 1: fused {what}", value) for ok, value, what in verdicts]
    for batch, row in timings.items():
        verdict, text = not_slower(row["fused"], row["c"])
        what = f"case {case.key} batch {batch}: optimized vs (c) --no-optimize"
        verdicts.append((verdict, what, f"{text} (target: not slower)"))
    return verdicts


def describe(case: Case) -> None:
    import onnx

    def nodes(path: Path) -> int:
        return len(onnx.load(str(path), load_external_data=False).graph.node)

    result = case.result
    print(f"\n== case {case.title}")
    for note in case.notes:
        print(f"   {note}")
    print(
        f"   features {','.join(result.features)}; classes {list(result.classes)}; fused file "
        f"{case.fused.stat().st_size:,} B, {nodes(case.fused)} nodes; --no-optimize "
        f"{case.unoptimized.stat().st_size:,} B, {nodes(case.unoptimized)} nodes"
    )
    for source in case.sources:
        print(f"   source {source.name}: {source.path.name}")


def print_ratios(key: str, timings: dict[int, dict[str, Timing]]) -> None:
    print(f"\n  ratios (time of the other / time of fused), case {key}:")
    print(
        f"  {'batch':>5} {'vs (a)':>8} {'vs (a) np':>10} {'vs (a) zip':>11} {'vs (b)':>9} {'(c)/opt':>8}"
        f" {'fused - floor ms':>17} {'(b) / floor':>12}"
    )
    for batch, row in timings.items():
        f = row["fused"].median
        zip_ratio = f"{row['a_zip'].median / f:11.2f}" if "a_zip" in row else f"{'-':>11}"
        print(
            f"  {batch:>5} {row['a'].median / f:8.2f} {row['a_np'].median / f:10.2f} {zip_ratio} "
            f"{row['b'].median / f:9.1f} {row['c'].median / f:8.3f} {fmt_ms(f - row['floor'].median):>17} "
            f"{row['b'].median / row['floor'].median:12.1f}"
        )
    print("  (floor: the same call on a 1-node Identity graph; (b) / floor bounds what any ONNX file reaches vs (b))")


def run_parallel(case: Case, settings: Settings) -> None:
    """ORT_PARALLEL (inter_op 2) vs sequential on the fused file, beside each source alone."""
    sequential = output_of(session(case.fused, settings.threads), "probabilities")
    parallel = output_of(session(case.fused, settings.threads, parallel=True), "probabilities")
    runners, _ = separate_sessions(case.plain_sources, case.result.features, settings.threads)
    names = [s.name.split()[1] for s in case.plain_sources]
    print(
        f"\nORT_PARALLEL (inter_op_num_threads 2, intra_op {settings.threads}) vs ORT_SEQUENTIAL on the fused file "
        f"of case {case.key}; sources timed alone in their own sessions (columns pre-sliced), median ms; {machine()}"
    )
    print(
        f"  {'batch':>5} {'sequential':>11} {'parallel':>9} {'par p90':>8} {'par/seq':>8} {'cpu/wall s|p':>12}  "
        + " ".join(f"{n:>8}" for n in names)
        + f" {'sum src':>8} {'rest':>7} {'ideal 2w':>9}"
    )
    gains = []
    for batch in BATCHES:
        x = batch_rows(case.x, batch)
        timed: dict[str, Callable[[], object]] = {"seq": lambda x=x: sequential(x), "par": lambda x=x: parallel(x)}
        for runner, name in zip(runners, names):
            feed = {runner.input_name: np.ascontiguousarray(x[:, runner.columns])}
            timed[name] = lambda r=runner, feed=feed: r.session.run([r.output_name], feed)
        t = measure(timed, settings)
        seq, par, alone = t["seq"].median, t["par"].median, [t[n].median for n in names]
        rest = max(seq - sum(alone), 0.0)
        ideal = max(max(alone), sum(alone) / 2) + rest  # two workers, each branch on one of them
        p90 = statistics.quantiles(t["par"].samples, n=10)[8]
        cores = f"{t['seq'].cpu_per_wall:.2f}|{t['par'].cpu_per_wall:.2f}"
        gains.append((batch, par / seq, ideal / seq, t["par"].cpu_per_wall))
        print(
            f"  {batch:>5} {fmt_ms(seq):>11} {fmt_ms(par):>9} {fmt_ms(p90):>8} {par / seq:8.2f} {cores:>12}  "
            + " ".join(f"{fmt_ms(a):>8}" for a in alone)
            + f" {fmt_ms(sum(alone)):>8} {fmt_ms(rest):>7} {fmt_ms(ideal):>9}"
        )
    print(
        "  (rest = sequential - sum of sources: gathers, head, per-run overhead; ideal 2w = max(max source, "
        "sum/2) + rest;\n   cpu/wall = process CPU time over wall time during the calls, sequential|parallel: "
        "~2 means two cores worked at once)"
    )
    print(f"  conclusion: {parallel_conclusion(gains)}")


def parallel_conclusion(gains: Sequence[tuple[int, float, float, float]]) -> str:
    """From (batch, parallel / sequential, ideal / sequential, parallel CPU per wall) per batch."""
    helped = [f"batch {b} ({r:.2f}x of sequential, ideal {i:.2f}x)" for b, r, i, _ in gains if r < 0.9]
    hurt = [f"batch {b} ({r:.2f}x)" for b, r, _, _ in gains if r > 1.1]
    if helped:
        conclusion = "the branches run at once where there is work to overlap: " + ", ".join(helped)
    else:
        batch, _, ideal, cores = gains[-1]
        conclusion = (
            f"no batch size gains 10 % or more from ORT_PARALLEL; at batch {batch} the parallel session used "
            f"{cores:.2f} cores on average (ideal {ideal:.2f}x of sequential), so the branches did not overlap here"
        )
    if hurt:
        conclusion += "; slower at " + ", ".join(hurt) + " (stalls waiting for the inter-op thread: see par p90)"
    return conclusion


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Inference latency of fused files vs separate sessions + numpy head, scikit-learn's "
        "StackingClassifier and the unoptimized splice, side by side, at batch 1, 64 and 4096.",
    )
    Settings.add_arguments(parser)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with the models")
    args = parser.parse_args(argv)
    settings = Settings.parsed(parser, args)
    started = time.perf_counter()
    print(settings.describe(PACKAGES, BATCHES))
    with limited_threads(settings.threads), temporary_folder("bench_inference.", keep=args.keep) as root:
        (root / "i").mkdir()
        (root / "ii").mkdir()
        cases = [example_case(root / "i"), three_source_case(root / "ii", settings.threads)]
        verdicts = [verdict for case in cases for verdict in run_case(case, settings)]
        run_parallel(cases[1], settings)
        print("\ntargets:")
        for verdict, name, value in verdicts:
            print(f"  {verdict}  {name:58} {value}")
        print(f"\ntotal {time.perf_counter() - started:.0f} s; machine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
