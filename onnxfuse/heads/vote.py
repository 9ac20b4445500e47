"""`--fusion vote`: a weighted vote of the sources' labels; `probabilities` are the weighted vote shares.

Rules: each source votes for its own label (or, where it has none or the classes
are strings, its most probable class among the target's), one-hot; weights as
for `mean`, fitted on votes smoothed by VOTE_SMOOTHING so that a unanimous wrong
vote is not log 0. Classifiers only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxfuse.errors import OnnxfuseError
from onnxfuse.heads.base import Fusion, LabelSpace, learner_target
from onnxfuse.heads.mixture import Mixture, equal_weights, fixed_weights
from onnxfuse.roles import OutputRole
from onnxfuse.signals import Signals

VOTE_SMOOTHING = 0.01


class Vote(Fusion):
    name = "vote"
    trains = False
    votes = True

    def check_sources(self, roles: Sequence[OutputRole], task: str) -> None:
        if task == "regression":
            raise OnnxfuseError(
                "--fusion vote needs classifiers; the target is a regression target (use mean or stack)"
            )
        super().check_sources(roles, task)

    def fit(self, signals: Signals, features, target: np.ndarray, space: LabelSpace, spec) -> Mixture:
        smoothed = tuple((1 - VOTE_SMOOTHING) * s + VOTE_SMOOTHING / s.shape[1] for s in signals.per_model)
        votes = Signals(smoothed, signals.meta_columns, signals.probabilities, signals.available)
        return fixed_weights(votes, learner_target(target, space), space)

    def untrained(self, count: int, space: LabelSpace) -> Mixture:
        return equal_weights(count, space)
