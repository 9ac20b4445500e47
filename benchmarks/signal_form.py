"""Which form of the sources' probabilities a stacking learner should read: raw probabilities, or log-odds.

The measurement behind `heads.stack`'s choice (log-odds for a binary target, log-probabilities otherwise).
On the classification sets of `real_data` (sources trained on rows of their own), each learner family is
cross-validated (`learners.tune`, the folds `--meta auto` uses) on the merge rows' source outputs in both forms,
standardised as the head does; the table shows the mean fold log loss (lower is better), averaged over
repetitions:

    python benchmarks/signal_form.py            # a few minutes on 2 cores
    python benchmarks/signal_form.py --datasets digits,wine --reps 2
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as fusion_quality: idle LightGBM threads must not spin

import numpy as np
import real_data
from threadpoolctl import threadpool_limits

from onnxfuse.heads.base import Standardizer
from onnxfuse.heads.learners import folds, tune
from onnxfuse.heads.stack import EPSILON

FAMILIES = ("linear", "mlp", "gbdt")


def forms(probabilities: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Both forms of the sources' outputs: P(positive) or every class's probability, and its log-odds / log."""
    binary = probabilities[0].shape[1] == 2
    raw = np.concatenate([p[:, 1:] if binary else p for p in probabilities], axis=1)
    clipped = np.clip(raw, EPSILON, 1 - EPSILON if binary else 1.0)
    logs = np.log(clipped) - np.log(1 - clipped) if binary else np.log(clipped)
    return {"probabilities": raw, "log-odds" if binary else "log-probabilities": logs}


def measure(name: str, reps: int, folder: Path) -> dict[tuple[str, str], list[float]]:
    data = real_data.DATASETS[name]
    frame, y = data.load()
    first, second = data.sources(list(frame.columns))
    losses: dict[tuple[str, str], list[float]] = {}
    for rep in range(reps):
        rows = real_data.split(y, rep, stratify=True)
        outputs = []
        for index, source in enumerate((first, second)):
            x = frame[list(source.columns)].to_numpy(np.float32)
            side = rows.a if index == 0 else rows.b
            path = real_data.write_source(source, x[side], y[side], rep, folder / f"{name}_{rep}_{index}.onnx")
            outputs.append(real_data.source_outputs(path, x[rows.merge], "classification", source.form))
        target = np.searchsorted(np.unique(y), y[rows.merge])
        splits = folds(target, "classification", seed=rep)
        for form, matrix in forms(outputs).items():
            scaled = Standardizer.fit(matrix).standardize(matrix)
            for family in FAMILIES:
                tuned = tune(family, "classification", scaled, target, splits, seed=rep, classes=len(np.unique(y)))
                losses.setdefault((family, form), []).append(float(tuned.loss))
    return losses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [n for n, d in real_data.DATASETS.items() if d.task == "classification"]
    parser.add_argument("--datasets", default=",".join(names))
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(f"command: {' '.join(sys.argv)}; mean fold log loss over {args.reps} repetitions (lower is better)\n")
    print("| data set | learner | probabilities | log form | better |")
    print("|---|---|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(limits=1, user_api="blas"):
        for name in args.datasets.split(","):
            needs = real_data.DATASETS[name].needs
            if needs and importlib.util.find_spec(needs) is None:
                print(f"| {name} | skipped: needs {needs} | | | |")
                continue
            losses = measure(name, args.reps, Path(tmp))
            for family in FAMILIES:
                (raw, logs) = [np.mean(v) for (f, _), v in losses.items() if f == family]
                print(f"| {name} | {family} | {raw:.4f} | {logs:.4f} | {'log' if logs < raw else 'probabilities'} |",
                      flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
