"""Build the example in models/ deterministically: two skl2onnx models and the joint training rows.

Model A (random forest, default ZipMap output) was trained on columns a, b only;
model B (scaler + logistic regression, another family) on c, d only. The label in
train.csv depends on all four columns, with an a*c interaction neither model sees.
As two teams would have them, A and B were each trained on rows of their own, and
train.csv holds rows neither saw: the fusion head must learn from rows the sources
did not learn from, or it trusts their (overfitted) outputs and the hold-out lies.

    python models/make_examples.py        # rewrites models/a.onnx, b.onnx, train.csv, month.csv

month.csv is "this month's" labelled rows, for `onnxfuse evaluate` and `onnxfuse predict`: new rows from the
same process, with team B's columns c, d not collected (empty) on 30 % of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
ROWS = 800  # the joint labelled rows: fewer than each team had, as is usual
TEAM_ROWS = 20_000
SEED = 7
TEAM_SEEDS = (1, 2)  # the rows team A and team B trained on: drawn apart from train.csv's
MONTH_ROWS, MONTH_SEED, MONTH_MISSING = 1000, 8, 0.3


def make_rows(rows: int = ROWS, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Four features and a binary label: each team's pair of columns acts non-linearly (which a team learns well
    from its own many rows), and an a*c interaction neither team can see."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    a, b, c, d = x.T
    logit = 1.5 * np.sin(2 * a) + 1.2 * a * b + 1.0 * c + 0.6 * d + 0.8 * a * c
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return np.round(x, 4), y


def main() -> None:
    x, y = make_rows()
    x_a, y_a = make_rows(TEAM_ROWS, seed=TEAM_SEEDS[0])
    x_b, y_b = make_rows(TEAM_ROWS, seed=TEAM_SEEDS[1])
    model_a = RandomForestClassifier(n_estimators=12, max_depth=6, random_state=SEED).fit(x_a[:, :2], y_a)
    model_b = make_pipeline(StandardScaler(), LogisticRegression()).fit(x_b[:, 2:], y_b)
    (HERE / "a.onnx").write_bytes(to_onnx(model_a, x[:1, :2], target_opset=18).SerializeToString())
    (HERE / "b.onnx").write_bytes(to_onnx(model_b, x[:1, 2:], target_opset=13).SerializeToString())
    (HERE / "train.csv").write_text(_csv(x, y))
    x_month, y_month = make_rows(MONTH_ROWS, seed=MONTH_SEED)
    unrecorded = np.random.default_rng(MONTH_SEED).random(MONTH_ROWS) < MONTH_MISSING
    x_month[unrecorded, 2:] = np.nan
    (HERE / "month.csv").write_text(_csv(x_month, y_month))


def _csv(x: np.ndarray, y: np.ndarray) -> str:
    """Four decimals; a missing value is an empty cell."""
    cells = [[("" if np.isnan(v) else f"{v:.4f}") for v in row] for row in x]
    return "\n".join(["a,b,c,d,y"] + [",".join(row) + f",{label}" for row, label in zip(cells, y)]) + "\n"


if __name__ == "__main__":
    main()
