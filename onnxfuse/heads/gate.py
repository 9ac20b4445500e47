"""`--fusion gate`: a learned gate, per-row softmax weights over the sources computed from the raw features.

Rules: the gate is fitted on standardised features (NaN read as the column
mean) and folded back onto the imputed raw features, so the file computes
`softmax(impute(x) @ W + b)` without a scaling step; sources must all predict the
target's task; it needs column features and labelled rows.
"""

from __future__ import annotations

import numpy as np

from onnxfuse.heads.base import Fusion, LabelSpace, Standardizer, class_indices
from onnxfuse.heads.mixture import Gate, Mixture, fit_gate
from onnxfuse.signals import Signals


class LearnedGate(Fusion):
    name = "gate"
    trains = True
    options = ("passthrough",)  # accepted: the gate reads the raw features with or without it

    def needs_features(self, spec) -> bool:
        return True

    def fit(self, signals: Signals, features: np.ndarray, target: np.ndarray, space: LabelSpace, spec) -> Mixture:
        standardizer = Standardizer.fit(features)
        indices = class_indices(target, space.classes) if space.task == "classification" else target
        gate = fit_gate(signals, standardizer.standardize(features), indices, space.task)
        return Mixture(_on_raw_features(gate, standardizer), standardizer)


def _on_raw_features(gate: Gate, standardizer: Standardizer) -> Gate:
    """The same gate on imputed raw features: `W / scale`, `b - (mean / scale) @ W`."""
    weights = gate.weights / standardizer.scale[:, None]
    bias = gate.bias - (standardizer.mean / standardizer.scale) @ gate.weights
    return Gate(weights.astype(np.float32), bias.astype(np.float32))
