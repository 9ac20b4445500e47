"""The stacking head's learners (`--meta linear|mlp|gbdt`), tuned by cross-validation on the rows they are given.

Rules: inputs arrive standardised, in float64 (see `base.Standardizer`); a classifier
learns class indices `0..C-1`; a regression target is standardised for fitting and
unscaled on the way out (`TargetScale`, also in the file). Each family has one
regularisation knob, chosen by the mean log loss (squared error) over seeded folds:
linear — `C` of a logistic regression / `alpha` of a ridge; mlp — the L2 `alpha`
(L-BFGS up to MLP_LBFGS_ROWS rows, Adam with early stopping above); gbdt — LightGBM,
its number of trees found by early stopping on an inner split of each fold. The
linear family's setting is chosen by the mean over all folds; the MLP's on the
first fold, its loss then the mean over all folds (so an MLP costs its grid plus
the folds in fits, not their product). The chosen
setting is then fitted on all rows given (`fit_learner`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np
import onnx

from onnxfuse.errors import warn

FOLDS, FOLDS_ROWS = 5, 10_000  # 5 folds up to FOLDS_ROWS rows, 3 above
CHEAP = ("linear",)  # families whose every setting is tried on every fold
TUNE_ROWS = 100_000  # tuning reads a seeded sample of at most this many rows; the chosen setting fits on all
LINEAR_C = (0.01, 0.1, 1.0, 10.0, 100.0)
RIDGE_ALPHA = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
MLP_ALPHA = (1e-4, 1e-2, 1.0)
MLP_LBFGS_ROWS = 20_000  # below: full-batch L-BFGS, above: Adam with early stopping. Adam stopped early on a
# stack's dropout copies learnt the one-source patterns badly: with 3,000 rows (6,088 with copies), 10 % missing each
# group, rows with only source A: accuracy 0.6205 vs A alone 0.6525 (Adam), 0.647 (L-BFGS); tests/test_missing.py
MLP_LBFGS_ITERATIONS = 300  # a cap that regularises, judged by the folds like alpha: not a failure to converge
TREES, TREE_PATIENCE = 1_000, 30
BOOSTING_THREADS_ROWS = 200_000  # LightGBM uses 2 threads from this many rows, 1 below: on a loaded machine its
# OpenMP threads wait for each other at every split (100 s instead of 0.1 s on 200 rows); the count follows the rows
# alone, so the trees (and the file's bytes) do not depend on the machine
Folds = Sequence[tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class TargetScale:
    """A regression target as the learner sees it: `(y - mean) / scale`."""

    mean: float
    scale: float

    @classmethod
    def fit(cls, target: np.ndarray) -> TargetScale:
        scale = float(np.std(target))
        return cls(float(np.mean(target)), scale if scale > 0 else 1.0)


@dataclasses.dataclass(frozen=True)
class Tuned:
    """A family's chosen setting, its mean loss over the folds (None without folds) and what it was chosen from."""

    family: str
    params: dict
    loss: float | None
    grid: dict[str, float]  # loss of each setting tried (over all folds, or the first), by its text
    per_fold: tuple[float, ...] = ()  # the chosen setting's loss on each fold


@dataclasses.dataclass(frozen=True)
class Learner:
    """A fitted learner: predicts probabilities over `classes` class indices, or the (unscaled) target."""

    family: str
    task: str
    params: dict
    estimator: object
    classes: int | None = None
    target: TargetScale | None = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.task == "classification":
            return _placed_probabilities(self.estimator, x, self.classes or 0)
        assert self.target is not None
        return np.asarray(self.estimator.predict(x), dtype=np.float64) * self.target.scale + self.target.mean

    def convert(self, width: int, opsets: dict[str, int]) -> tuple[onnx.ModelProto, str]:
        """The estimator as ONNX (float input `[N, width]`), and the output holding probabilities (or the scaled
        prediction, to be unscaled by the caller); at most the converter's newest opset (the caller converts up)."""
        classify = self.task == "classification"
        if self.family == "gbdt":
            from onnxmltools import convert_lightgbm
            from onnxmltools.convert.common.data_types import FloatTensorType
            from onnxmltools.convert.common.onnx_ex import get_maximum_opset_supported

            proto = convert_lightgbm(
                self.estimator, initial_types=[("input", FloatTensorType([None, width]))],
                target_opset=min(opsets[""], get_maximum_opset_supported()), zipmap=False,
            )  # fmt: skip
        else:
            from skl2onnx import get_latest_tested_opset_version, to_onnx

            opsets = {**opsets, "": min(opsets[""], get_latest_tested_opset_version())}
            proto = to_onnx(
                self.estimator, np.zeros((1, width), dtype=np.float32), target_opset=opsets,
                options={"zipmap": False} if classify else None,
            )  # fmt: skip
        names = [o.name for o in proto.graph.output]
        return proto, next(n for n in names if "prob" in n) if classify else names[0]


