"""`--fusion gate`: a learned gate, per-row softmax weights over the sources computed from the raw features.

Rules: the gate reads the features standardised (NaN read as the column mean),
as the file does; sources must all predict the target's task; it needs column
features and labelled rows. See `mixture` for the fit.
"""

from __future__ import annotations

import numpy as np

from onnxfuse.heads.base import Fusion, LabelSpace, learner_target
from onnxfuse.heads.mixture import Mixture, gated
from onnxfuse.signals import Signals


class LearnedGate(Fusion):
    name = "gate"
    trains = True
    options = ("passthrough",)  # accepted: the gate reads the raw features with or without it

    def needs_features(self, spec) -> bool:
        return True

    def fit(self, signals: Signals, features: np.ndarray, target: np.ndarray, space: LabelSpace, spec) -> Mixture:
        return gated(signals, features, learner_target(target, space), space)
