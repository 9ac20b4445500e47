"""Inference latency of a fused file beside what users would run instead, measured side by side in one run.

Two cases, each merged twice with `onnxfuse.pipeline.merge` (optimized, the default, and
`--no-optimize`) into a temporary folder:

    (i)  the models/ example: models/a.onnx (random forest, ZipMap) on a,b and models/b.onnx
         (scaler + logistic regression, ZipMap) on c,d, `--data models/train.csv --target y`,
         default stack linear head. The original scikit-learn estimators are refitted exactly
         as models/make_examples.py fits them; the run checks that skl2onnx turns them into
         byte-identical copies of models/a.onnx and models/b.onnx (so they are the originals).
    (ii) three sources on generated data (seeded): skl2onnx RandomForest on a,b, onnxmltools
         LightGBM on c,d, skl2onnx LogisticRegression on b,e, each trained on rows of its own
         and converted with ZipMap off; fused with the stack linear head on 4,000 joint rows.

For batch sizes 1, 64 and 4096 (rows of the fusion data), every method is timed call by call:

    fused           one InferenceSession of the fused file (optimized), `run(None, {"features": x})`
    (a) separate    each source file in its own InferenceSession (its columns sliced out of x),
                    the head in numpy: `onnxfuse.train.predict(FuseResult.head, Signals, None)` with
                    Signals built as `pipeline._trained_head` / `_signal_array` build them
                    (probabilities as float32 @ class_placement, meta_columns per source). In case
                    (i) the sources are the same estimators re-exported with ZipMap off (the fair
                    comparison); `(a) zipmap` runs the given ZipMap files and turns their
                    list-of-dicts output into arrays, to show what ZipMap costs.
    (a) numpy head  as (a) but the head as plain numpy (`sigmoid(m @ coef.T + b)`) instead of
                    scikit-learn's LogisticRegression.predict_proba inside `train.predict`: info only
    (b) sklearn     StackingClassifier(cv="prefit") over the ORIGINAL fitted estimators (each behind
                    a FunctionTransformer picking its columns), final estimator
                    LogisticRegression(max_iter=2000) fitted on the fusion rows, `predict_proba(x)`
    (c) no-optimize one InferenceSession of the `--no-optimize` file
    floor           (info) the same call on a 1-node Identity graph of the same input: the cost of one
                    `session.run` from Python, which bounds what any ONNX file can reach vs (b)

Every onnxruntime session has `intra_op_num_threads = --threads` (default 1, printed), sequential
execution; numpy / scikit-learn / LightGBM are held to the same number of threads (threadpoolctl
and LightGBM's n_jobs). Each method gets `--warmup` uncounted calls, then up to `--calls` timed
calls (fewer if they would take more than `--max-seconds`), split over `--rounds` rounds that
interleave the methods; the tables show the median ms per call and its interquartile range.

Also, on the fused three-source file: `execution_mode = ORT_PARALLEL` with inter_op threads 2 vs
the sequential session at each batch size, beside the source models timed alone, to see whether
the independent source branches run at once (ideal ~ max(A, B, C) + head rather than A + B + C + head),
with the process CPU time over wall time during those calls (~2 when two cores work at once).

Targets (PASS/MISS printed; the exit status is 0 unless something fails):

    batch 1: fused >= 2x faster than (a) separate, and >= 300x faster than (b) sklearn
    every batch: optimized not slower than (c) no-optimize ("within noise" when the difference
    is < 3 % and the interquartile ranges overlap)

Run it from anywhere (paths are relative to this file's repository):

    python benchmarks/bench_inference.py                     # 1 thread, the defaults
    python benchmarks/bench_inference.py --threads 2 --calls 200 --max-seconds 1
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.util
import math
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort
    from sklearn.ensemble import StackingClassifier

    from onnxfuse.pipeline import FuseResult
    from onnxfuse.train import TrainedHead

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
BATCHES = (1, 64, 4096)
FUSION_ROWS = 4000
SOURCE_ROWS = 20_000
SEED = 0
TARGET_VS_SEPARATE = 2.0
TARGET_VS_SKLEARN = 300.0
NOISE = 0.03


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Timing:
    """Per-call wall times of one method at one batch size, in ms, and the process CPU ms of each call."""

    samples: tuple[float, ...]
    cpu: tuple[float, ...] = ()

    @property
    def cpu_per_wall(self) -> float:
        """Process CPU time (all threads) over wall time: ~1 when one core works, ~2 when two do."""
        return sum(self.cpu) / sum(self.samples) if self.cpu else float("nan")

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> tuple[float, float]:
        q = statistics.quantiles(self.samples, n=4) if len(self.samples) > 1 else [self.samples[0]] * 3
        return q[0], q[2]


def measure(
    methods: dict[str, Callable[[], object]], *, calls: int, rounds: int, warmup: int, max_seconds: float
) -> dict[str, Timing]:
    """Warm each method up, then time it call by call, the methods interleaved round by round
    (in an order rotated each round)."""
    planned = {}
    for name, call in methods.items():
        start = time.perf_counter()
        for _ in range(warmup):
            call()
        per_call = (time.perf_counter() - start) / max(warmup, 1)
        planned[name] = max(rounds, min(calls, int(max_seconds / max(per_call, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    gc.collect()
    gc.disable()
    try:
        names = list(methods)
        for round_ in range(rounds):
            shift = round_ % len(names)  # rotate the order so no method always follows the same one
            for name in names[shift:] + names[:shift]:
                call = methods[name]
                count = planned[name] // rounds + (1 if round_ < planned[name] % rounds else 0)
                for _ in range(count):
                    cpu_ns = time.process_time_ns()
                    start_ns = time.perf_counter_ns()
                    call()
                    samples[name].append((time.perf_counter_ns() - start_ns) / 1e6)
                    cpu[name].append((time.process_time_ns() - cpu_ns) / 1e6)
    finally:
        gc.enable()
    return {name: Timing(tuple(samples[name]), tuple(cpu[name])) for name in methods}


# ---------------------------------------------------------------------------------------------
# Building the cases
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    """One source model as users would run it: its file, its columns of `features`, its estimator."""

    name: str
    path: Path
    features: tuple[str, ...]
    estimator: object


@dataclasses.dataclass(frozen=True)
class Case:
    """Everything one case needs: sources, fused files, the fitted head, the fusion rows."""

    key: str
    title: str
    sources: tuple[Source, ...]  # the files the fused model was merged from
    plain_sources: tuple[Source, ...]  # the same estimators with ZipMap off, for (a)
    fused: Path
    unoptimized: Path
    result: FuseResult  # of the optimized merge
    x: np.ndarray  # fusion rows, float32, columns in result.features order
    y: np.ndarray
    notes: tuple[str, ...] = ()


class Columns:
    """A picklable column picker for FunctionTransformer: `x[:, columns]`."""

    def __init__(self, columns: Sequence[int]) -> None:
        self.columns = list(columns)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x[:, self.columns]


def _load_make_examples() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_examples", MODELS / "make_examples.py")
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {MODELS / 'make_examples.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_csv(path: Path, columns: Sequence[str], target: str) -> tuple[np.ndarray, np.ndarray]:
    """The named float columns (float32, as onnxfuse feeds them) and the integer target of a CSV."""
    header = path.read_text().split("\n", 1)[0].strip().split(",")
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    x = np.stack([table[:, header.index(c)] for c in columns], axis=1).astype(np.float32)
    return x, table[:, header.index(target)].astype(np.int64)


def write_csv(path: Path, columns: Sequence[str], x: np.ndarray, y: np.ndarray) -> None:
    lines = [",".join([*columns, "y"])]
    lines += [",".join(f"{v:.9g}" for v in row) + f",{label}" for row, label in zip(x.tolist(), y.tolist())]
    path.write_text("\n".join(lines) + "\n")


def merge_both(sources: Sequence[Source], data: Path, folder: Path) -> tuple[FuseResult, Path, Path, float, float]:
    """Merge with and without optimization; return the optimized result and both paths, and merge seconds."""
    from onnxfuse.pipeline import merge
    from onnxfuse.spec import FuseSpec, ModelSpec

    models = tuple(ModelSpec(s.path, s.features) for s in sources)
    fused, plain = folder / "fused.onnx", folder / "fused_no_optimize.onnx"
    start = time.perf_counter()
    result = merge(FuseSpec(models=models, output=fused, data=data, target="y"))
    merged_s = time.perf_counter() - start
    start = time.perf_counter()
    merge(FuseSpec(models=models, output=plain, data=data, target="y", optimize=False))
    plain_s = time.perf_counter() - start
    return result, fused, plain, merged_s, plain_s


def example_case(folder: Path) -> Case:
    """Case (i): models/a.onnx + models/b.onnx as shipped, the original estimators refitted."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    examples = _load_make_examples()
    x_all, y_all = examples.make_rows()
    forest = RandomForestClassifier(n_estimators=12, max_depth=6, random_state=examples.SEED).fit(x_all[:, :2], y_all)
    linear = make_pipeline(StandardScaler(), LogisticRegression()).fit(x_all[:, 2:], y_all)
    given = (MODELS / "a.onnx", MODELS / "b.onnx")
    exported = (
        to_onnx(forest, x_all[:1, :2], target_opset=18).SerializeToString(),
        to_onnx(linear, x_all[:1, 2:], target_opset=13).SerializeToString(),
    )
    identical = all(path.read_bytes() == data for path, data in zip(given, exported))
    plain_paths = (folder / "a_nozipmap.onnx", folder / "b_nozipmap.onnx")
    plain_paths[0].write_bytes(
        to_onnx(forest, x_all[:1, :2], target_opset=18, options={"zipmap": False}).SerializeToString()
    )
    plain_paths[1].write_bytes(
        to_onnx(linear, x_all[:1, 2:], target_opset=13, options={id(linear): {"zipmap": False}}).SerializeToString()
    )
    features = (("a", "b"), ("c", "d"))
    estimators = (forest, linear)
    sources = tuple(
        Source(f"m{i + 1} {p.stem}", p, f, e) for i, (p, f, e) in enumerate(zip(given, features, estimators))
    )
    plain = tuple(
        Source(f"m{i + 1} {p.stem}", p, f, e) for i, (p, f, e) in enumerate(zip(plain_paths, features, estimators))
    )
    data = MODELS / "train.csv"
    result, fused, unoptimized, merge_s, plain_s = merge_both(sources, data, folder)
    x, y = read_csv(data, result.features, "y")
    notes = (
        f"original estimators refitted as models/make_examples.py does; skl2onnx export byte-identical to "
        f"models/a.onnx and models/b.onnx: {identical}",
        f"merge {merge_s:.2f} s (optimized, includes first imports), {plain_s:.2f} s (--no-optimize)",
    )
    return Case(
        "i", "(i) models/ example: RF(a,b) + scaler+LR(c,d)", sources, plain, fused, unoptimized, result, x, y, notes
    )