def folds(target: np.ndarray, task: str, *, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded K-fold splits (stratified by class), no more than the rarest class allows; empty when there are
    too few rows to cross-validate."""
    from sklearn.model_selection import KFold, StratifiedKFold

    rows = len(target)
    count = FOLDS if rows <= FOLDS_ROWS else 3
    if task == "classification":
        rarest = int(np.unique(target, return_counts=True)[1].min())
        count = min(count, rarest)
        splitter = StratifiedKFold(count, shuffle=True, random_state=seed) if count >= 2 else None
    else:
        count = min(count, rows // 5)
        splitter = KFold(count, shuffle=True, random_state=seed) if count >= 2 else None
    return [] if splitter is None else list(splitter.split(np.zeros((rows, 1)), target))


def tune(
    family: str, task: str, x: np.ndarray, y: np.ndarray, folds: Folds, *, seed: int, classes: int | None
) -> Tuned:
    """Choose the family's setting by mean fold loss; without folds, the middle of its grid."""
    grid = _grid(family, task)
    if not folds:
        return Tuned(family, grid[len(grid) // 2], None, {})
    x, y, folds = _tuning_sample(x, y, folds, seed)
    if family == "gbdt":
        return _tune_boosting(task, x, y, folds, seed=seed, classes=classes)

    def loss(params: dict, fold: tuple[np.ndarray, np.ndarray]) -> float:
        train, held = fold
        return fold_loss(task, y[held], _fit(family, task, x[train], y[train], params, seed, classes).predict(x[held]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a setting that does not converge scores badly; that is its verdict
        if family in CHEAP:  # every setting on every fold: one fold's choice of C on a few hundred rows is noise
            every = {_text(params): [loss(params, fold) for fold in folds] for params in grid}
            best = min(grid, key=lambda params: np.mean(every[_text(params)]))
            losses = {text: float(np.mean(values)) for text, values in every.items()}
            return Tuned(family, best, losses[_text(best)], losses, tuple(every[_text(best)]))
        first = {_text(params): loss(params, folds[0]) for params in grid}
        best = min(grid, key=lambda params: first[_text(params)])
        per_fold = (first[_text(best)], *(loss(best, fold) for fold in folds[1:]))
    return Tuned(family, best, float(np.mean(per_fold)), first, per_fold)


def fit_learner(family: str, task: str, x: np.ndarray, y: np.ndarray, params: dict, *, seed: int,
                classes: int | None) -> Learner:  # fmt: skip
    """The family with the chosen `params`, fitted on all of `x`; a fit that does not converge says so once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learner = _fit(family, task, x, y, params, seed, classes)
    capped = family == "mlp" and len(x) < MLP_LBFGS_ROWS  # L-BFGS stops at its cap by design
    if not capped and any("converge" in str(w.message).lower() for w in caught):
        warn(f"the --meta {family} head did not converge on {len(x)} rows ({_text(params)}); see its hold-out figures")
    return learner


def fold_loss(task: str, truth: np.ndarray, predicted: np.ndarray) -> float:
    """Log loss of class-index `truth` (squared error for regression), the score every candidate is chosen by."""
    if task == "classification":
        picked = np.clip(predicted[np.arange(len(truth)), truth], 1e-15, 1.0)
        return float(-np.mean(np.log(picked)))
    return float(np.mean((np.asarray(predicted, dtype=np.float64) - truth) ** 2))


def _fit(family: str, task: str, x: np.ndarray, y: np.ndarray, params: dict, seed: int, classes) -> Learner:
    scale = TargetScale.fit(y) if task == "regression" else None
    fitted_y = (y - scale.mean) / scale.scale if scale is not None else y
    estimator = _estimator(family, task, params, seed, rows=len(x))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*feature names.*")
        estimator.fit(x, fitted_y)
    return Learner(family, task, params, estimator, classes, scale)


def _estimator(family: str, task: str, params: dict, seed: int, *, rows: int):
    classify = task == "classification"
    if family == "linear":
        from sklearn.linear_model import LogisticRegression, Ridge

        return LogisticRegression(C=params["C"], max_iter=5000) if classify else Ridge(alpha=params["alpha"])
    if family == "mlp":
        from sklearn.neural_network import MLPClassifier, MLPRegressor

        small = rows < MLP_LBFGS_ROWS
        solver = {"solver": "lbfgs", "max_iter": MLP_LBFGS_ITERATIONS} if small else {
            "solver": "adam", "max_iter": 200, "early_stopping": True, "validation_fraction": 0.1,
            "n_iter_no_change": 8,
        }  # fmt: skip
        cls = MLPClassifier if classify else MLPRegressor
        return cls(hidden_layer_sizes=(32,), alpha=params["alpha"], random_state=seed, **solver)
    return _boosting(task, params.get("n_estimators", TREES), seed, rows=rows)


def _boosting(task: str, trees: int, seed: int, *, rows: int):
    from lightgbm import LGBMClassifier, LGBMRegressor

    cls = LGBMClassifier if task == "classification" else LGBMRegressor
    return cls(
        n_estimators=trees, learning_rate=0.05, num_leaves=15, min_child_samples=10, reg_lambda=1.0,
        subsample=1.0, colsample_bytree=1.0, random_state=seed, deterministic=True, force_col_wise=True,
        n_jobs=2 if rows >= BOOSTING_THREADS_ROWS else 1, verbose=-1,
    )  # fmt: skip


def _tune_boosting(task: str, x: np.ndarray, y: np.ndarray, folds: Folds, *, seed: int, classes) -> Tuned:
    """Trees by early stopping on an inner 20 % of each fold's training rows; the median count is chosen."""
    from lightgbm import early_stopping
    from sklearn.model_selection import train_test_split

    losses, counts = [], []
    for train, held in folds:
        classify = task == "classification" and np.unique(y[train], return_counts=True)[1].min() >= 2
        stratify = y[train] if classify else None
        inner, stop = train_test_split(train, test_size=0.2, random_state=seed, stratify=stratify)
        scale = TargetScale.fit(y[inner]) if task == "regression" else None
        fitted = y if scale is None else (y - scale.mean) / scale.scale
        estimator = _boosting(task, TREES, seed, rows=len(inner))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*feature names.*")
            estimator.fit(x[inner], fitted[inner], eval_X=(x[stop],), eval_y=(fitted[stop],),
                          callbacks=[early_stopping(TREE_PATIENCE, verbose=False)])  # fmt: skip
        counts.append(max(1, int(estimator.best_iteration_ or TREES)))
        learner = Learner("gbdt", task, {}, estimator, classes, scale)
        losses.append(fold_loss(task, y[held], learner.predict(x[held])))
    params = {"n_estimators": int(np.median(counts))}
    return Tuned("gbdt", params, float(np.mean(losses)), {_text(params): float(np.mean(losses))}, tuple(losses))


def _tuning_sample(x: np.ndarray, y: np.ndarray, folds: Folds, seed: int):
    """Large sets are tuned on a seeded sample of TUNE_ROWS rows (the folds restricted to it)."""
    if len(x) <= TUNE_ROWS:
        return x, y, folds
    keep = np.sort(np.random.default_rng(seed).choice(len(x), TUNE_ROWS, replace=False))
    position = np.full(len(x), -1)
    position[keep] = np.arange(len(keep))
    restricted = [(position[t][position[t] >= 0], position[h][position[h] >= 0]) for t, h in folds]
    return x[keep], y[keep], restricted


def _grid(family: str, task: str) -> list[dict]:
    if family == "linear":
        return [{"C": c} for c in LINEAR_C] if task == "classification" else [{"alpha": a} for a in RIDGE_ALPHA]
    if family == "mlp":
        return [{"alpha": a} for a in MLP_ALPHA]
    return [{"n_estimators": 100}]


def _placed_probabilities(estimator, x: np.ndarray, classes: int) -> np.ndarray:
    """`predict_proba` with a column for every class index, also those a fold's rows lacked."""
    probabilities = np.asarray(estimator.predict_proba(x), dtype=np.float64)
    placed = np.zeros((len(x), classes))
    placed[:, np.asarray(estimator.classes_, dtype=np.int64)] = probabilities
    return placed


def _text(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in params.items())

