"""`--meta auto` (the default): the stacking head chosen among candidates by cross-validation, as a super learner.

Rules: the candidates are each source alone (one that predicts the target), the
fitted mean and the gate (when every source predicts the target; the gate also
needs column features), and the linear, MLP and boosting learners on the
sources' signals, without and — where column features exist and there are at
least PASSTHROUGH_ROWS rows per column — with the raw features (`--passthrough`
keeps only the heads that read them). Every candidate is scored on the same
seeded folds of the rows it is given by mean log loss (squared error), each
learner at its own best setting; the lowest wins, the earlier on ties (simpler
heads come first). A source alone is a candidate, so the choice is, up to noise,
never worse than the best source (a one-standard-error rule that preferred simpler
heads chose worse on the real tables of benchmarks/fusion_quality.py: breast_cancer
0.917 vs 0.927, natural_scales 0.735 vs 0.748, diabetes R² 0.489 vs 0.500).
The choice and every candidate's mean loss go to the metadata.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from onnxfuse import progress
from onnxfuse.heads.base import Head, LabelSpace, Standardizer
from onnxfuse.heads.learners import Folds, fit_learner, fold_loss, folds, tune
from onnxfuse.heads.mixture import fixed_weights, gated, weighted_sum
from onnxfuse.heads.stack import Stacked, learner_target, meta_matrix
from onnxfuse.signals import Signals

FAMILIES = ("linear", "mlp", "gbdt")
PASSTHROUGH_ROWS = 10


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A head auto may choose: its mean loss over folds, and its fit on all the rows."""

    name: str
    score: Callable[[Folds], np.ndarray]  # the loss on each fold
    fit: Callable[[], Head]


@dataclasses.dataclass(frozen=True)
class Chosen:
    """The winning candidate (a `Head`), with the scores it was chosen by."""

    head: Head
    name: str
    scores: dict[str, float]
    metric: str
    folds: int

    @property
    def uses_features(self) -> bool:
        return self.head.uses_features

    def predict(self, signals: Signals, features: np.ndarray | None) -> np.ndarray:
        return self.head.predict(signals, features)

    def refit(self, signals: Signals, features, target: np.ndarray, space: LabelSpace) -> Chosen:
        return dataclasses.replace(self, head=self.head.refit(signals, features, target, space))

    def build(self, model: ir.Model, signals: Sequence[ir.Value], space: LabelSpace, versions) -> dict:
        return self.head.build(model, signals, space, versions)

    def metadata(self) -> dict:
        chosen = {"chosen": self.name, **self.head.metadata(), "meta": "auto"}
        scores = {name: round(score, 6) for name, score in self.scores.items()}
        return {**chosen, "candidates": scores, "cv": {"folds": self.folds, "metric": self.metric}}


@dataclasses.dataclass(frozen=True)
class Alone:
    """One source's own probabilities (or prediction), as the fused output: the weighted sum with weight 1 on it
    and 0 on the others, so the file still computes (and `verify` still checks) every source."""

    index: int

    @property
    def uses_features(self) -> bool:
        return False

    def predict(self, signals: Signals, features: np.ndarray | None) -> np.ndarray:
        signal = signals.per_model[self.index].astype(np.float64)
        return signal if signals.probabilities[self.index] else signal[:, 0]

    def refit(self, signals: Signals, features, target: np.ndarray, space: LabelSpace) -> Alone:
        return self

    def build(self, model: ir.Model, signals: Sequence[ir.Value], space: LabelSpace, versions) -> dict:
        weights = np.eye(len(signals), dtype=np.float32)[self.index]
        mixed = weighted_sum(model.graph, signals, weights, space)
        return {"probabilities": mixed} if space.task == "classification" else {"prediction": mixed}

    def metadata(self) -> dict:
        return {"source": self.index + 1}


