"""Fit the chosen head on the training rows, report it on the hold-out (with its caveats), then refit it on all rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from onnxfuse import progress
from onnxfuse.availability import masked_features, pattern_counts, pattern_name, report_patterns
from onnxfuse.caveats import caveats
from onnxfuse.errors import OnnxfuseError
from onnxfuse.evaluation import FUSED, Evaluation
from onnxfuse.feeds import Labelled, split_rows
from onnxfuse.heads.base import Fusion, Head, LabelSpace, Standardizer, learner_target, target_prior, with_prior
from onnxfuse.heads.learners import fit_learner, folds, tune
from onnxfuse.report import metrics
from onnxfuse.signals import Signals
from onnxfuse.spec import FuseSpec

PATTERN_ROWS = 2  # fewer hold-out rows of a pattern are counted, not scored


def train_head(
    fusion: Fusion,
    signals: Signals,
    head_signals: Signals,
    labelled: Labelled,
    spec: FuseSpec,
    *,
    names: Sequence[tuple[str, str | None]],
    stream: Callable[[Scorers], dict] | None = None,
) -> tuple[Head, dict, Evaluation | None]:
    """Fit, report on the seeded (stratified) hold-out against every source and a
    from-scratch baseline of the same family on the raw features, then refit on all
    rows (the head chosen and tuned on the training part: `Fusion.refit`).

    `head_signals` are what the head reads (the sources' votes for a voting head),
    `signals` their probabilities, which the report scores each source by; both say
    which sources are available on each row (`availability`). Rows with no source
    available, or a feature infinite (NaN features are read as the column mean),
    cannot train a head: they are left out and counted in the report, beside the
    rows of each availability pattern. In the hold-out table a source alone answers
    the prior where it is unavailable; `patterns` scores the head on the hold-out
    rows masked to each pattern (`_pattern_metrics`). `names` name each source and say how its signal
    predicts the target, for metrics of its own: "signal" (a classifier of a
    classification target, a regressor of a regression one), "softmax" (unlabeled
    scores, one per class: read through a softmax), or None (not comparable). What
    the figures say a user should know is warned of and listed (`caveats`). The hold-out answers themselves come
    back as an `Evaluation` (None without hold-out rows), for the HTML report and Python users.

    `stream` (data beyond the fit sample, see `holdout`): the hold-out table is measured over every hold-out row
    of the data by `stream(scorers)`, which returns its `metrics` and row counts; the baseline's figures, the
    per-pattern table and the `Evaluation` stay on the sample's hold-out rows.
    """
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    with threadpool_limits(limits=1, user_api="blas"):  # the heads' matrices are small: threads only wait
        return _train_head(fusion, signals, head_signals, labelled, spec, names, stream)


def _train_head(fusion, signals, head_signals, labelled: Labelled, spec: FuseSpec, names, stream):
    features = labelled.feeds.get("features")
    if features is None and fusion.needs_features(spec):
        flags = f"--fusion {fusion.name}{' --passthrough' if spec.passthrough else ''}"
        raise OnnxfuseError(f"{flags} needs column features")
    usable = usable_rows(signals, features, availability=spec.availability)
    skipped = int(labelled.rows - usable.sum())
    if usable.sum() < 2:
        needed = "some source is available" if spec.availability else "every source output"
        raise OnnxfuseError(f"column '{spec.target}': fewer than 2 rows where {needed} and every feature is finite")
    all_signals = signals
    labelled, signals, head_signals = labelled.take(usable), signals.take(usable), head_signals.take(usable)
    features = labelled.feeds.get("features")
    space = LabelSpace(labelled.task, labelled.classes)
    train, held = split_rows(labelled, spec.holdout, seed=spec.seed, target=spec.target)
    report = {
        "task": labelled.task, "method": fusion.name, "seed": spec.seed, "holdout": spec.holdout,
        "meta": spec.meta if "meta" in fusion.options else None, "passthrough": spec.passthrough,
        "rows": {"train": len(train), "holdout": len(held), "skipped_not_finite": skipped}, "metrics": {},
    }  # fmt: skip
    if spec.availability:
        report["rows"]["patterns"] = pattern_counts(all_signals.mask)
    if not len(held):
        head = fusion.fit(head_signals, features, labelled.target, space, spec)
        return head, {**report, "warnings": caveats(report, head.metadata(), spec)}, None
    fitted = fusion.fit(head_signals.take(train), _rows(features, train), labelled.target[train], space, spec)
    scorers = _scorers(fusion, fitted, features, labelled, train, spec)
    outputs = answers(scorers, signals.take(held), head_signals.take(held), _rows(features, held), names, space)
    truth = labelled.target[held]
    report["metrics"] = {name: metrics(labelled.task, truth, outputs[name], labelled.classes) if name in outputs
                         else {} for name in (*(n for n, _ in names), *outputs)}  # fmt: skip
    if stream is not None:  # the baseline, not streamed, keeps its figures on the sample's hold-out rows
        streamed = stream(scorers)
        baseline = None if scorers.baseline is None else scorers.baseline.name
        report["metrics"] = {name: figures if name == baseline else streamed["metrics"].get(name, {})
                             for name, figures in report["metrics"].items()}  # fmt: skip
        report["rows"] = {**report["rows"], "sample_holdout": len(held), **streamed["rows"]}
        if baseline in report["metrics"]:
            report["rows"]["baseline_rows"] = len(held)
    if spec.availability:  # the head's own predict on the sample's hold-out rows, once per pattern: a stage of its own
        progress.stage(f"measuring the head per availability pattern on {len(held):,} hold-out rows")
        report["patterns"] = _pattern_metrics(fitted, signals, head_signals, features, labelled, train, held, names)
    progress.stage("fitting the head on all rows")
    head = fusion.refit(fitted, head_signals, features, labelled.target, space, spec)
    report = {**report, "warnings": caveats(report, fitted.metadata(), spec)}
    evaluation = Evaluation(labelled.task, labelled.classes, truth, outputs, tuple(n for n, _ in names), report,
                            **_explained(fitted, head_signals.take(held), _rows(features, held), spec))  # fmt: skip
    return head, report, evaluation


def _explained(fitted: Head, signals: Signals, features: np.ndarray | None, spec: FuseSpec) -> dict:
    """What `--explain` outputs, on the hold-out rows, as the head fitted on the training part gives them."""
    from onnxfuse.explain import numpy_effects
    from onnxfuse.heads.mixture import Mixture

    if not spec.availability:
        return {}
    weights = fitted.weights(signals, features) if isinstance(fitted, Mixture) else None
    return {"available": signals.mask, "effects": numpy_effects(fitted, signals, features), "weights": weights}


def usable_rows(signals: Signals, features: np.ndarray | None, *, availability: bool) -> np.ndarray:
    """Rows a head can answer: some source available (without availability: every output finite), and no
    feature infinite."""
    if availability:
        usable = signals.mask.any(axis=1)
    else:
        usable = np.logical_and.reduce([np.isfinite(s).all(axis=1) for s in signals.per_model])
    if features is not None:
        usable &= ~np.isinf(features).any(axis=1)
    return usable


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The from-scratch model on the raw features, as fitted on the training part."""

    family: str
    standardizer: Standardizer
    learner: object

    @property
    def name(self) -> str:
        return f"baseline ({self.family} on raw features)"

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.learner.predict(self.standardizer.standardize(features)))