def three_source_case(folder: Path, threads: int) -> Case:
    """Case (ii): RandomForest(a,b) + LightGBM(c,d) + LogisticRegression(b,e), ZipMap off, stack linear."""
    import lightgbm
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(SEED)

    def rows(count: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(count, 5)).astype(np.float32)
        a, b, c, d, e = x.T.astype(np.float64)
        logit = 1.0 * a - 0.8 * b + 0.9 * c + 0.8 * np.tanh(2 * d) - 0.6 * e + 1.2 * a * c
        y = (rng.random(count) < 1 / (1 + np.exp(-logit))).astype(np.int64)
        return x, y

    columns = {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}
    plan = (("rf", ("a", "b")), ("lgbm", ("c", "d")), ("lr", ("b", "e")))
    sources = []
    for index, (name, features) in enumerate(plan, start=1):
        x_src, y_src = rows(SOURCE_ROWS)
        picked = x_src[:, [columns[f] for f in features]]
        if name == "rf":
            estimator = RandomForestClassifier(n_estimators=50, max_depth=8, random_state=SEED).fit(picked, y_src)
            proto = to_onnx(estimator, picked[:1], target_opset=18, options={"zipmap": False})
        elif name == "lgbm":
            estimator = lightgbm.LGBMClassifier(
                n_estimators=100, num_leaves=15, random_state=SEED, verbose=-1, n_jobs=threads
            ).fit(picked, y_src)
            proto = onnxmltools.convert_lightgbm(
                estimator, initial_types=[("input", FloatTensorType([None, 2]))], zipmap=False
            )
        else:
            estimator = LogisticRegression(max_iter=1000).fit(picked, y_src)
            proto = to_onnx(estimator, picked[:1], target_opset=18, options={"zipmap": False})
        path = folder / f"{name}.onnx"
        path.write_bytes(proto.SerializeToString())
        sources.append(Source(f"m{index} {name}", path, features, estimator))
    x_fuse, y_fuse = rows(FUSION_ROWS)
    data = folder / "fusion.csv"
    write_csv(data, list(columns), x_fuse, y_fuse)
    result, fused, unoptimized, merge_s, plain_s = merge_both(sources, data, folder)
    x, y = read_csv(data, result.features, "y")
    notes = (
        f"sources trained on {SOURCE_ROWS:,} rows each (RF 50 trees depth 8, LightGBM 100 trees 15 leaves, LR), "
        f"fused on {FUSION_ROWS:,} rows; all exported with ZipMap off",
        f"merge {merge_s:.2f} s (optimized), {plain_s:.2f} s (--no-optimize)",
    )
    title = "(ii) three sources: RF(a,b) + LightGBM(c,d) + LR(b,e)"
    return Case("ii", title, tuple(sources), tuple(sources), fused, unoptimized, result, x, y, notes)


