"""The in-process timing harness of the inference benchmark: methods timed call by call side by side.

Every method of one batch size is timed in the same run, interleaved round by round, so the
ratios between them hold on a shared, noisy machine even when the absolute medians drift.
Thread settings (onnxruntime intra-op threads, numpy/scikit-learn/OpenMP via threadpoolctl) are
applied here, and `numpy_head` is the one place that reads onnxfuse's head internals.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from _children import header

if TYPE_CHECKING:
    import onnxruntime as ort

    from onnxfuse.pipeline import FuseResult
    from onnxfuse.roles import OutputRole

NOISE = 0.03  # a slower median within 3 % and overlapping interquartile ranges is noise


@dataclasses.dataclass(frozen=True)
class Settings:
    """How many threads and calls: the command line of a timing benchmark."""

    threads: int = 1
    calls: int = 400
    max_seconds: float = 2.0
    warmup: int = 20
    rounds: int = 10

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("--threads", type=int, default=1, help="onnxruntime intra-op threads, and numpy/scikit-learn/LightGBM's")
        add("--calls", type=int, default=400, help="timed calls per method and batch (default 400)")
        add("--max-seconds", type=float, default=2.0, help="cap on timed seconds per method and batch (default 2)")
        add("--warmup", type=int, default=20, help="uncounted calls per method and batch (default 20)")
        add("--rounds", type=int, default=10, help="rounds that interleave the methods (default 10)")

    @classmethod
    def parsed(cls, parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
        if min(args.threads, args.calls, args.warmup, args.rounds) < 1 or args.max_seconds <= 0:
            parser.error("--threads, --calls, --warmup, --rounds must be >= 1 and --max-seconds > 0")
        return cls(args.threads, max(args.calls, args.rounds), args.max_seconds, args.warmup, args.rounds)

    def describe(self, packages: Sequence[str], batches: Sequence[int]) -> str:
        """The header every run prints: command, versions, threads, machine, timing plan."""
        return "\n".join(
            (
                header(packages) + " at start",
                f"threads: onnxruntime intra_op_num_threads = {self.threads} (sequential execution, inter_op 1), "
                f"numpy/scikit-learn/OpenMP limited to {self.threads}, LightGBM n_jobs = {self.threads}",
                f"timing: {self.warmup} warm-up calls, up to {self.calls} timed calls (<= {self.max_seconds:g} s) per "
                f"method and batch over {self.rounds} interleaved rounds; batches {', '.join(map(str, batches))}",
            )
        )


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


def measure(methods: dict[str, Callable[[], object]], settings: Settings) -> dict[str, Timing]:
    """Warm each method up, then time it call by call, the methods interleaved round by round
    (in an order rotated each round, so no method always follows the same one)."""
    planned = {}
    for name, call in methods.items():
        start = time.perf_counter()
        for _ in range(settings.warmup):
            call()
        per_call = (time.perf_counter() - start) / settings.warmup
        planned[name] = max(settings.rounds, min(settings.calls, int(settings.max_seconds / max(per_call, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    gc.collect()
    gc.disable()
    try:
        for round_ in range(settings.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                call, count = methods[name], planned[name] // settings.rounds
                for _ in range(count + (1 if round_ < planned[name] % settings.rounds else 0)):
                    cpu_ns = time.process_time_ns()
                    start_ns = time.perf_counter_ns()
                    call()
                    samples[name].append((time.perf_counter_ns() - start_ns) / 1e6)
                    cpu[name].append((time.process_time_ns() - cpu_ns) / 1e6)
    finally:
        gc.enable()
    return {name: Timing(tuple(samples[name]), tuple(cpu[name])) for name in methods}


def limited_threads(threads: int):
    """numpy, scikit-learn and OpenMP held to `threads` while the context lasts."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)