@dataclasses.dataclass(frozen=True)
class Scorers:
    """What answers a hold-out row: the head fitted on the training part, the prior a missing source answers,
    the baseline (None without features). Picklable: a Ray worker scores its rows with it."""

    fitted: Head
    prior: np.ndarray
    baseline: Baseline | None


def _scorers(fusion, fitted: Head, features, labelled: Labelled, train, spec: FuseSpec) -> Scorers:
    space = LabelSpace(labelled.task, labelled.classes)
    prior = target_prior(learner_target(labelled.target[train], space), space)
    baseline = None
    if features is not None:
        baseline = _baseline(fusion.baseline_family(spec), features[train], labelled.target[train], space, spec)
    return Scorers(fitted, prior, baseline)


def answers(scorers: Scorers, signals: Signals, head_signals: Signals, features: np.ndarray | None,
            names: Sequence[tuple[str, str | None]], space: LabelSpace, *,
            fused: np.ndarray | None = None, baseline: bool = True) -> dict[str, np.ndarray]:  # fmt: skip
    """Each comparable source alone (the prior where it is unavailable), the fused head (`fused` when the graph
    computed it already) and the baseline (unless told not to), on the same rows."""
    outputs = {}
    for m, ((name, reading), signal) in enumerate(zip(names, signals.per_model)):
        if reading:
            outputs[name] = with_prior(alone(signal, reading, space.task), signals.mask[:, [m]], scorers.prior)
    outputs[FUSED] = np.asarray(scorers.fitted.predict(head_signals, features) if fused is None else fused)
    if baseline and scorers.baseline is not None and features is not None:
        outputs[scorers.baseline.name] = scorers.baseline.predict(features)
    return outputs


