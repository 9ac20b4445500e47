"""Size and onnxruntime latency of tree ensembles lowered by `--ops core` (onnxfuse.lower) beside the originals.

The cases, fitted on scikit-learn's bundled breast-cancer rows (569 x 30, features on their natural scales):

    rf500       RandomForestClassifier(500 trees, max_depth 8), skl2onnx
    et500       ExtraTreesClassifier(500 trees, max_depth 8), skl2onnx
    lgbm1000    LGBMClassifier(1000 trees, 31 leaves), onnxmltools (converted to opset 15 as onnxfuse does)

For each: the file sizes and their ratio (lowered bytes / original bytes), the nodes of the lowered graph, the
deepest tree (the levels the traversal unrolls), the largest difference between the two files' outputs on
1024 rows, and the median ms per call of both files in onnxruntime at batch 1 and 1024, timed side by side
in one run (benchmarks/harness.py: interleaved rounds, `--threads` intra-op threads, sequential execution).
The target of the issue: lowered / original at most ~4-6x (the prototype's figure).

    python benchmarks/bench_lower.py                     # 1 thread, the defaults
    python benchmarks/bench_lower.py --threads 2 --calls 200 --max-seconds 1 --cases rf500
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from _children import machine, temporary_folder
from harness import Settings, Timing, batch_rows, fmt_ms, limited_threads, measure, session

BATCHES = (1, 1024)
TARGET = 6.0  # lowered / original, the upper end of the prototype's 4-6x
PACKAGES = ("onnxruntime", "onnx", "scikit-learn", "skl2onnx", "lightgbm", "onnxmltools", "numpy")


def rows() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return x.astype(np.float32), y


def forest(kind: str) -> Callable[[np.ndarray, np.ndarray, int], object]:
    def build(x: np.ndarray, y: np.ndarray, threads: int):
        from skl2onnx import to_onnx
        from sklearn import ensemble

        fitted = getattr(ensemble, kind)(500, max_depth=8, random_state=0, n_jobs=threads).fit(x, y)
        return to_onnx(fitted, x[:1], options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})

    return build


def lightgbm_1000(x: np.ndarray, y: np.ndarray, threads: int):
    import lightgbm
    import onnx
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    # learning_rate 0.01: at the default 0.1 LightGBM stops after 576 trees on these rows (no split left)
    boosted = lightgbm.LGBMClassifier(n_estimators=1000, learning_rate=0.01, verbose=-1, random_state=0, n_jobs=threads)
    fitted = boosted.fit(x, y)
    model = onnxmltools.convert_lightgbm(
        fitted, initial_types=[("X", FloatTensorType([None, x.shape[1]]))], zipmap=False
    )
    return onnx.version_converter.convert_version(model, 15)


CASES = {
    "rf500": ("RandomForestClassifier, 500 trees, max_depth 8 (skl2onnx)", forest("RandomForestClassifier")),
    "et500": ("ExtraTreesClassifier, 500 trees, max_depth 8 (skl2onnx)", forest("ExtraTreesClassifier")),
    "lgbm1000": ("LGBMClassifier, 1000 trees of up to 31 leaves (onnxmltools)", lightgbm_1000),
}


def shape(model) -> tuple[int, int, int]:
    """Trees, the deepest tree (the levels the lowered traversal unrolls) and leaves of the tree ensemble."""
    from onnxfuse.lower import trees
    from onnxfuse.lower.base import Context

    node = next(n for n in model.graph.node if n.op_type.startswith("TreeEnsemble"))
    forest = trees._forest_v3(node, Context(label="bench", opset=17, types={}, used=set()), "class", 2)
    return len(forest.roots), int(forest.depths[0]), int(sum(m == "LEAF" for m in forest.mode))


def run_case(key: str, root: Path, settings: Settings) -> tuple[str, dict[int, dict[str, Timing]], dict]:
    """Fit, convert, lower, check the outputs agree, and time both files."""
    import onnx

    from onnxfuse.lower import lower_model

    title, build = CASES[key]
    x, y = rows()
    model = build(x, y, settings.threads)
    started = time.perf_counter()
    lowered = lower_model(model, key)
    lowering_s = time.perf_counter() - started
    paths = {"original": root / f"{key}.onnx", "lowered": root / f"{key}.core.onnx"}
    onnx.save(model, str(paths["original"]))
    onnx.save(lowered, str(paths["lowered"]))
    sessions = {name: session(path, settings.threads) for name, path in paths.items()}
    x_big = batch_rows(x, max(BATCHES))
    outputs = {name: s.run(None, {"X": x_big}) for name, s in sessions.items()}
    error = max(
        float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
        for a, b in zip(outputs["original"], outputs["lowered"])
    )
    timings = {}
    for batch in BATCHES:
        feed = {"X": batch_rows(x, batch)}
        timings[batch] = measure({n: (lambda s=s, f=feed: s.run(None, f)) for n, s in sessions.items()}, settings)
    facts = {
        "sizes": {name: path.stat().st_size for name, path in paths.items()},
        "nodes": len(lowered.graph.node),
        "shape": shape(model),
        "error": error,
        "lowering_s": lowering_s,
    }
    return title, timings, facts


def print_case(key: str, title: str, timings: dict[int, dict[str, Timing]], facts: dict) -> list[str]:
    """The case's lines of the table; returns the MISS lines of the latency target."""
    sizes = facts["sizes"]
    print(f"\n== {key}: {title}")
    trees, deepest, leaves = facts["shape"]
    print(f"   {trees} trees, {leaves:,} leaves, the deepest {deepest} levels (unrolled)")
    print(
        f"   original {sizes['original']:,} B; lowered {sizes['lowered']:,} B (size factor "
        f"{sizes['lowered'] / sizes['original']:.2f}); {facts['nodes']} nodes; "
        f"lowered in {facts['lowering_s']:.2f} s; max |lowered - original| on {max(BATCHES)} rows "
        f"{facts['error']:.1e}"
    )
    print(f"   {'batch':>5} {'original ms':>12} {'IQR':>17} {'lowered ms':>11} {'IQR':>17} {'lowered/orig':>13}")
    misses = []
    for batch, row in timings.items():
        o, lo = row["original"], row["lowered"]
        ratio = lo.median / o.median
        iqr = [f"{fmt_ms(a)}-{fmt_ms(b)}" for a, b in (o.iqr, lo.iqr)]
        verdict = "PASS" if ratio <= TARGET else "MISS"
        print(
            f"   {batch:>5} {fmt_ms(o.median):>12} {iqr[0]:>17} {fmt_ms(lo.median):>11} {iqr[1]:>17} "
            f"{ratio:12.2f}x  {verdict}"
        )
        if verdict == "MISS":
            misses.append(f"{key} batch {batch}: {ratio:.2f}x (target <= {TARGET:g}x)")
    return misses


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Size factor and onnxruntime latency (lowered / original) of tree ensembles lowered by "
        "--ops core, at batch 1 and 1024, side by side in one run.",
    )
    Settings.add_arguments(parser)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES), help="cases to run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with the models")
    args = parser.parse_args(argv)
    settings = Settings.parsed(parser, args)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    print(settings.describe(PACKAGES, BATCHES))
    misses = []
    with limited_threads(settings.threads), temporary_folder("bench_lower.", keep=args.keep) as root:
        for key in args.cases:
            misses += print_case(key, *run_case(key, root, settings))
    print("\ntarget (lowered / original <= 6x at every batch): " + ("PASS" if not misses else "; ".join(misses)))
    print(f"\ntotal {time.perf_counter() - started:.0f} s; machine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
