"""Fit the chosen head on the training rows, report it on the hold-out, then refit it on all rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxfuse.errors import OnnxfuseError
from onnxfuse.feeds import Labelled, split_rows
from onnxfuse.heads.base import Fusion, Head, LabelSpace, Standardizer
from onnxfuse.heads.stack import fit_estimator
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
    names: Sequence[tuple[str, bool]],
) -> tuple[Head, dict]:
    """Fit, report on the seeded (stratified) hold-out against every source and a
    from-scratch baseline of the same family on the raw features, then refit on all rows.

    `head_signals` are what the head reads (the sources' votes for a voting head),
    `signals` their probabilities, which the report scores each source by.
    Rows where a source output is NaN or infinite, or a feature infinite (NaN
    features are read as the column mean), cannot train a head: they are left out
    and counted in the report. `names` name each source and say whether its signal
    predicts the target itself (a classifier for a classification target), so it
    gets metrics of its own.
    """
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
    if len(held):
        fitted = fusion.fit(head_signals.take(train), _rows(features, train), labelled.target[train], space, spec)
        fused = fitted.predict(head_signals.take(held), _rows(features, held))
        report["metrics"] = _holdout_metrics(fusion, fused, signals, features, labelled, train, held, names, spec)
    return fusion.fit(head_signals, features, labelled.target, space, spec), report


def _usable_rows(signals: Signals, features: np.ndarray | None) -> np.ndarray:
    usable = np.logical_and.reduce([np.isfinite(s).all(axis=1) for s in signals.per_model])
    if features is not None:
        usable &= ~np.isinf(features).any(axis=1)
    return usable


def _holdout_metrics(fusion, fused, signals, features, labelled, train, held, names, spec) -> dict:
    task, classes, truth = labelled.task, labelled.classes, labelled.target[held]
    table = {}
    for (name, comparable), signal in zip(names, signals.per_model):
        own = signal[held] if task == "classification" else signal[held, 0]
        table[name] = metrics(task, truth, own, classes) if comparable else {}
    table["fused"] = metrics(task, truth, fused, classes)
    if features is not None:
        family = fusion.baseline_family(spec)
        scaler = Standardizer.fit(features[train])
        estimator = fit_estimator(family, task, scaler.impute(features[train]), labelled.target[train], seed=spec.seed)
        x_held = scaler.impute(features[held])
        output = estimator.predict_proba(x_held) if task == "classification" else estimator.predict(x_held)
        table[f"baseline ({family} on raw features)"] = metrics(task, truth, output, classes)
    return table


def _rows(features: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if features is None else features[rows]
