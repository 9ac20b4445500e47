"""`--fusion stack` (the default): a learner on the sources' signals, tuned by cross-validation, in the file.

Rules: the learner reads each source's `meta_columns` — class probabilities as
log-odds (P(positive) of a binary target, as scikit-learn's StackingClassifier) or
log-probabilities, so logits and their softmax export stack alike; a regressor's
prediction and raw scores as they are — and, with `--passthrough`, the raw features.
That matrix is standardised (NaN read as the column mean) and the learner fitted in
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

from onnxfuse.heads.base import Fusion, Head, LabelSpace, Standardizer, class_indices, float_features, standardized
from onnxfuse.heads.learners import Learner, fit_learner, folds, tune
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
        x = meta_matrix(signals, features if spec.passthrough else None)
        standardizer = Standardizer.fit(x)
        scaled = standardizer.standardize(x)
        count = len(space.classes) if space.classes is not None else None
        tuned = tune(spec.meta, space.task, scaled, y, folds(y, space.task, seed=spec.seed), seed=spec.seed,
                     classes=count)  # fmt: skip
        learner = fit_learner(spec.meta, space.task, scaled, y, tuned.params, seed=spec.seed, classes=count)
        return Stacked(learner, signals.meta_columns, signals.probabilities, standardizer, spec.passthrough, spec.seed)

    def refit(self, head: Head, signals: Signals, features, target: np.ndarray, space: LabelSpace, spec) -> Head:
        """The head chosen and tuned on the training part, fitted on all rows."""
        return head.refit(signals, features, target, space)

    def baseline_family(self, spec) -> str:
        return "auto" if spec.meta == "auto" else spec.meta


@dataclasses.dataclass(frozen=True)
class Stacked:
    """A fitted stacking head (a `Head`): the learner, the columns it reads and how they are standardised."""

    learner: Learner
    meta_columns: tuple[tuple[int, ...], ...]
    probabilities: tuple[bool, ...]  # per source: its columns are class probabilities, read as log-odds
    standardizer: Standardizer
    passthrough: bool = False
    seed: int = 0

    @property
    def uses_features(self) -> bool:
        return self.passthrough

    def predict(self, signals: Signals, features: np.ndarray | None) -> np.ndarray:
        x = self.standardizer.standardize(meta_matrix(signals, features if self.passthrough else None))
        return self.learner.predict(x)

    def refit(self, signals: Signals, features, target: np.ndarray, space: LabelSpace) -> Stacked:
        x = meta_matrix(signals, features if self.passthrough else None)
        standardizer = Standardizer.fit(x)
        learner = self.learner
        refitted = fit_learner(learner.family, learner.task, standardizer.standardize(x), learner_target(target, space),
                               learner.params, seed=self.seed, classes=learner.classes)  # fmt: skip
        return dataclasses.replace(self, learner=refitted, standardizer=standardizer)

    def metadata(self) -> dict:
        return {"meta": self.learner.family, "passthrough": self.passthrough, "tuned": self.learner.params}

    def build(self, model: ir.Model, signals: Sequence[ir.Value], space: LabelSpace, versions) -> dict:
        from onnxfuse.normalize import unify_versions
        from onnxfuse.splice import attach

        graph = model.graph
        columns = [
            _graph_columns(graph, signal, chosen, probability, m)
            for m, (signal, chosen, probability) in enumerate(zip(signals, self.meta_columns, self.probabilities))
        ]
        if self.passthrough:
            columns.append(float_features(graph))
        meta = add_node(graph, "Concat", columns, {"axis": 1}, "meta_input") if len(columns) > 1 else columns[0]
        meta = standardized(graph, meta, self.standardizer, "meta")
        proto, output = self.learner.convert(len(self.standardizer.mean), {"": versions.opset, ML: versions.ml_opset})
        label = f"the --meta {self.learner.family} head"
        proto = unify_versions(proto, label, versions)
        outputs = attach(model, proto, prefix=f"{PREFIX}head/", inputs={proto.graph.input[0].name: meta}, label=label)
        if space.task == "classification":
            return {"probabilities": as_float(graph, outputs[output], "head/probabilities_float")}
        scale = self.learner.target
        prediction = flatten(graph, as_float(graph, outputs[output], "head/prediction_float"))
        scaled = add_node(graph, "Mul", [prediction, add_constant(graph, "head/target_scale",
                                                                  np.array(scale.scale, np.float32))], {},
                          "head/prediction_scaled")  # fmt: skip
        return {"prediction": add_node(graph, "Add", [scaled, add_constant(graph, "head/target_mean",
                                                                           np.array(scale.mean, np.float32))], {},
                                       "head/prediction")}  # fmt: skip


def learner_target(target: np.ndarray, space: LabelSpace) -> np.ndarray:
    """Class indices for classification, the target as float64 for regression."""
    if space.task == "classification":
        return class_indices(target, space.classes)
    return np.asarray(target, dtype=np.float64)


def meta_matrix(signals: Signals, features: np.ndarray | None) -> np.ndarray:
    """The learner's input before standardising, float32 as the file computes it: each source's chosen columns
    (probabilities as log-odds or log-probabilities), then the raw features."""
    blocks = [
        _log_odds(s[:, list(cols)]) if probability else s[:, list(cols)]
        for s, cols, probability in zip(signals.per_model, signals.meta_columns, signals.probabilities)
    ]
    if features is not None:
        blocks.append(np.asarray(features, dtype=np.float32))
    return np.concatenate(blocks, axis=1).astype(np.float32)


def _log_odds(p: np.ndarray) -> np.ndarray:
    """One column: the log-odds of P(positive); several: log-probabilities (float32, as the graph)."""
    low, high = np.float32(EPSILON), np.float32(1 - EPSILON)
    clipped = np.clip(p.astype(np.float32), low, high if p.shape[1] == 1 else np.float32(1))
    if p.shape[1] == 1:
        return (np.log(clipped) - np.log(np.float32(1) - clipped)).astype(np.float32)
    return np.log(clipped).astype(np.float32)


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