def session(path: Path, threads: int, *, parallel: bool = False) -> ort.InferenceSession:
    """An onnxruntime session with `threads` intra-op threads: sequential, or ORT_PARALLEL with 2 inter-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 2 if parallel else 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def output_of(sess: ort.InferenceSession, name: str, feed: str = "features") -> Callable[[np.ndarray], np.ndarray]:
    """`x -> sess.run(None, {feed: x})[name]`: what a user calls, every output computed."""
    index = [o.name for o in sess.get_outputs()].index(name)
    return lambda x: sess.run(None, {feed: x})[index]


def identity_model(path: Path, width: int) -> Path:
    """The floor of one `session.run` from Python: `features [N, F]` -> Identity -> `out`."""
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


def batch_rows(x: np.ndarray, batch: int) -> np.ndarray:
    """`batch` rows of `x`, repeated as often as needed, contiguous."""
    return np.ascontiguousarray(np.tile(x, (math.ceil(batch / len(x)), 1))[:batch])


def fmt_ms(value: float) -> str:
    return f"{value:.4g}"


def print_timings(title: str, timings: dict[int, dict[str, Timing]], labels: dict[str, str]) -> None:
    """Median, interquartile range, calls, rows/s and time over the `fused` method's, per batch and method."""
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


def not_slower(opt: Timing, plain: Timing) -> tuple[str, str]:
    """PASS (faster or equal), PASS within noise (< 3 % slower, IQRs overlap), or MISS."""
    (a_low, a_high), (b_low, b_high) = opt.iqr, plain.iqr
    overlap = a_low <= b_high and b_low <= a_high
    change = opt.median / plain.median - 1
    if change <= 0:
        return "PASS", f"{-change:.1%} faster"
    if change < NOISE and overlap:
        return "PASS", f"{change:.1%} slower, within noise"
    return "MISS", f"{change:.1%} slower{'' if overlap else ', IQRs apart'}"


def at_least(ratio: float, target: float, digits: int = 2) -> tuple[str, str]:
    """PASS when `ratio` (the other's time over ours) reaches `target`."""
    return "PASS" if ratio >= target else "MISS", f"{ratio:.{digits}f}x faster (target >= {target:g}x)"


def numpy_head(
    result: FuseResult, roles: Sequence[OutputRole], *, plain: bool = False
) -> Callable[[Sequence[np.ndarray], np.ndarray], np.ndarray]:
    """The fused file's head in numpy, as users who run the sources separately would compute it.

    The one function of the benchmarks that reads onnxfuse's head internals (FuseResult.head and its
    `predict`, an auto head's `.head`, a Stacked head's `learner` and `standardizer`, signals.Signals /
    class_placement / meta_columns, heads.stack.meta_matrix): adapt it when they move. Returns
    `head(probabilities, features)`: `probabilities[i]` is source i's float32 `[N, C_i]` over its own
    classes (`roles[i].classes`), `features` the `[N, F]` rows; the result is `[N, C]` over
    `result.classes`. `plain=True` computes a linear stack as `sigmoid(standardize(m) @ coef + b)`
    (softmax for several classes) instead of scikit-learn's `predict_proba` inside `head.predict`.
    """
    from onnxfuse.heads.stack import meta_matrix
    from onnxfuse.signals import Signals, class_placement, meta_columns

    head = result.head
    placements = [class_placement(role, result.classes) for role in roles]
    meta = tuple(meta_columns(role, result.classes) for role in roles)
    stacked = getattr(head, "head", head)  # --meta auto wraps the head it chose
    learner = getattr(stacked, "learner", None)
    if plain and (learner is None or learner.family != "linear" or head.uses_features):
        raise ValueError("the plain numpy head computes a linear stack (--meta linear) without --passthrough only")
    estimator = getattr(learner, "estimator", None)
    coef = np.asarray(getattr(estimator, "coef_", 0.0), dtype=np.float64).T
    intercept = np.asarray(getattr(estimator, "intercept_", 0.0), dtype=np.float64)

    def run(probabilities: Sequence[np.ndarray], features: np.ndarray) -> np.ndarray:
        flags = (True,) * len(probabilities)
        signals = Signals(tuple(p.astype(np.float32) @ m for p, m in zip(probabilities, placements)), meta, flags)
        if not plain:
            return head.predict(signals, features if head.uses_features else None)
        scores = stacked.standardizer.standardize(meta_matrix(signals, None)) @ coef + intercept
        if scores.shape[1] == 1:
            positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            return np.stack([1.0 - positive, positive], axis=1)
        exp = np.exp(scores - scores.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    return run