# ---------------------------------------------------------------------------------------------
# The methods
# ---------------------------------------------------------------------------------------------


def session(path: Path, threads: int, *, parallel: bool = False) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    if parallel:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = 2
    else:
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclasses.dataclass(frozen=True)
class SourceRunner:
    """One source in its own session, and how its output becomes its signal for the head."""

    session: ort.InferenceSession
    input_name: str
    output_name: str
    columns: list[int]
    classes: tuple
    zipmap: bool
    placement: np.ndarray

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: x[:, self.columns]})[0]
        if self.zipmap:  # a list of {class: probability} dicts
            out = np.array([[row[c] for c in self.classes] for row in out], dtype=np.float32)
        return out

    def signal(self, x: np.ndarray) -> np.ndarray:
        """As pipeline._signal_array: float32 probabilities placed among the target's classes."""
        return self.probabilities(x).astype(np.float32) @ self.placement


def source_runners(
    sources: Sequence[Source], result: FuseResult, threads: int
) -> tuple[list[SourceRunner], tuple[tuple[int, ...], ...]]:
    """Sessions for each source file; roles from onnxfuse's own load/normalize/output_role."""
    from onnxfuse.load import load_model
    from onnxfuse.normalize import normalize
    from onnxfuse.roles import class_placement, meta_columns, output_role
    from onnxfuse.spec import ModelSpec

    loaded = tuple(load_model(ModelSpec(s.path, s.features), i) for i, s in enumerate(sources, start=1))
    normalized, _ = normalize(loaded)
    roles = [output_role(m) for m in normalized]
    runners = []
    for source, role in zip(sources, roles):
        sess = session(source.path, threads)
        outputs = {o.name: o for o in sess.get_outputs()}
        # a cut ZipMap keeps its output's name: in the source file that name is a list of dicts
        name = role.probabilities or ""
        zipmap = outputs[name].type.startswith("seq")
        runners.append(
            SourceRunner(
                session=sess,
                input_name=sess.get_inputs()[0].name,
                output_name=name,
                columns=[result.features.index(f) for f in source.features],
                classes=tuple(role.classes or ()),
                zipmap=zipmap,
                placement=class_placement(role, result.classes),
            )
        )
    return runners, tuple(meta_columns(r, result.classes) for r in roles)


