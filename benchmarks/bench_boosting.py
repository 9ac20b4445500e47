"""Fit time of the boosting head (`--meta gbdt`, LightGBM) against rows, beside scikit-learn's exact boosting.

The head's own work on a fusion set of N rows x 20 columns (binary target with interactions): choosing its
number of trees by early stopping on each fold (`learners.tune`, 3 folds above 10,000 rows, on a sample of at
most 100,000 rows), fitting the chosen setting on all N rows (`learners.fit_learner`), and converting it to
ONNX (onnxmltools). Beside it, scikit-learn's GradientBoostingClassifier (150 trees of depth 3, the head
before LightGBM) on the same rows, up to --exact-rows (it grows linearly and took 14+ minutes on 1M rows).
Each figure is the median of --repeats runs, measured side by side in this process:

    python benchmarks/bench_boosting.py                       # 10k, 100k, 1M rows; about 3 minutes on 2 cores
    python benchmarks/bench_boosting.py --rows 10000,100000 --exact-rows 100000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from onnxfuse.heads.learners import fit_learner, folds, tune

COLUMNS = 20


def rows_of(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Standardised columns (the head reads them so), a label with interactions and noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, COLUMNS))
    logit = x[:, 0] - x[:, 1] + x[:, 2] * x[:, 3] + np.sin(2 * x[:, 4]) + 0.5 * x[:, 5:10].sum(axis=1)
    return x, (rng.random(count) < 1 / (1 + np.exp(-logit))).astype(np.int64)


def head_seconds(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    start = time.perf_counter()
    tuned = tune("gbdt", "classification", x, y, folds(y, "classification", seed=0), seed=0, classes=2)
    tuned_at = time.perf_counter()
    learner = fit_learner("gbdt", "classification", x, y, tuned.params, seed=0, classes=2)
    fitted_at = time.perf_counter()
    learner.convert(COLUMNS, {"": 21, "ai.onnx.ml": 3})
    return {"tune": tuned_at - start, "fit": fitted_at - tuned_at, "convert": time.perf_counter() - fitted_at,
            "trees": tuned.params["n_estimators"]}  # fmt: skip


def exact_seconds(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.ensemble import GradientBoostingClassifier

    start = time.perf_counter()
    GradientBoostingClassifier(n_estimators=150, max_depth=3, random_state=0).fit(x, y)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10000,100000,1000000", help="comma-separated row counts")
    parser.add_argument("--exact-rows", type=int, default=100_000, help="largest N for scikit-learn's exact boosting")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(f"command: {' '.join(sys.argv)}; {COLUMNS} columns, binary target, medians of {args.repeats} run(s)")
    print(f"{'rows':>9s} {'trees':>6s} {'tune s':>8s} {'fit s':>8s} {'convert s':>10s} {'head s':>8s} "
          f"{'sklearn exact s':>16s} {'ratio':>7s}")  # fmt: skip
    with threadpool_limits(limits=1, user_api="blas"):  # as train.train_head fits the heads
        for count in (int(r) for r in args.rows.split(",")):
            x, y = rows_of(count)
            runs = [head_seconds(x, y) for _ in range(args.repeats)]
            median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            total = median["tune"] + median["fit"] + median["convert"]
            exact = None
            if count <= args.exact_rows:
                exact = statistics.median(exact_seconds(x, y) for _ in range(args.repeats))
            exact_text = f"{exact:16.1f} {exact / total:6.1f}x" if exact is not None else f"{'-':>16s} {'-':>7s}"
            print(f"{count:9d} {int(median['trees']):6d} {median['tune']:8.1f} {median['fit']:8.1f} "
                  f"{median['convert']:10.2f} {total:8.1f} {exact_text}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
