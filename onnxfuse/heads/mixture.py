"""A softmax-weighted mixture of the sources' signals: what `mean`, `vote` and `gate` fit and write.

Rules: the weights are `softmax(standardize(x) @ W + b)` per row, with `W` empty
(fixed weights) for mean and vote; they are fitted in float64 with L-BFGS on the
log loss of the mixed probabilities (squared error for regression), starting from
equal weights, so a mixture that learns nothing is the plain mean.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnxfuse.heads.base import LabelSpace, Standardizer, class_indices, float_features, standardized
from onnxfuse.signals import Signals
from onnxfuse.support import add_constant, add_node, flatten

GATE_L2 = 1e-3


@dataclasses.dataclass(frozen=True)
class Gate:
    """Softmax gate `g = softmax(x @ W + b)` over sources; W is empty for fixed weights."""

    weights: np.ndarray  # [F, M]
    bias: np.ndarray  # [M]

    def mix(self, features: np.ndarray | None) -> np.ndarray:
        logits = (
            np.broadcast_to(self.bias, (1, len(self.bias))) if features is None else features @ self.weights + self.bias
        )
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Mixture:
    """A fitted mixture (a `Head`): the gate reads the standardised raw features when `standardizer` is set."""

    gate: Gate
    standardizer: Standardizer | None = None

    @property
    def uses_features(self) -> bool:
        return self.standardizer is not None

    def fixed_weights(self) -> np.ndarray:
        weights = np.exp(self.gate.bias - self.gate.bias.max())
        return (weights / weights.sum()).astype(np.float32)

    def predict(self, signals: Signals, features: np.ndarray | None) -> np.ndarray:
        scaled = self.standardizer.standardize(features) if self.standardizer is not None else None
        gate = self.gate.mix(scaled)
        mixed = sum(gate[:, [m]] * s for m, s in enumerate(signals.per_model))
        return mixed[:, 0] if mixed.shape[1] == 1 else mixed

    def refit(self, signals: Signals, features: np.ndarray | None, target: np.ndarray, space: LabelSpace) -> Mixture:
        """The same kind of mixture (per-row gate or fixed weights) fitted on other rows."""
        indices = class_indices(target, space.classes) if space.task == "classification" else target
        if self.uses_features:
            return gated(signals, features, indices, space.task)
        return fixed_weights(signals, indices, space.task)

    def build(self, model: ir.Model, signals: Sequence[ir.Value], space: LabelSpace, versions) -> dict:
        graph = model.graph
        mixed = self._per_row(graph, signals, space) if self.uses_features else self._fixed(graph, signals, space)
        return {"probabilities": mixed} if space.task == "classification" else {"prediction": mixed}

    def metadata(self) -> dict:
        if self.uses_features:
            return {}
        return {"weights": [round(float(w), 6) for w in self.fixed_weights()]}

    def _fixed(self, graph: ir.Graph, signals: Sequence[ir.Value], space: LabelSpace) -> ir.Value:
        return weighted_sum(graph, signals, self.fixed_weights(), space)

    def _per_row(self, graph: ir.Graph, signals: Sequence[ir.Value], space: LabelSpace) -> ir.Value:
        features = standardized(graph, float_features(graph), self.standardizer, "gate/features")
        weights = add_constant(graph, "gate/weights", self.gate.weights)
        logits = add_node(graph, "MatMul", [features, weights], {}, "gate/scores")
        logits = add_node(graph, "Add", [logits, add_constant(graph, "gate/bias", self.gate.bias)], {}, "gate/logits")
        weights = add_node(graph, "Softmax", [logits], {"axis": 1}, "gate/weights_per_row")
        axis1 = add_constant(graph, "gate/axis1", np.array([1], dtype=np.int64))
        if space.task == "classification":
            columns = [add_node(graph, "Unsqueeze", [s, axis1], {}, f"gate/m{m + 1}") for m, s in enumerate(signals)]
            stacked = add_node(graph, "Concat", columns, {"axis": 1}, "gate/experts")
            axis2 = add_constant(graph, "gate/axis2", np.array([2], dtype=np.int64))
            weights = add_node(graph, "Unsqueeze", [weights, axis2], {}, "gate/weights_column")
        else:
            stacked = add_node(graph, "Concat", list(signals), {"axis": 1}, "gate/experts")
        product = add_node(graph, "Mul", [stacked, weights], {}, "gate/weighted")
        return add_node(graph, "ReduceSum", [product, axis1], {"keepdims": 0}, "gate/mixed")


def weighted_sum(graph: ir.Graph, signals: Sequence[ir.Value], weights: np.ndarray, space: LabelSpace) -> ir.Value:
    """`sum_m w_m * signal_m` (a prediction `[N]` for regression): every source is read, also one of weight 0."""
    scaled = [
        add_node(graph, "Mul", [s, add_constant(graph, f"weight_{m}", np.array(w, dtype=np.float32))], {},
                 f"m{m + 1}/weighted")
        for m, (s, w) in enumerate(zip(signals, weights))
    ]  # fmt: skip
    total = add_node(graph, "Sum", scaled, {}, "sum")
    return total if space.task == "classification" else flatten(graph, total)


def equal_weights(count: int) -> Mixture:
    """Every source weighs the same (mean / vote without data)."""
    return Mixture(Gate(np.zeros((0, count), np.float32), np.zeros(count, np.float32)))


def fixed_weights(signals: Signals, target: np.ndarray, task: str) -> Mixture:
    """One weight per source for all rows."""
    gate = fit_gate(signals, None, target, task)
    return Mixture(Gate(np.zeros((0, len(gate.bias)), np.float32), gate.bias))


def gated(signals: Signals, features: np.ndarray, target: np.ndarray, task: str) -> Mixture:
    """Per-row weights from the standardised raw features (`target`: class indices for classification)."""
    standardizer = Standardizer.fit(features)
    return Mixture(fit_gate(signals, standardizer.standardize(features), target, task), standardizer)


def fit_gate(signals: Signals, features: np.ndarray | None, target: np.ndarray, task: str) -> Gate:
    """Mixture-of-experts weights per row, minimising log loss (or squared error) with L-BFGS.

    `target` holds class indices for classification. Starts from equal weights,
    so a gate that learns nothing is the plain mean.
    """
    from scipy.optimize import minimize  # only trained mixtures pay for scipy

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
