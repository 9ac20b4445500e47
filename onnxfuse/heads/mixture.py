"""A softmax-weighted mixture of the sources' signals: what `mean`, `vote` and `gate` fit and write.

Rules: the weights are `softmax(standardize(x) @ W + b)` per row, with `W` empty
(fixed weights) for mean and vote, taken over the sources available on the row
only (an unavailable source's logit is BLOCKED, its signal read as 0), so fixed
weights are renormalised over the available sources; a row with none gets the
prior. They are fitted in float64 with L-BFGS on the log loss of the mixed
probabilities (squared error for regression), starting from equal weights, so a
mixture that learns nothing is the plain mean.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxfuse.heads.base import (
    HeadInputs,
    LabelSpace,
    Standardizer,
    graph_with_prior,
    learner_target,
    standardized,
    target_prior,
    untrained_prior,
    with_prior,
)
from onnxfuse.signals import Signals
from onnxfuse.support import add_constant, add_node, reduce_sum, unsqueeze

GATE_L2 = 1e-3
BLOCKED = -1e30  # the logit of an unavailable source: its weight is exp(-1e30 - max) = 0 in float32 and float64


@dataclasses.dataclass(frozen=True)
class Gate:
    """Softmax gate `g = softmax(x @ W + b)` over sources; W is empty for fixed weights."""

    weights: np.ndarray  # [F, M]
    bias: np.ndarray  # [M]

    def logits(self, features: np.ndarray | None, rows: int) -> np.ndarray:
        if features is None:
            return np.broadcast_to(self.bias.astype(np.float64), (rows, len(self.bias)))
        return features @ self.weights + self.bias

    def mix(self, features: np.ndarray | None, usable: np.ndarray) -> np.ndarray:
        """`[N, M]` weights over the `usable` sources of each row (0 elsewhere; all 0 on a row with none)."""
        return masked_softmax(self.logits(features, len(usable)), usable)


def masked_softmax(logits: np.ndarray, usable: np.ndarray) -> np.ndarray:
    logits = np.where(usable, logits, BLOCKED)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True) * usable


@dataclasses.dataclass(frozen=True)
class Mixture:
    """A fitted mixture (a `Head`): the gate reads the standardised raw features when `standardizer` is set;
    `prior` is what a row with no source available gets."""

    gate: Gate
    prior: np.ndarray
    standardizer: Standardizer | None = None

    @property
    def uses_features(self) -> bool:
        return self.standardizer is not None

    def fixed_weights(self) -> np.ndarray:
        weights = np.exp(self.gate.bias - self.gate.bias.max())
        return (weights / weights.sum()).astype(np.float32)

    def weights(self, signals: Signals, features: np.ndarray | None) -> np.ndarray:
        """`[N, M]` per-row weights, as the file's `weights` output."""
        scaled = self.standardizer.standardize(features) if self.standardizer is not None else None
        return self.gate.mix(scaled, signals.mask)

    def predict(self, signals: Signals, features: np.ndarray | None) -> np.ndarray:
        usable = signals.mask
        weights = self.weights(signals, features)
        mixed = sum(weights[:, [m]] * np.where(usable[:, [m]], s, 0.0) for m, s in enumerate(signals.per_model))
        return with_prior(mixed[:, 0] if mixed.shape[1] == 1 else mixed, usable, self.prior)

    def refit(self, signals: Signals, features: np.ndarray | None, target: np.ndarray, space: LabelSpace) -> Mixture:
        """The same kind of mixture (per-row gate or fixed weights) fitted on other rows."""
        y = learner_target(target, space)
        return gated(signals, features, y, space) if self.uses_features else fixed_weights(signals, y, space)

    def build(self, model: ir.Model, inputs: HeadInputs, space: LabelSpace, versions) -> dict:
        graph, signals = model.graph, inputs.signals
        logits = self._graph_logits(graph, inputs)
        if space.task == "classification":
            columns = [unsqueeze(graph, s, [1], f"mix/m{m + 1}") for m, s in enumerate(signals)]
            experts = add_node(graph, "Concat", columns, {"axis": 1}, "mix/experts")  # [N, M, C]
        else:
            experts = add_node(graph, "Concat", list(signals), {"axis": 1}, "mix/experts")  # [N, M]
        usable = inputs.available
        if usable is not None:
            logits = add_node(graph, "Where", [usable, logits, _constant(graph, "mix/blocked", BLOCKED)], {},
                              "mix/available_logits")  # fmt: skip
        weights = add_node(graph, "Softmax", [logits], {"axis": 1}, "mix/weights_softmax")
        if usable is not None:
            weights = add_node(graph, "Mul", [weights, add_node(graph, "Cast", [usable], {"to": ir.DataType.FLOAT},
                                                                "mix/usable_float")], {}, "mix/weights")  # fmt: skip
        spread, gone = weights, usable
        if space.task == "classification":
            spread = unsqueeze(graph, weights, [2], "mix/weights_column")
            if usable is not None:
                gone = unsqueeze(graph, usable, [2], "mix/usable_column")
        if usable is not None:  # an unavailable expert's NaN must not reach the sum (NaN * 0 is NaN)
            experts = add_node(graph, "Where", [gone, experts, _constant(graph, "mix/zero", 0.0)], {},
                               "mix/available_experts")  # fmt: skip
        product = add_node(graph, "Mul", [experts, spread], {}, "mix/weighted")
        mixed = reduce_sum(graph, product, [1], keepdims=False, name="mix/mixed")
        if usable is not None:
            mixed = graph_with_prior(graph, mixed, usable, self.prior, "mix/prior")
        key = "probabilities" if space.task == "classification" else "prediction"
        return {key: mixed, "weights": weights}

    def metadata(self) -> dict:
        if self.uses_features:
            return {}
        return {"weights": [round(float(w), 6) for w in self.fixed_weights()]}

    def _graph_logits(self, graph: ir.Graph, inputs: HeadInputs) -> ir.Value:
        """`[N, M]` gate logits, or the `[1, M]` fixed ones (broadcast by what reads them)."""
        bias = add_constant(graph, "mix/bias", self.gate.bias.astype(np.float32).reshape(1, -1))
        if not self.uses_features:
            return bias
        assert inputs.features is not None and self.standardizer is not None
        features = standardized(graph, inputs.features, self.standardizer, "gate/features")
        scores = add_node(graph, "MatMul", [features, add_constant(graph, "gate/weights", self.gate.weights)], {},
                          "gate/scores")  # fmt: skip
        return add_node(graph, "Add", [scores, bias], {}, "gate/logits")


