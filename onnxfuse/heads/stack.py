"""`--fusion stack` (the default): a learner on the sources' signals, tuned by cross-validation, in the file.

Rules: the learner reads each source's `meta_columns` — class probabilities as
log-odds (P(positive) of a binary target, as scikit-learn's StackingClassifier) or
log-probabilities, so logits and their softmax export stack alike; a regressor's
prediction and raw scores as they are — then, so that it works on whatever sources a
row has, one availability indicator per source and each source's columns times each
other source's indicator (a linear head learns a model per pattern of two sources),
and, with `--passthrough`, the raw features. A source unavailable on a row is read as
its fill value (see `dropout`, which also adds the masked copies it is trained on);
a row with no source gets the prior. That matrix is standardised (NaN read as the column mean) and the learner fitted in
float64 (`learners`); the file computes the same transform in float32 before the
converted learner (skl2onnx, or onnxmltools for LightGBM) under `fusion/head/`.
`--meta` chooses the family; `auto` (the default) chooses among candidate heads by
cross-validation (see `auto`). It combines any sources, classifiers and regressors
alike, and is the one head that reads unlabeled scores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnxfuse.heads.base import (
    Fusion,
    Head,
    HeadInputs,
    LabelSpace,
    Standardizer,
    graph_with_prior,
    learner_target,
    standardized,
    target_prior,
    with_prior,
)
from onnxfuse.heads.dropout import copy_folds, dropout_rows, fills, rows_of
from onnxfuse.heads.learners import Folds, Learner, fit_learner, folds, tune
from onnxfuse.roles import OutputRole
from onnxfuse.signals import Signals
from onnxfuse.support import ML, PREFIX, add_constant, add_node, as_float, flatten

# Probabilities are clipped to [EPSILON, 1 - EPSILON] before the log: log-odds within +-6.9. Measured with
# benchmarks/signal_form.py (2 repetitions, mean fold log loss of the linear head, raw probabilities -> log form):
# digits 0.203 -> 0.164, wine 0.118 -> 0.050, breast_cancer 0.120 -> 0.120; with EPSILON 1e-6 (+-13.8) a forest's
# exact 0/1 outputs made breast_cancer 0.138 (a stack trusting them too far), digits 0.154, wine 0.088.
EPSILON = 1e-3


class Stack(Fusion):
    name = "stack"
    trains = True
    options = ("meta", "passthrough")
    reads_scores = True

    def check_sources(self, roles: Sequence[OutputRole], task: str) -> None:
        """A meta-learner reads whatever the sources output."""

    def needs_features(self, spec) -> bool:
        return spec.passthrough

    def fit(self, signals: Signals, features, target: np.ndarray, space: LabelSpace, spec) -> Head:
        if spec.meta == "auto":
            from onnxfuse.heads.auto import choose

            return choose(signals, features, target, space, spec)
        y = learner_target(target, space)
        rows = StackRows.of(signals, features if spec.passthrough else None, y, seed=spec.seed,
                            dropout=spec.availability)  # fmt: skip
        count = len(space.classes) if space.classes is not None else None
        splits = rows.folds(folds(y, space.task, seed=spec.seed))
        tuned = tune(spec.meta, space.task, rows.scaled, rows.y, splits, seed=spec.seed, classes=count)
        learner = fit_learner(spec.meta, space.task, rows.scaled, rows.y, tuned.params, seed=spec.seed, classes=count)
        return rows.head(learner, space, spec.passthrough, spec.seed)

    def refit(self, head: Head, signals: Signals, features, target: np.ndarray, space: LabelSpace, spec) -> Head:
        """The head chosen and tuned on the training part, fitted on all rows."""
        return head.refit(signals, features, target, space)

    def baseline_family(self, spec) -> str:
        return "auto" if spec.meta == "auto" else spec.meta


AUGMENT_ROWS = 65_536  # rows of the meta-matrix built at a time (`_augmented_matrix`)


@dataclasses.dataclass(frozen=True)
class StackRows:
    """The standardised meta-matrix a stack is fitted on: the rows (and, with dropout, their masked copies)."""

    signals: Signals
    scaled: np.ndarray
    y: np.ndarray
    standardizer: Standardizer
    fills: tuple[np.ndarray, ...] | None
    origin: np.ndarray | None  # with dropout: the real row each row is (or copies), see `dropout.dropout_rows`

    @classmethod
    def of(cls, signals: Signals, features: np.ndarray | None, y: np.ndarray, *, seed: int, dropout: bool) -> StackRows:
        """`features` only where the head reads them; `dropout=False` builds the head without availability
        handling (NaN propagates), as before there was any."""
        if not dropout:
            x = _float64_matrix(meta_blocks(signals, features, None))
            standardizer = Standardizer.fit(x)
            return cls(signals, standardizer.standardize(x, in_place=True), y, standardizer, None, None)
        origin, kept = dropout_rows(signals, seed=seed)
        filled = fills(signals)
        x = _augmented_matrix(signals, features, origin, kept, filled)
        standardizer = Standardizer.fit(x)
        return cls(signals, standardizer.standardize(x, in_place=True), y[origin], standardizer, filled, origin)

    def folds(self, splits: Folds) -> Folds:
        """Cross-validation folds of the real rows, as folds of these rows (copies train with their row)."""
        return splits if self.origin is None else copy_folds(self.origin, splits)

    def head(self, learner: Learner, space: LabelSpace, passthrough: bool, seed: int) -> Stacked:
        prior = None if self.fills is None else target_prior(self.y[: len(self.signals.per_model[0])], space)
        return Stacked(learner, self.signals.meta_columns, self.signals.probabilities, self.standardizer, passthrough,
                       seed, self.fills, prior)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Stacked:
    """A fitted stacking head (a `Head`): the learner, the columns it reads and how they are standardised."""

    learner: Learner
    meta_columns: tuple[tuple[int, ...], ...]
    probabilities: tuple[bool, ...]  # per source: its columns are class probabilities, read as log-odds
    standardizer: Standardizer
    passthrough: bool = False
    seed: int = 0
    fills: tuple[np.ndarray, ...] | None = None  # per source, its signal where it is unavailable; None: no masking
    prior: np.ndarray | None = None  # what a row with no source available gets

    @property
    def uses_features(self) -> bool:
        return self.passthrough

    def predict(self, signals: Signals, features: np.ndarray | None) -> np.ndarray:
        x = self.standardizer.standardize(meta_matrix(signals, features if self.passthrough else None, self.fills))
        predicted = self.learner.predict(x)
        return predicted if self.prior is None else with_prior(predicted, signals.mask, self.prior)

    def refit(self, signals: Signals, features, target: np.ndarray, space: LabelSpace) -> Stacked:
        learner = self.learner
        rows = StackRows.of(signals, features if self.passthrough else None, learner_target(target, space),
                            seed=self.seed, dropout=self.fills is not None)  # fmt: skip
        refitted = fit_learner(learner.family, learner.task, rows.scaled, rows.y, learner.params, seed=self.seed,
                               classes=learner.classes)  # fmt: skip
        return rows.head(refitted, space, self.passthrough, self.seed)

    def metadata(self) -> dict:
        return {"meta": self.learner.family, "passthrough": self.passthrough, "tuned": self.learner.params}

    def build(self, model: ir.Model, inputs: HeadInputs, space: LabelSpace, versions) -> dict:
        from onnxfuse.normalize import unify_versions
        from onnxfuse.splice import attach

        graph = model.graph
        available = inputs.available if self.fills is not None else None
        columns = self._graph_meta_columns(graph, inputs.signals, available)
        if self.passthrough:
            assert inputs.features is not None
            columns.append(inputs.features)
        meta = add_node(graph, "Concat", columns, {"axis": 1}, "meta_input") if len(columns) > 1 else columns[0]
        meta = standardized(graph, meta, self.standardizer, "meta")
        proto, output = self.learner.convert(len(self.standardizer.mean), {"": versions.opset, ML: versions.ml_opset})
        label = f"the --meta {self.learner.family} head"
        proto = unify_versions(proto, label, versions)
        outputs = attach(model, proto, prefix=f"{PREFIX}head/", inputs={proto.graph.input[0].name: meta}, label=label)
        if space.task == "classification":
            key, value = "probabilities", as_float(graph, outputs[output], "head/probabilities_float")
        else:
            key, value = "prediction", self._graph_unscaled(graph, outputs[output])
        if available is not None:
            assert self.prior is not None
            value = graph_with_prior(graph, value, available, self.prior, "head/prior")
        return {key: value}

    def _graph_meta_columns(self, graph: ir.Graph, signals: Sequence[ir.Value], available: ir.Value | None) -> list:
        """The meta-matrix's blocks before the features, as `meta_matrix` computes them."""
        if available is None:
            return [_graph_columns(graph, signal, chosen, probability, m) for m, (signal, chosen, probability) in
                    enumerate(zip(signals, self.meta_columns, self.probabilities))]  # fmt: skip
        assert self.fills is not None
        indicators = add_node(graph, "Cast", [available], {"to": ir.DataType.FLOAT}, "meta/indicators")
        blocks = []
        for m, (signal, chosen, probability, fill) in enumerate(
            zip(signals, self.meta_columns, self.probabilities, self.fills)
        ):
            here = add_node(graph, "Gather", [available, _index(graph, f"m{m + 1}/available_index", m)], {"axis": 1},
                            f"m{m + 1}/available")  # fmt: skip
            fill_value = add_constant(graph, f"m{m + 1}/fill", fill.reshape(1, -1))
            filled = add_node(graph, "Where", [here, signal, fill_value], {}, f"m{m + 1}/filled")
            blocks.append(_graph_columns(graph, filled, chosen, probability, m))
        others = [
            add_node(graph, "Gather", [indicators, _index(graph, f"m{k + 1}/indicator_index", k)], {"axis": 1},
                     f"m{k + 1}/indicator")
            for k in range(len(signals))
        ]  # fmt: skip
        crossed = [
            add_node(graph, "Mul", [block, others[k]], {}, f"m{m + 1}/given_m{k + 1}")
            for m, block in enumerate(blocks)
            for k in range(len(signals))
            if k != m
        ]
        return [*blocks, indicators, *crossed]

    def _graph_unscaled(self, graph: ir.Graph, output: ir.Value) -> ir.Value:
        """The learner's scaled regression output as the target: `* scale + mean`."""
        scale = self.learner.target
        assert scale is not None
        prediction = flatten(graph, as_float(graph, output, "head/prediction_float"))
        scaled = add_node(graph, "Mul", [prediction, add_constant(graph, "head/target_scale",
                                                                  np.array(scale.scale, np.float32))], {},
                          "head/prediction_scaled")  # fmt: skip
        return add_node(graph, "Add", [scaled, add_constant(graph, "head/target_mean",
                                                            np.array(scale.mean, np.float32))], {},
                        "head/prediction")  # fmt: skip


