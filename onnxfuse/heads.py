"""Train fusion heads on what the sources say: stacking meta-learners, a softmax gate, fitted weights.

scikit-learn and scipy are imported where a head is fitted, so merges that train
nothing (mean / vote without data) do not pay their start-up time and memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

VOTE_SMOOTHING = 0.01
GATE_L2 = 1e-3


@dataclasses.dataclass(frozen=True)
class Signals:
    """Each source's view of every row as float32 `[N, K]`, aligned to the target's label space.

    Classifiers give their probabilities over the target's classes (zero where a
    source does not know a class; one-hot labels for `vote`), regressors `[N, 1]`.
    `meta_columns` are the columns a stacking meta-learner reads: P(positive) for
    binary tasks (as scikit-learn's StackingClassifier), the source's own classes
    otherwise, the prediction for regressors.
    """

    per_model: tuple[np.ndarray, ...]
    meta_columns: tuple[tuple[int, ...], ...]

    def take(self, rows: np.ndarray) -> Signals:
        return Signals(tuple(s[rows] for s in self.per_model), self.meta_columns)


@dataclasses.dataclass(frozen=True)
class Gate:
    """Softmax gate `g = softmax(impute(x) @ W + b)` over sources; W is empty for fixed weights."""

    weights: np.ndarray  # [F, M]
    bias: np.ndarray  # [M]

    def mix(self, features: np.ndarray | None) -> np.ndarray:
        logits = (
            np.broadcast_to(self.bias, (1, len(self.bias))) if features is None else features @ self.weights + self.bias
        )
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


def meta_matrix(signals: Signals, features: np.ndarray | None) -> np.ndarray:
    """The stacking meta-learner's input: chosen source columns, then the raw features."""
    blocks = [s[:, list(cols)] for s, cols in zip(signals.per_model, signals.meta_columns)]
    if features is not None:
        blocks.append(features)
    return np.concatenate(blocks, axis=1).astype(np.float32)


def fit_estimator(family: str, task: str, x: np.ndarray, y: np.ndarray, *, seed: int):
    """A scikit-learn head that skl2onnx converts: linear, mlp or gbdt."""
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classify = task == "classification"
    if family == "linear":
        estimator = LogisticRegression(max_iter=2000) if classify else Ridge(alpha=1.0)
    elif family == "mlp":
        cls = MLPClassifier if classify else MLPRegressor
        estimator = make_pipeline(StandardScaler(), cls(hidden_layer_sizes=(32,), max_iter=500, random_state=seed))
    else:
        cls = GradientBoostingClassifier if classify else GradientBoostingRegressor
        estimator = cls(n_estimators=150, max_depth=3, learning_rate=0.1, random_state=seed)
    return estimator.fit(x, y)


def fit_gate(signals: Signals, features: np.ndarray | None, target: np.ndarray, task: str) -> Gate:
    """Mixture-of-experts weights per row, minimising log loss (or squared error) with L-BFGS.

    `target` holds class indices for classification. Starts from equal weights,
    so a gate that learns nothing is the plain mean.
    """
    from scipy.optimize import minimize

    count = len(signals.per_model)
    width = 0 if features is None else features.shape[1]
    stacked = np.stack(signals.per_model, axis=1).astype(np.float64)  # [N, M, K]
    # [N, M]: each source's P(true class), or its prediction
    truth = stacked[np.arange(len(target)), :, target] if task == "classification" else stacked[:, :, 0]
    scale = 1.0 if task == "classification" else max(float(np.var(target)), 1e-12)
    x = np.zeros((len(target), 0)) if features is None else features.astype(np.float64)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: width * count].reshape(width, count), theta[width * count :]
        gate = Gate(w, b).mix(x if width else None)
        gate = np.broadcast_to(gate, (len(target), count))
        if task == "classification":
            mixed = np.maximum((gate * truth).sum(axis=1), 1e-15)
            value = -np.mean(np.log(mixed))
            grad_logits = (gate - gate * truth / mixed[:, None]) / len(target)
        else:
            mixed = (gate * truth).sum(axis=1)
            value = np.mean((mixed - target) ** 2) / scale
            grad_logits = 2 * (mixed - target)[:, None] * gate * (truth - mixed[:, None]) / len(target) / scale
        value += 0.5 * GATE_L2 * float(np.sum(w * w))
        grad = np.concatenate([(x.T @ grad_logits + GATE_L2 * w).ravel(), grad_logits.sum(axis=0)])
        return value, grad

    result = minimize(loss, np.zeros(width * count + count), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    theta = result.x
    return Gate(
        theta[: width * count].reshape(width, count).astype(np.float32), theta[width * count :].astype(np.float32)
    )


@dataclasses.dataclass(frozen=True)
class Standardizer:
    """Column means and scales of the fusion rows; NaN features are read as the mean."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> Standardizer:
        with np.errstate(all="ignore"):
            mean = np.nan_to_num(np.nanmean(features, axis=0)) if len(features) else np.zeros(features.shape[1])
            scale = np.nan_to_num(np.nanstd(features, axis=0))
        return cls(mean.astype(np.float32), np.where(scale > 0, scale, 1.0).astype(np.float32))

    def impute(self, features: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(features), self.mean, features).astype(np.float32)

    def standardize(self, features: np.ndarray) -> np.ndarray:
        return (self.impute(features) - self.mean) / self.scale

    def fold(self, gate: Gate) -> Gate:
        """The same gate on imputed raw features: `W / scale`, `b - (mean / scale) @ W`."""
        weights = gate.weights / self.scale[:, None]
        bias = gate.bias - (self.mean / self.scale) @ gate.weights
        return Gate(weights.astype(np.float32), bias.astype(np.float32))


def vote_signals(signals: Signals) -> Signals:
    """Smoothed one-hot votes for fitting vote weights (a wrong unanimous vote is not log 0)."""
    smoothed = tuple((1 - VOTE_SMOOTHING) * s + VOTE_SMOOTHING / s.shape[1] for s in signals.per_model)
    return Signals(smoothed, signals.meta_columns)


def one_hot(labels: np.ndarray, classes: Sequence) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for row, label in enumerate(labels.tolist()):
        label = label.decode() if isinstance(label, bytes) else label
        if label in lookup:
            out[row, lookup[label]] = 1.0
    return out
