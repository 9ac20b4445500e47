"""`--fusion mean`: the sources' probabilities (or predictions) averaged with one weight per source.

Rules: with labelled rows the weights are fitted (softmax of one logit per source,
log loss or squared error, see `mixture`); without data every source weighs the
same. Sources must all predict the target's task.
"""

from __future__ import annotations

import numpy as np

from onnxfuse.heads.base import Fusion, LabelSpace, learner_target
from onnxfuse.heads.mixture import Mixture, equal_weights, fixed_weights
from onnxfuse.signals import Signals


class Mean(Fusion):
    name = "mean"
    trains = False

    def fit(self, signals: Signals, features, target: np.ndarray, space: LabelSpace, spec) -> Mixture:
        return fixed_weights(signals, learner_target(target, space), space)

    def untrained(self, count: int, space: LabelSpace) -> Mixture:
        return equal_weights(count, space)