def separate_method(
    runners: Sequence[SourceRunner], meta: tuple[tuple[int, ...], ...], head: TrainedHead, *, numpy_head: bool
) -> Callable[[np.ndarray], np.ndarray]:
    """(a): the sources' sessions, then the fitted head (train.predict, or plain numpy)."""
    from onnxfuse.heads import Signals, meta_matrix
    from onnxfuse.train import predict

    estimator = head.estimator
    coef = np.asarray(estimator.coef_, dtype=np.float64).T
    intercept = np.asarray(estimator.intercept_, dtype=np.float64)

    def run(x: np.ndarray) -> np.ndarray:
        signals = Signals(tuple(r.signal(x) for r in runners), meta)
        if not numpy_head:
            return predict(head, signals, None)
        scores = meta_matrix(signals, None) @ coef + intercept
        if scores.shape[1] == 1:
            positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            return np.stack([1.0 - positive, positive], axis=1)
        scores -= scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return exp / exp.sum(axis=1, keepdims=True)

    return run


def stacking_classifier(case: Case) -> StackingClassifier:
    """(b): StackingClassifier(cv="prefit") over the original fitted estimators, final LR fitted on the rows."""
    from sklearn.ensemble import StackingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    features = case.result.features
    estimators = [
        (
            source.name.split()[0],
            make_pipeline(FunctionTransformer(Columns([features.index(f) for f in source.features])), source.estimator),
        )
        for source in case.sources
    ]
    stack = StackingClassifier(estimators, final_estimator=LogisticRegression(max_iter=2000), cv="prefit")
    return stack.fit(case.x, case.y)


