"""`--meta auto` (the default): the stacking head chosen among candidates by cross-validation, as a super learner.

Rules: the candidates are each source alone (it answers where it is available,
else the mean of the other available sources), the fitted mean and the gate (all
three when every source predicts the target; the gate also needs column features),
and the linear, MLP and boosting learners on the
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
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxfuse import progress
from onnxfuse.heads.base import Head, HeadInputs, LabelSpace, learner_target, target_prior
from onnxfuse.heads.learners import Folds, fit_learner, fold_loss, folds, tune
from onnxfuse.heads.mixture import Gate, Mixture, fixed_weights, gated
from onnxfuse.heads.stack import StackRows
from onnxfuse.signals import Signals

FAMILIES = ("linear", "mlp", "gbdt")
PASSTHROUGH_ROWS = 10
ALONE_GAP = 30.0  # the other sources' logit below the chosen one: weight e^-30 while it is available


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

    def build(self, model: ir.Model, inputs: HeadInputs, space: LabelSpace, versions) -> dict:
        return self.head.build(model, inputs, space, versions)

    def metadata(self) -> dict:
        chosen = {"chosen": self.name, **self.head.metadata(), "meta": "auto"}
        scores = {name: round(score, 6) for name, score in self.scores.items()}
        return {**chosen, "candidates": scores, "cv": {"folds": self.folds, "metric": self.metric}}


@dataclasses.dataclass(frozen=True)
class Alone:
    """One source's own probabilities (or prediction), as the fused output where it is available; elsewhere the
    mean of the other available sources. A mixture whose other sources are ALONE_GAP below it, so the file still
    computes (and `verify` still checks) every source."""

    index: int
    mixture: Mixture

    @classmethod
    def of(cls, index: int, y: np.ndarray, space: LabelSpace, count: int) -> Alone:
        bias = np.where(np.arange(count) == index, 0.0, -ALONE_GAP).astype(np.float32)
        return cls(index, Mixture(Gate(np.zeros((0, count), np.float32), bias), target_prior(y, space)))

    @property
    def uses_features(self) -> bool:
        return False

    def predict(self, signals: Signals, features: np.ndarray | None) -> np.ndarray:
        return self.mixture.predict(signals, None)

    def refit(self, signals: Signals, features, target: np.ndarray, space: LabelSpace) -> Alone:
        return Alone.of(self.index, learner_target(target, space), space, len(signals.per_model))

    def build(self, model: ir.Model, inputs: HeadInputs, space: LabelSpace, versions) -> dict:
        return self.mixture.build(model, inputs, space, versions)

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
    task, count = space.task, len(signals.per_model)
    mixable = all(_predicts_target(signals, m, task) for m in range(count))
    candidates = [_alone(signals, m, y, space) for m in range(count)] if mixable and not spec.passthrough else []
    if mixable and not spec.passthrough:
        candidates.append(_mixture("mean", lambda s, f, t: fixed_weights(s, t, space), signals, features, y, task))
    if mixable and features is not None:
        candidates.append(_mixture("gate", lambda s, f, t: gated(s, f, t, space), signals, features, y, task))
    readings = [] if spec.passthrough else [False]
    width = sum(len(c) for c in signals.meta_columns) + (0 if features is None else features.shape[1])
    if features is not None and (spec.passthrough or len(y) >= PASSTHROUGH_ROWS * width):
        readings.append(True)  # asked for with --passthrough: fitted however few the rows (the report warns)
    rows = _SharedRows(signals, features, y, seed=spec.seed, dropout=spec.availability)
    for passthrough in readings:
        for family in FAMILIES:
            candidates.append(_learner(family, passthrough, rows, space, spec))
    if not readings:  # --passthrough without column features is refused before; a linear stack to fall back on
        candidates.append(_learner("linear", False, rows, space, spec))
    return candidates


class _SharedRows:
    """The learners' `StackRows`, built when first asked for and shared by the families that read the same
    columns; only the last one asked for is kept (candidates are scored reading by reading), so a million-row
    sample holds one standardised meta-matrix, not one per candidate. Rebuilt rows are the same bits."""

    def __init__(self, signals: Signals, features, y: np.ndarray, *, seed: int, dropout: bool) -> None:
        self.signals, self.features, self.y, self.seed, self.dropout = signals, features, y, seed, dropout
        self.kept: tuple[bool, StackRows] | None = None

    def get(self, passthrough: bool) -> StackRows:
        if self.kept is None or self.kept[0] != passthrough:
            self.kept = None  # released before the next is built
            features = self.features if passthrough else None
            self.kept = passthrough, StackRows.of(self.signals, features, self.y, seed=self.seed, dropout=self.dropout)
        return self.kept[1]


def _predicts_target(signals: Signals, m: int, task: str) -> bool:
    """A classifier of the target's classes, or a regressor of a regression target."""
    probability = signals.probabilities[m]
    return probability if task == "classification" else not probability and signals.per_model[m].shape[1] == 1


def _alone(signals: Signals, m: int, y: np.ndarray, space: LabelSpace) -> Candidate:
    head = Alone.of(m, y, space, len(signals.per_model))

    def score(splits: Folds) -> np.ndarray:
        losses = []
        for train, held in splits:  # the prior (of rows no source speaks for) from the training rows
            fold = Alone.of(m, y[train], space, len(signals.per_model))
            losses.append(fold_loss(space.task, y[held], fold.predict(signals.take(held), None)))
        return np.array(losses)

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


def _learner(family: str, passthrough: bool, shared: _SharedRows, space: LabelSpace, spec) -> Candidate:
    seed = spec.seed
    count = len(space.classes) if space.classes is not None else None
    chosen: dict = {}

    def score(splits: Folds) -> np.ndarray:
        rows = shared.get(passthrough)
        tuned = tune(family, space.task, rows.scaled, rows.y, rows.folds(splits), seed=seed, classes=count)
        chosen["params"] = tuned.params
        return np.array(tuned.per_fold)

    def fit() -> Head:
        rows = shared.get(passthrough)
        params = chosen.get("params") or tune(family, space.task, rows.scaled, rows.y, [], seed=seed,
                                              classes=count).params  # fmt: skip
        learner = fit_learner(family, space.task, rows.scaled, rows.y, params, seed=seed, classes=count)
        return rows.head(learner, space, passthrough, seed)

    return Candidate(f"{family}{' + passthrough' if passthrough else ''}", score, fit)
