"""Fit the chosen head on the training rows, report it on the hold-out, then refit it on all rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from onnxfuse.data import Labelled, split_rows
from onnxfuse.errors import OnnxfuseError
from onnxfuse.heads import Gate, Signals, Standardizer, fit_estimator, fit_gate, meta_matrix, vote_signals
from onnxfuse.report import metrics


@dataclasses.dataclass(frozen=True)
class HeadOptions:
    method: str
    meta: str = "linear"
    passthrough: bool = False
    holdout: float = 0.2
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class TrainedHead:
    """A fitted head: a scikit-learn estimator (stack) or a gate on imputed raw features (gate, mean, vote)."""

    options: HeadOptions
    estimator: object | None = None
    gate: Gate | None = None
    standardizer: Standardizer | None = None
    report: dict | None = None

    meta_columns: tuple[tuple[int, ...], ...] = ()

    @property
    def uses_features(self) -> bool:
        return self.options.passthrough or self.options.method == "gate"


def train_head(
    signals: Signals,
    labelled: Labelled,
    options: HeadOptions,
    *,
    votes: Signals | None = None,
    names: Sequence[tuple[str, bool]],
    target: str,
) -> TrainedHead:
    """Fit, report on the seeded (stratified) hold-out against every source and a
    from-scratch baseline of the same family on the raw features, then refit on all rows.

    Rows where a source output is NaN or infinite, or a feature infinite (NaN
    features are read as the column mean), cannot train a head: they are left out
    and counted in the report.

    `names` name each source and say whether its signal predicts the target itself
    (a classifier for a classification target), so it gets metrics of its own."""
    if labelled.feeds.get("features") is None and (options.passthrough or options.method == "gate"):
        raise OnnxfuseError(
            f"--fusion {options.method}{' --passthrough' if options.passthrough else ''} needs column features"
        )
    usable = _usable_rows(signals, labelled.feeds.get("features"))
    skipped = int(labelled.rows - usable.sum())
    if usable.sum() < 2:
        raise OnnxfuseError(f"column '{target}': fewer than 2 rows where every source output and feature is finite")
    labelled, signals = labelled.take(usable), signals.take(usable)
    head_signals = votes.take(usable) if votes is not None else signals
    features = labelled.feeds.get("features")
    train, held = split_rows(labelled, options.holdout, seed=options.seed, target=target)
    report = {
        "task": labelled.task, "method": options.method, "seed": options.seed, "holdout": options.holdout,
        "meta": options.meta if options.method == "stack" else None, "passthrough": options.passthrough,
        "rows": {"train": len(train), "holdout": len(held), "skipped_not_finite": skipped}, "metrics": {},
    }  # fmt: skip
    if len(held):
        fitted = _fit(options, head_signals.take(train), _rows(features, train), labelled.target[train], labelled)
        report["metrics"] = _holdout_metrics(fitted, signals, head_signals, features, labelled, train, held, names)
    final = _fit(options, head_signals, features, labelled.target, labelled)
    return dataclasses.replace(final, report=report)


def _usable_rows(signals: Signals, features: np.ndarray | None) -> np.ndarray:
    usable = np.logical_and.reduce([np.isfinite(s).all(axis=1) for s in signals.per_model])
    if features is not None:
        usable &= ~np.isinf(features).any(axis=1)
    return usable


def predict(head: TrainedHead, signals: Signals, features: np.ndarray | None) -> np.ndarray:
    """The head's output in numpy: probabilities `[N, C]` or predictions `[N]`."""
    if head.estimator is not None:
        extra = head.standardizer.impute(features) if head.options.passthrough else None
        x = meta_matrix(signals, extra)
        if hasattr(head.estimator, "predict_proba"):
            return head.estimator.predict_proba(x)
        return head.estimator.predict(x)
    imputed = head.standardizer.impute(features) if head.uses_features else None
    gate = head.gate.mix(imputed)
    mixed = sum(gate[:, [m]] * s for m, s in enumerate(signals.per_model))
    return mixed[:, 0] if mixed.shape[1] == 1 else mixed


def equal_weights(options: HeadOptions, count: int) -> TrainedHead:
    """mean / vote without data: every source weighs the same."""
    return TrainedHead(options, gate=Gate(np.zeros((0, count), np.float32), np.zeros(count, np.float32)))


def _fit(
    options: HeadOptions, signals: Signals, features: np.ndarray | None, target: np.ndarray, labelled: Labelled
) -> TrainedHead:
    standardizer = Standardizer.fit(features) if features is not None else None
    if options.method == "stack":
        extra = standardizer.impute(features) if options.passthrough else None
        estimator = fit_estimator(options.meta, labelled.task, meta_matrix(signals, extra), target, seed=options.seed)
        return TrainedHead(options, estimator=estimator, standardizer=standardizer, meta_columns=signals.meta_columns)
    indices = _class_indices(target, labelled.classes) if labelled.task == "classification" else target
    fitting = vote_signals(signals) if options.method == "vote" else signals
    if options.method == "gate":
        gate = fit_gate(fitting, standardizer.standardize(features), indices, labelled.task)
        return TrainedHead(options, gate=standardizer.fold(gate), standardizer=standardizer)
    gate = fit_gate(fitting, None, indices, labelled.task)
    return TrainedHead(
        options, gate=Gate(np.zeros((0, len(gate.bias)), np.float32), gate.bias), standardizer=standardizer
    )


def _holdout_metrics(fitted, signals, head_signals, features, labelled, train, held, names) -> dict:
    task, classes, truth = labelled.task, labelled.classes, labelled.target[held]
    table = {}
    for (name, comparable), signal in zip(names, signals.per_model):
        own = signal[held] if task == "classification" else signal[held, 0]
        table[name] = metrics(task, truth, own, classes) if comparable else {}
    table["fused"] = metrics(task, truth, predict(fitted, head_signals.take(held), _rows(features, held)), classes)
    if features is not None:
        family = fitted.options.meta if fitted.options.method == "stack" else "linear"
        baseline_scaler = Standardizer.fit(features[train])
        estimator = fit_estimator(
            family, task, baseline_scaler.impute(features[train]), labelled.target[train], seed=fitted.options.seed
        )
        x_held = baseline_scaler.impute(features[held])
        output = estimator.predict_proba(x_held) if task == "classification" else estimator.predict(x_held)
        table[f"baseline ({family} on raw features)"] = metrics(task, truth, output, classes)
    return table


def _class_indices(target: np.ndarray, classes: Sequence) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[v] for v in target.tolist()], dtype=np.int64)


def _rows(features: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if features is None else features[rows]