def _constant(graph: ir.Graph, name: str, value: float) -> ir.Value:
    return add_constant(graph, name, np.array(value, dtype=np.float32))


def equal_weights(count: int, space: LabelSpace) -> Mixture:
    """Every source weighs the same (mean / vote without data)."""
    return Mixture(Gate(np.zeros((0, count), np.float32), np.zeros(count, np.float32)), untrained_prior(space))


def fixed_weights(signals: Signals, y: np.ndarray, space: LabelSpace) -> Mixture:
    """One weight per source for all rows (`y`: class indices, or the regression target)."""
    gate = fit_gate(signals, None, y, space.task)
    return Mixture(Gate(np.zeros((0, len(gate.bias)), np.float32), gate.bias), target_prior(y, space))


def gated(signals: Signals, features: np.ndarray, y: np.ndarray, space: LabelSpace) -> Mixture:
    """Per-row weights from the standardised raw features."""
    standardizer = Standardizer.fit(features)
    gate = fit_gate(signals, standardizer.standardize(features), y, space.task)
    return Mixture(gate, target_prior(y, space), standardizer)


def fit_gate(signals: Signals, features: np.ndarray | None, target: np.ndarray, task: str) -> Gate:
    """Mixture-of-experts weights per row, minimising log loss (or squared error) with L-BFGS.

    `target` holds class indices for classification. Each row mixes the sources
    available on it; rows with none are left out. Starts from equal weights, so a
    gate that learns nothing is the plain mean.
    """
    from scipy.optimize import minimize  # only trained mixtures pay for scipy

    count = len(signals.per_model)
    rows = signals.mask.any(axis=1)
    usable, target = signals.mask[rows], np.asarray(target)[rows]
    width = 0 if features is None else features.shape[1]
    stacked = np.stack([s[rows] for s in signals.per_model], axis=1).astype(np.float64)  # [N, M, K]
    # [N, M]: each source's P(true class), or its prediction (0 where it is unavailable)
    truth = stacked[np.arange(len(target)), :, target] if task == "classification" else stacked[:, :, 0]
    truth = np.where(usable, truth, 0.0)
    scale = 1.0 if task == "classification" else max(float(np.var(target)), 1e-12)
    x = np.zeros((len(target), 0)) if features is None else features[rows].astype(np.float64)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: width * count].reshape(width, count), theta[width * count :]
        gate = Gate(w, b).mix(x if width else None, usable)
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