def _pattern_metrics(fitted: Head, signals: Signals, head_signals: Signals, features, labelled: Labelled, train,
                     held, names) -> dict:  # fmt: skip
    """Per availability pattern (`availability.report_patterns`): on the hold-out rows where every source of the
    pattern is available, the head with the others masked (their columns NaN too) next to each of those sources
    alone."""
    task, classes = labelled.task, labelled.classes
    table = {}
    for pattern in report_patterns(len(signals.per_model)):
        rows = held[signals.mask[held][:, pattern].all(axis=1)]
        entry: dict = {"rows": len(rows), "metrics": {}}
        table[pattern_name(pattern)] = entry
        if len(rows) < PATTERN_ROWS:
            continue
        truth = labelled.target[rows]
        for m in np.flatnonzero(pattern):
            name, reading = names[m]
            if reading:
                own = alone(signals.per_model[m][rows], reading, task)
                entry["metrics"][name] = metrics(task, truth, own, classes)
        keep = np.broadcast_to(pattern, (len(rows), len(pattern)))
        masked = masked_features(_rows(features, rows), signals.feature_columns or (), keep)
        fused = fitted.predict(head_signals.take(rows).masked(pattern), masked)
        entry["metrics"]["fused"] = metrics(task, truth, fused, classes)
    return table


def alone(signal: np.ndarray, reading: str | None, task: str) -> np.ndarray:
    """A source's own prediction of the target from its signal (see `train_head` for `reading`)."""
    own = signal if task == "classification" else signal[:, 0]
    return _softmax(own) if reading == "softmax" else own


def _baseline(family: str, features: np.ndarray, target: np.ndarray, space: LabelSpace, spec: FuseSpec) -> Baseline:
    """A model from scratch on the training part's raw features (standardised, float64, tuned by cross-validation);
    for `auto`, the better of linear and gbdt by the same cross-validation."""
    progress.stage("fitting the from-scratch baseline")
    standardizer = Standardizer.fit(features)
    x, y = standardizer.standardize(features), learner_target(target, space)
    splits = folds(y, space.task, seed=spec.seed)
    count = len(space.classes) if space.classes is not None else None
    families = ("linear", "gbdt") if family == "auto" else (family,)
    tuned = [tune(f, space.task, x, y, splits, seed=spec.seed, classes=count) for f in families]
    best = min(tuned, key=lambda t: t.loss if t.loss is not None else 0.0)
    learner = fit_learner(best.family, space.task, x, y, best.params, seed=spec.seed, classes=count)
    return Baseline(best.family, standardizer, learner)


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.asarray(scores, dtype=np.float64) - np.max(scores, axis=1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)


def _rows(features: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if features is None else features[rows]
