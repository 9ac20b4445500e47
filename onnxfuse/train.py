"""Fit the chosen head on the training rows, report it on the hold-out (with its caveats), then refit it on all rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxfuse import progress
from onnxfuse.caveats import caveats
from onnxfuse.errors import OnnxfuseError
from onnxfuse.feeds import Labelled, split_rows
from onnxfuse.heads.base import Fusion, Head, LabelSpace, Standardizer
from onnxfuse.heads.learners import fit_learner, folds, tune
from onnxfuse.heads.stack import learner_target
from onnxfuse.report import metrics
from onnxfuse.signals import Signals
from onnxfuse.spec import FuseSpec


def train_head(
    fusion: Fusion,
    signals: Signals,
    head_signals: Signals,
    labelled: Labelled,
    spec: FuseSpec,
    *,
    names: Sequence[tuple[str, str | None]],
) -> tuple[Head, dict]:
    """Fit, report on the seeded (stratified) hold-out against every source and a
    from-scratch baseline of the same family on the raw features, then refit on all
    rows (the head chosen and tuned on the training part: `Fusion.refit`).

    `head_signals` are what the head reads (the sources' votes for a voting head),
    `signals` their probabilities, which the report scores each source by.
    Rows where a source output is NaN or infinite, or a feature infinite (NaN
    features are read as the column mean), cannot train a head: they are left out
    and counted in the report. `names` name each source and say how its signal
    predicts the target, for metrics of its own: "signal" (a classifier of a
    classification target, a regressor of a regression one), "softmax" (unlabeled
    scores, one per class: read through a softmax), or None (not comparable). What
    the figures say a user should know is warned of and listed (`caveats`).
    """
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    with threadpool_limits(limits=1, user_api="blas"):  # the heads' matrices are small: threads only wait
        return _train_head(fusion, signals, head_signals, labelled, spec, names)


def _train_head(fusion, signals, head_signals, labelled: Labelled, spec: FuseSpec, names) -> tuple[Head, dict]:
    features = labelled.feeds.get("features")
    if features is None and fusion.needs_features(spec):
        flags = f"--fusion {fusion.name}{' --passthrough' if spec.passthrough else ''}"
        raise OnnxfuseError(f"{flags} needs column features")
    usable = _usable_rows(signals, features)
    skipped = int(labelled.rows - usable.sum())
    if usable.sum() < 2:
        raise OnnxfuseError(
            f"column '{spec.target}': fewer than 2 rows where every source output and feature is finite"
        )
    labelled, signals, head_signals = labelled.take(usable), signals.take(usable), head_signals.take(usable)
    features = labelled.feeds.get("features")
    space = LabelSpace(labelled.task, labelled.classes)
    train, held = split_rows(labelled, spec.holdout, seed=spec.seed, target=spec.target)
    report = {
        "task": labelled.task, "method": fusion.name, "seed": spec.seed, "holdout": spec.holdout,
        "meta": spec.meta if "meta" in fusion.options else None, "passthrough": spec.passthrough,
        "rows": {"train": len(train), "holdout": len(held), "skipped_not_finite": skipped}, "metrics": {},
    }  # fmt: skip
    if not len(held):
        head = fusion.fit(head_signals, features, labelled.target, space, spec)
        return head, {**report, "warnings": caveats(report, head.metadata(), spec)}
    fitted = fusion.fit(head_signals.take(train), _rows(features, train), labelled.target[train], space, spec)
    fused = fitted.predict(head_signals.take(held), _rows(features, held))
    report["metrics"] = _holdout_metrics(fusion, fused, signals, features, labelled, train, held, names, spec)
    progress.stage("fitting the head on all rows")
    head = fusion.refit(fitted, head_signals, features, labelled.target, space, spec)
    return head, {**report, "warnings": caveats(report, fitted.metadata(), spec)}


def _usable_rows(signals: Signals, features: np.ndarray | None) -> np.ndarray:
    usable = np.logical_and.reduce([np.isfinite(s).all(axis=1) for s in signals.per_model])
    if features is not None:
        usable &= ~np.isinf(features).any(axis=1)
    return usable


def _holdout_metrics(fusion, fused, signals, features, labelled, train, held, names, spec) -> dict:
    task, classes, truth = labelled.task, labelled.classes, labelled.target[held]
    table = {}
    for (name, reading), signal in zip(names, signals.per_model):
        own = signal[held] if task == "classification" else signal[held, 0]
        own = _softmax(own) if reading == "softmax" else own
        table[name] = metrics(task, truth, own, classes) if reading else {}
    table["fused"] = metrics(task, truth, fused, classes)
    if features is not None:
        family, output = _baseline(fusion.baseline_family(spec), features, labelled, train, held, spec)
        table[f"baseline ({family} on raw features)"] = metrics(task, truth, output, classes)
    return table


def _baseline(family: str, features, labelled: Labelled, train, held, spec: FuseSpec) -> tuple[str, np.ndarray]:
    """A model from scratch on the training part's raw features (standardised, float64, tuned by cross-validation);
    for `auto`, the better of linear and gbdt by the same cross-validation."""
    progress.stage("fitting the from-scratch baseline")
    space = LabelSpace(labelled.task, labelled.classes)
    standardizer = Standardizer.fit(features[train])
    x, y = standardizer.standardize(features[train]), learner_target(labelled.target[train], space)
    splits = folds(y, space.task, seed=spec.seed)
    count = len(space.classes) if space.classes is not None else None
    families = ("linear", "gbdt") if family == "auto" else (family,)
    tuned = [tune(f, space.task, x, y, splits, seed=spec.seed, classes=count) for f in families]
    best = min(tuned, key=lambda t: t.loss if t.loss is not None else 0.0)
    learner = fit_learner(best.family, space.task, x, y, best.params, seed=spec.seed, classes=count)
    return best.family, learner.predict(standardizer.standardize(features[held]))


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.asarray(scores, dtype=np.float64) - np.max(scores, axis=1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)


def _rows(features: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if features is None else features[rows]