def identity_model(path: Path, width: int) -> Path:
    """The floor of one `session.run` from Python: `features [N, F]` -> Identity -> output."""
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["out"])],
        "floor",
        [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", width])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    return path


def fused_method(sess: ort.InferenceSession) -> Callable[[np.ndarray], np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    index = names.index("probabilities")

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {"features": x})[index]

    return run


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def fmt_ms(value: float) -> str:
    return f"{value:.4g}"


def batch_rows(x: np.ndarray, batch: int) -> np.ndarray:
    reps = math.ceil(batch / len(x))
    return np.ascontiguousarray(np.tile(x, (reps, 1))[:batch])


def print_timings(title: str, timings: dict[int, dict[str, Timing]], labels: dict[str, str]) -> None:
    print(f"\n{title}: median ms per call [interquartile range], calls timed; rows/s; time / fused")
    print(f"  {'batch':>5}  {'method':38} {'median ms':>10} {'IQR ms':>21} {'calls':>6} {'rows/s':>12} {'x fused':>8}")
    for batch, row in timings.items():
        fused = row["fused"].median
        for key, label in labels.items():
            if key not in row:
                continue
            t = row[key]
            low, high = t.iqr
            print(
                f"  {batch:>5}  {label:38} {fmt_ms(t.median):>10} {f'{fmt_ms(low)}-{fmt_ms(high)}':>21} "
                f"{len(t.samples):>6} {batch / t.median * 1e3:12,.0f} {t.median / fused:8.2f}"
            )


def overlap(a: Timing, b: Timing) -> bool:
    (a_low, a_high), (b_low, b_high) = a.iqr, b.iqr
    return a_low <= b_high and b_low <= a_high


def optimized_verdict(opt: Timing, plain: Timing) -> tuple[str, str]:
    """PASS (faster or equal), PASS within noise (< 3 % slower, IQRs overlap), or MISS."""
    change = opt.median / plain.median - 1
    if change <= 0:
        return "PASS", f"{-change:.1%} faster"
    if change < NOISE and overlap(opt, plain):
        return "PASS", f"{change:.1%} slower, within noise"
    return "MISS", f"{change:.1%} slower{'' if overlap(opt, plain) else ', IQRs apart'}"


def _versions() -> str:
    found = []
    for name in ("onnxruntime", "onnx", "onnx-ir", "scikit-learn", "skl2onnx", "lightgbm", "onnxmltools", "numpy"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found) + f", python {sys.version.split()[0]}"


def graph_nodes(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


# ---------------------------------------------------------------------------------------------
# Running a case
# ---------------------------------------------------------------------------------------------


def run_case(case: Case, args: argparse.Namespace) -> tuple[dict[int, dict[str, Timing]], list[tuple[str, str, str]]]:
    result = case.result
    head = result.head
    fused = session(case.fused, args.threads)
    plain = session(case.unoptimized, args.threads)
    runners, meta = source_runners(case.plain_sources, result, args.threads)
    zipmap_runners = None
    if any(s.path != p.path for s, p in zip(case.sources, case.plain_sources)):
        zipmap_runners, _ = source_runners(case.sources, result, args.threads)
    stack = stacking_classifier(case)
    factories: dict[str, Callable[[np.ndarray], object]] = {
        "fused": fused_method(fused),
        "a": separate_method(runners, meta, head, numpy_head=False),
        "a_np": separate_method(runners, meta, head, numpy_head=True),
        "b": lambda x: stack.predict_proba(x),
        "c": fused_method(plain),
    }
    floor = session(identity_model(case.fused.parent / "identity.onnx", len(result.features)), args.threads)
    if zipmap_runners is not None:
        factories["a_zip"] = separate_method(zipmap_runners, meta, head, numpy_head=False)
    labels = {
        "fused": "fused (optimized)",
        "a": "(a) separate sessions + predict()",
        "a_zip": "(a) zipmap: given files + predict()",
        "a_np": "(a) separate + numpy head (info)",
        "b": "(b) sklearn StackingClassifier",
        "c": "(c) --no-optimize",
        "floor": "floor: 1-node Identity session (info)",
    }
    print(f"\n== case {case.title}")
    for note in case.notes:
        print(f"   {note}")
    print(
        f"   features {','.join(result.features)}; classes {list(result.classes)}; fused file "
        f"{case.fused.stat().st_size:,} B, {graph_nodes(case.fused)} nodes; --no-optimize "
        f"{case.unoptimized.stat().st_size:,} B, {graph_nodes(case.unoptimized)} nodes"
    )
    for runner, source in zip(zipmap_runners or runners, case.sources):
        print(f"   source {source.name}: {source.path.name}, output '{runner.output_name}'"
              f"{' (ZipMap: list of dicts)' if runner.zipmap else ''}")  # fmt: skip
    # agreement on the largest batch: every method computes the same probabilities
    x_big = batch_rows(case.x, max(BATCHES))
    reference = factories["fused"](x_big)
    agree = {
        key: float(np.max(np.abs(np.asarray(f(x_big), dtype=np.float64) - reference))) for key, f in factories.items()
    }
    print("   max |P - P_fused| on 4096 rows: " + ", ".join(f"{k} {v:.1e}" for k, v in agree.items() if k != "fused"))
    factories["floor"] = lambda x: floor.run(None, {"features": x})[0]
    timings: dict[int, dict[str, Timing]] = {}
    for batch in BATCHES:
        x = batch_rows(case.x, batch)
        methods = {key: (lambda f=f, x=x: f(x)) for key, f in factories.items()}
        timings[batch] = measure(
            methods, calls=args.calls, rounds=args.rounds, warmup=args.warmup, max_seconds=args.max_seconds
        )
    print_timings(f"case {case.key}, {args.threads} intra-op thread(s)", timings, labels)
    verdicts = []
    one = timings[1]
    vs_a = one["a"].median / one["fused"].median
    vs_b = one["b"].median / one["fused"].median
    verdicts.append(
        (
            "PASS" if vs_a >= TARGET_VS_SEPARATE else "MISS",
            f"case {case.key} batch 1: fused vs (a) separate + predict()",
            f"{vs_a:.2f}x faster (target >= {TARGET_VS_SEPARATE:g}x)",
        )
    )
    verdicts.append(
        (
            "PASS" if vs_b >= TARGET_VS_SKLEARN else "MISS",
            f"case {case.key} batch 1: fused vs (b) StackingClassifier",
            f"{vs_b:.0f}x faster (target >= {TARGET_VS_SKLEARN:g}x)",
        )
    )
    for batch, row in timings.items():
        verdict, text = optimized_verdict(row["fused"], row["c"])
        verdicts.append(
            (verdict, f"case {case.key} batch {batch}: optimized vs (c) --no-optimize", f"{text} (target: not slower)")
        )
    print(f"\n  ratios (time of the other / time of fused), case {case.key}:")
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
    return timings, verdicts


def run_parallel(case: Case, args: argparse.Namespace) -> None:
    """ORT_PARALLEL (inter_op 2) vs sequential on the fused file, beside each source alone."""
    sequential = fused_method(session(case.fused, args.threads))
    parallel = fused_method(session(case.fused, args.threads, parallel=True))
    runners, _ = source_runners(case.plain_sources, case.result, args.threads)
    print(
        f"\nORT_PARALLEL (inter_op_num_threads 2, intra_op {args.threads}) vs ORT_SEQUENTIAL on the fused file of "
        f"case {case.key}; sources timed alone in their own sessions (columns pre-sliced), median ms; {_load()}"
    )
    names = [s.name.split()[1] for s in case.plain_sources]
    print(
        f"  {'batch':>5} {'sequential':>11} {'parallel':>9} {'par p90':>8} {'par/seq':>8} {'cpu/wall s|p':>12}  "
        + " ".join(f"{n:>8}" for n in names)
        + f" {'sum src':>8} {'rest':>7} {'ideal 2w':>9}"
    )
    gains = []
    for batch in BATCHES:
        x = batch_rows(case.x, batch)
        methods: dict[str, Callable[[], object]] = {
            "seq": lambda x=x: sequential(x),
            "par": lambda x=x: parallel(x),
        }
        for runner, name in zip(runners, names):
            feed = {runner.input_name: np.ascontiguousarray(x[:, runner.columns])}
            methods[name] = lambda r=runner, feed=feed: r.session.run([r.output_name], feed)
        t = measure(methods, calls=args.calls, rounds=args.rounds, warmup=args.warmup, max_seconds=args.max_seconds)
        seq, par = t["seq"].median, t["par"].median
        alone = [t[n].median for n in names]
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
    print(f"  conclusion: {conclusion}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Inference latency of fused files vs separate sessions + numpy head, scikit-learn's "
        "StackingClassifier and the unoptimized splice, side by side, at batch 1, 64 and 4096.",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="onnxruntime intra-op threads, and numpy/scikit-learn/LightGBM threads (default 1)",
    )
    parser.add_argument("--calls", type=int, default=400, help="timed calls per method and batch (default 400)")
    parser.add_argument(
        "--max-seconds", type=float, default=2.0, help="cap on timed seconds per method and batch (default 2)"
    )
    parser.add_argument("--warmup", type=int, default=20, help="uncounted calls per method and batch (default 20)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds that interleave the methods (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with the models")
    args = parser.parse_args(argv)
    if min(args.threads, args.calls, args.warmup, args.rounds) < 1 or args.max_seconds <= 0:
        parser.error("--threads, --calls, --warmup, --rounds must be >= 1 and --max-seconds > 0")
    args.calls = max(args.calls, args.rounds)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"versions: {_versions()}")
    print(
        f"threads: onnxruntime intra_op_num_threads = {args.threads} (sequential execution, inter_op 1), "
        f"numpy/scikit-learn/OpenMP limited to {args.threads}, LightGBM n_jobs = {args.threads}"
    )
    print(f"machine: {_cpu_count()} cores; at start {_load()}")
    print(
        f"timing: {args.warmup} warm-up calls, up to {args.calls} timed calls (<= {args.max_seconds:g} s) per method "
        f"and batch over {args.rounds} interleaved rounds; batches {', '.join(map(str, BATCHES))}"
    )
    folder_context = (
        contextlib.nullcontext(tempfile.mkdtemp(prefix="bench_inference."))
        if args.keep
        else tempfile.TemporaryDirectory(prefix="bench_inference.")
    )
    with threadpool_limits(limits=args.threads), folder_context as folder:
        root = Path(folder)
        (root / "i").mkdir()
        (root / "ii").mkdir()
        cases = [example_case(root / "i"), three_source_case(root / "ii", args.threads)]
        verdicts = []
        for case in cases:
            _, found = run_case(case, args)
            verdicts += found
        run_parallel(cases[1], args)
    print("\ntargets:")
    for verdict, name, value in verdicts:
        print(f"  {verdict}  {name:58} {value}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; machine: {_cpu_count()} cores; {_load()}")
    if args.keep:
        print(f"kept: {folder}")
    return 0


def _load() -> str:
    """The 1/5/15-minute load averages: other processes on a small machine distort the medians."""
    import os

    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