def choose(signals: Signals, features: np.ndarray | None, target: np.ndarray, space: LabelSpace, spec) -> Chosen:
    """The candidate with the lowest cross-validated loss, fitted on all the rows given."""
    y = learner_target(target, space)
    splits = folds(y, space.task, seed=spec.seed)
    candidates = _candidates(signals, features, y, space, spec)
    metric = "log_loss" if space.task == "classification" else "squared_error"
    if not splits:  # too few rows to cross-validate: the first linear stack (with the features if asked), unscored
        linear = next(c for c in candidates if c.name.startswith("linear"))
        return Chosen(linear.fit(), linear.name, {}, metric, 0)
    per_fold = {}
    for number, candidate in enumerate(candidates, start=1):
        progress.stage(f"cross-validating head {number}/{len(candidates)}: {candidate.name}")
        per_fold[candidate.name] = np.asarray(candidate.score(splits), dtype=np.float64)
    scores = {name: float(np.mean(losses)) for name, losses in per_fold.items()}
    best = min(candidates, key=lambda c: scores[c.name])
    progress.stage(f"fitting the chosen head: {best.name}")
    return Chosen(best.fit(), best.name, scores, metric, len(splits))


def _candidates(signals: Signals, features, y: np.ndarray, space: LabelSpace, spec) -> list[Candidate]:
    task = space.task
    predicting = [_predicts_target(signals, m, task) for m in range(len(signals.per_model))]
    candidates = [] if spec.passthrough else [_alone(signals, m, y, task) for m, ok in enumerate(predicting) if ok]
    if all(predicting) and not spec.passthrough:
        candidates.append(_mixture("mean", lambda s, f, t: fixed_weights(s, t, task), signals, features, y, task))
    if all(predicting) and features is not None:
        candidates.append(_mixture("gate", lambda s, f, t: gated(s, f, t, task), signals, features, y, task))
    readings = [] if spec.passthrough else [False]
    width = sum(len(c) for c in signals.meta_columns) + (0 if features is None else features.shape[1])
    if features is not None and (spec.passthrough or len(y) >= PASSTHROUGH_ROWS * width):
        readings.append(True)  # asked for with --passthrough: fitted however few the rows (the report warns)
    for passthrough in readings:
        for family in FAMILIES:
            candidates.append(_learner(family, passthrough, signals, features, y, space, spec.seed))
    if not readings:  # --passthrough without column features is refused before; a linear stack to fall back on
        candidates.append(_learner("linear", False, signals, features, y, space, spec.seed))
    return candidates


def _predicts_target(signals: Signals, m: int, task: str) -> bool:
    """A classifier of the target's classes, or a regressor of a regression target."""
    probability = signals.probabilities[m]
    return probability if task == "classification" else not probability and signals.per_model[m].shape[1] == 1


def _alone(signals: Signals, m: int, y: np.ndarray, task: str) -> Candidate:
    head = Alone(m)
    predicted = head.predict(signals, None)

    def score(splits: Folds) -> np.ndarray:
        return np.array([fold_loss(task, y[held], predicted[held]) for _, held in splits])

    return Candidate(f"m{m + 1} alone", score, lambda: head)


def _mixture(name: str, fit: Callable, signals: Signals, features, y: np.ndarray, task: str) -> Candidate:
    def score(splits: Folds) -> np.ndarray:
        losses = []
        for train, held in splits:
            head = fit(signals.take(train), None if features is None else features[train], y[train])
            predicted = head.predict(signals.take(held), None if features is None else features[held])
            losses.append(fold_loss(task, y[held], predicted))
        return np.array(losses)

    return Candidate(name, score, lambda: fit(signals, features, y))


def _learner(family: str, passthrough: bool, signals: Signals, features, y: np.ndarray, space: LabelSpace,
             seed: int) -> Candidate:  # fmt: skip
    x = meta_matrix(signals, features if passthrough else None)
    standardizer = Standardizer.fit(x)
    scaled = standardizer.standardize(x)
    count = len(space.classes) if space.classes is not None else None
    chosen: dict = {}

    def score(splits: Folds) -> np.ndarray:
        tuned = tune(family, space.task, scaled, y, splits, seed=seed, classes=count)
        chosen["params"] = tuned.params
        return np.array(tuned.per_fold)

    def fit() -> Head:
        params = chosen.get("params") or tune(family, space.task, scaled, y, [], seed=seed, classes=count).params
        learner = fit_learner(family, space.task, scaled, y, params, seed=seed, classes=count)
        return Stacked(learner, signals.meta_columns, signals.probabilities, standardizer, passthrough, seed)

    return Candidate(f"{family}{' + passthrough' if passthrough else ''}", score, fit)