def meta_matrix(signals: Signals, features: np.ndarray | None, fills: Sequence[np.ndarray] | None) -> np.ndarray:
    """The learner's input before standardising, float32 as the file computes it (see `meta_blocks`)."""
    return np.concatenate(meta_blocks(signals, features, fills), axis=1).astype(np.float32, copy=False)


def _augmented_matrix(signals: Signals, features: np.ndarray | None, origin: np.ndarray, kept: np.ndarray,
                      filled: tuple[np.ndarray, ...]) -> np.ndarray:  # fmt: skip
    """`meta_matrix` of the rows and their dropout copies, built AUGMENT_ROWS rows at a time into one float64
    array: no copy of every row's signals and features beside it (every value is computed row by row, so the
    bits are those of the whole at once)."""
    out: np.ndarray | None = None
    for start in range(0, len(origin), AUGMENT_ROWS):
        part = slice(start, start + AUGMENT_ROWS)
        chunk = _float64_matrix(meta_blocks(*rows_of(signals, features, origin[part], kept[part]), filled))
        if out is None:
            out = np.empty((len(origin), chunk.shape[1]), dtype=np.float64)
        out[part] = chunk
    assert out is not None
    return out


def _float64_matrix(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """`meta_matrix`'s values as float64, written block by block: no float32 copy of the whole matrix beside it
    (a million-row fit sample's matrix is hundreds of MB)."""
    rows = len(blocks[0])
    out = np.empty((rows, sum(block.shape[1] for block in blocks)), dtype=np.float64)
    start = 0
    for block in blocks:
        out[:, start : start + block.shape[1]] = block.astype(np.float32, copy=False)
        start += block.shape[1]
    return out


def meta_blocks(signals: Signals, features: np.ndarray | None, fills: Sequence[np.ndarray] | None) -> list[np.ndarray]:
    """The learner's input columns in blocks: each source's chosen columns (probabilities as log-odds or
    log-probabilities; with `fills`, an unavailable source's fill), then with `fills` the availability indicators
    and each source's columns times each other's indicator, then the raw features."""
    mask = signals.mask
    per_model = signals.per_model
    if fills is not None:
        per_model = tuple(np.where(mask[:, [m]], s, fill[None, :]) for m, (s, fill) in enumerate(zip(per_model, fills)))
    blocks = [
        _log_odds(s[:, list(cols)]) if probability else s[:, list(cols)]
        for s, cols, probability in zip(per_model, signals.meta_columns, signals.probabilities)
    ]
    if fills is not None:
        indicators = mask.astype(np.float32)
        crossed = [block * indicators[:, [k]] for m, block in enumerate(blocks) for k in range(len(blocks)) if k != m]
        blocks = [*blocks, indicators, *crossed]
    if features is not None:
        blocks.append(np.asarray(features, dtype=np.float32))
    return blocks


def _log_odds(p: np.ndarray) -> np.ndarray:
    """One column: the log-odds of P(positive); several: log-probabilities (float32, as the graph)."""
    low, high = np.float32(EPSILON), np.float32(1 - EPSILON)
    clipped = np.clip(p.astype(np.float32), low, high if p.shape[1] == 1 else np.float32(1))
    if p.shape[1] == 1:
        return (np.log(clipped) - np.log(np.float32(1) - clipped)).astype(np.float32)
    return np.log(clipped).astype(np.float32)


def _index(graph: ir.Graph, name: str, index: int) -> ir.Value:
    return add_constant(graph, name, np.array([index], dtype=np.int64))


def _graph_columns(graph: ir.Graph, signal: ir.Value, chosen: tuple[int, ...], probability: bool, m: int) -> ir.Value:
    """A source's chosen columns as `meta_matrix` computes them."""
    indices = add_constant(graph, f"m{m + 1}/meta_columns", np.array(chosen, dtype=np.int64))
    columns = add_node(graph, "Gather", [signal, indices], {"axis": 1}, f"m{m + 1}/meta")
    if not probability:
        return columns
    one = len(chosen) == 1
    low = add_constant(graph, f"m{m + 1}/clip_low", np.array(EPSILON, dtype=np.float32))
    high = add_constant(graph, f"m{m + 1}/clip_high", np.array(1 - EPSILON if one else 1.0, dtype=np.float32))
    clipped = add_node(graph, "Clip", [columns, low, high], {}, f"m{m + 1}/clipped")
    logs = add_node(graph, "Log", [clipped], {}, f"m{m + 1}/log_probabilities")
    if not one:
        return logs
    unit = add_constant(graph, f"m{m + 1}/unit", np.array(1.0, dtype=np.float32))
    rest = add_node(graph, "Sub", [unit, clipped], {}, f"m{m + 1}/complement")
    return add_node(graph, "Sub", [logs, add_node(graph, "Log", [rest], {}, f"m{m + 1}/log_complement")], {},
                    f"m{m + 1}/log_odds")  # fmt: skip
