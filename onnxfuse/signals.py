"""What each source says about a row, as a fusion head reads it: numpy arrays to fit on, graph values for the file.

Rules, the same numbers on both sides: a classifier's signal output becomes
probabilities over its own classes (Softmax of logits, Exp of log-probabilities,
`[1-p, p]` from one positive column or the Sigmoid of one logit), then is placed
among the target's classes by label value (zero where it does not know a class);
a head that `votes` reads a one-hot of each source's label instead. A regressor's
prediction is one column, unlabeled scores their `K` columns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxfuse.errors import OnnxfuseError
from onnxfuse.roles import OutputRole
from onnxfuse.support import add_constant, add_node, as_float, class_array, unsqueeze


@dataclasses.dataclass(frozen=True)
class Signals:
    """Each source's view of every row as float32 `[N, K]`, aligned to the target's label space.

    `meta_columns` are the columns a stacking meta-learner reads: P(positive) for
    binary tasks (as scikit-learn's StackingClassifier), the source's own classes
    otherwise, the prediction for regressors. `probabilities` says which sources'
    signals are class probabilities (a stacking head reads those as log-odds).
    """

    per_model: tuple[np.ndarray, ...]
    meta_columns: tuple[tuple[int, ...], ...]
    probabilities: tuple[bool, ...]
    available: np.ndarray | None = None  # [N, M] bool (see `availability`); None: every source on every row
    feature_columns: tuple[tuple[int, ...], ...] | None = None  # the packed feature columns each source reads

    @property
    def mask(self) -> np.ndarray:
        """`[N, M]` bool: which sources are available on which rows."""
        if self.available is not None:
            return self.available
        return np.ones((len(self.per_model[0]), len(self.per_model)), dtype=bool)

    def take(self, rows: np.ndarray) -> Signals:
        available = None if self.available is None else self.available[rows]
        return dataclasses.replace(self, per_model=tuple(s[rows] for s in self.per_model), available=available)

    def masked(self, keep: np.ndarray) -> Signals:
        """The same rows with only the sources `keep` (`[M]` or `[N, M]` bool) left available."""
        return dataclasses.replace(self, available=self.mask & keep)


def scored_outputs(
    outputs: Sequence[Mapping[str, ir.Value]], roles: Sequence[OutputRole], *, votes: bool, classes
) -> dict[str, ir.Value]:
    """The spliced values to score on the labelled rows: `{i}/signal`, and `{i}/label` where a vote reads it."""
    wanted = {}
    for index, (values, role) in enumerate(zip(outputs, roles)):
        wanted[f"{index}/signal"] = values[role.probabilities or role.prediction]
        if votes and votes_with_label(role, classes):
            wanted[f"{index}/label"] = values[role.label]
    return wanted


def numpy_signals(
    scores: Mapping[str, np.ndarray], roles: Sequence[OutputRole], classes, *,
    features: np.ndarray | None = None, feature_columns: tuple[tuple[int, ...], ...] | None = None,
) -> Signals:  # fmt: skip
    """The signals from the scored outputs (see `scored_outputs`), as `graph_signals` computes them; with
    `feature_columns` (`availability.source_columns`), which sources are available on each row of `features`,
    else every one everywhere."""
    from onnxfuse.availability import numpy_available, present

    per_model = tuple(_numpy_signal(role, scores[f"{i}/signal"], classes) for i, role in enumerate(roles))
    columns = tuple(meta_columns(role, classes) for role in roles)
    probabilities = tuple(role.task == "classification" for role in roles)
    if feature_columns is None:
        return Signals(per_model, columns, probabilities)
    available = numpy_available(per_model, present(features, feature_columns, len(per_model[0])))
    return Signals(per_model, columns, probabilities, available, feature_columns)


def numpy_votes(signals: Signals, scores: Mapping[str, np.ndarray], classes: Sequence) -> Signals:
    """One-hot votes: each source's own label where it is read, else its most probable class."""
    labels = [
        scores.get(f"{i}/label", np.array(classes, dtype=object)[np.argmax(signal, axis=1)])
        for i, signal in enumerate(signals.per_model)
    ]
    votes = tuple(one_hot(label, classes) for label in labels)
    return dataclasses.replace(signals, per_model=votes)


def graph_signals(
    graph: ir.Graph, outputs: Sequence[Mapping[str, ir.Value]], roles: Sequence[OutputRole], classes
) -> list[ir.Value]:
    """Each source's signal in the graph, `[N, K]` float: the values `numpy_signals` computes."""
    return [_graph_signal(graph, values, role, classes, index) for index, (values, role) in
            enumerate(zip(outputs, roles), start=1)]  # fmt: skip


def graph_votes(
    graph: ir.Graph, outputs: Sequence[Mapping[str, ir.Value]], roles: Sequence[OutputRole], classes,
    signals: Sequence[ir.Value],
) -> list[ir.Value]:  # fmt: skip
    """Each source's one-hot vote in the graph, as `numpy_votes` computes it (`signals`: from `graph_signals`)."""
    return [_graph_vote(graph, values, role, classes, index, signal) for index, (values, role, signal) in
            enumerate(zip(outputs, roles, signals), start=1)]  # fmt: skip


def _numpy_signal(role: OutputRole, values: np.ndarray, classes) -> np.ndarray:
    if role.task != "classification":
        return values.astype(np.float32).reshape(len(values), -1)
    probabilities = class_probabilities(role, values)
    return probabilities @ class_placement(role, classes) if classes is not None else probabilities


def _graph_signal(graph: ir.Graph, outputs, role: OutputRole, classes, index: int) -> ir.Value:
    if role.task == "scores":
        value = as_float(graph, outputs[role.prediction or ""], f"m{index}/scores_float")
        shape = add_constant(graph, f"m{index}/scores_shape", np.array([-1, role.width or 1], dtype=np.int64))
        return add_node(graph, "Reshape", [value, shape], {}, f"m{index}/scores")
    if role.task == "regression":
        value = as_float(graph, outputs[role.prediction or ""], f"m{index}/prediction_float")
        shape = add_constant(graph, f"m{index}/column_shape", np.array([-1, 1], dtype=np.int64))
        return add_node(graph, "Reshape", [value, shape], {}, f"m{index}/prediction_column")
    probabilities = _own_probabilities(graph, outputs[role.probabilities or ""], role, index)
    if classes is None or tuple(role.classes or ()) == tuple(classes):
        return probabilities
    matrix = add_constant(graph, f"m{index}/class_placement", class_placement(role, classes))
    return add_node(graph, "MatMul", [probabilities, matrix], {}, f"m{index}/aligned_probabilities")


def _own_probabilities(graph: ir.Graph, value: ir.Value, role: OutputRole, index: int) -> ir.Value:
    """The source's signal as probabilities over its own classes (as `class_probabilities` computes them)."""
    value = as_float(graph, value, f"m{index}/signal_float")
    if role.form == "logits":
        return add_node(graph, "Softmax", [value], {"axis": 1}, f"m{index}/softmax")
    if role.form == "log_probabilities":
        return add_node(graph, "Exp", [value], {}, f"m{index}/exp")
    if role.form not in ("positive", "logit"):
        return value
    shape = add_constant(graph, f"m{index}/column_shape", np.array([-1, 1], dtype=np.int64))
    positive = add_node(graph, "Reshape", [value, shape], {}, f"m{index}/positive_column")
    if role.form == "logit":
        positive = add_node(graph, "Sigmoid", [positive], {}, f"m{index}/sigmoid")
    one = add_constant(graph, f"m{index}/one", np.array(1.0, dtype=np.float32))
    negative = add_node(graph, "Sub", [one, positive], {}, f"m{index}/negative")
    return add_node(graph, "Concat", [negative, positive], {"axis": 1}, f"m{index}/two_classes")


def _graph_vote(graph: ir.Graph, outputs, role: OutputRole, classes, index: int, signal: ir.Value) -> ir.Value:
    if votes_with_label(role, classes):
        label, row = outputs[role.label], class_array(classes).reshape(1, -1)
    else:  # the index of the source's most probable class among the target's
        label = add_node(graph, "ArgMax", [signal], {"axis": 1, "keepdims": 0}, f"m{index}/vote_index")
        row = np.arange(len(classes), dtype=np.int64).reshape(1, -1)
    row = add_constant(graph, f"m{index}/vote_classes", row)
    column = unsqueeze(graph, label, [1], f"m{index}/label_column")
    equal = add_node(graph, "Equal", [column, row], {}, f"m{index}/vote_equal")
    return add_node(graph, "Cast", [equal], {"to": ir.DataType.FLOAT}, f"m{index}/vote")


def class_probabilities(role: OutputRole, values: np.ndarray) -> np.ndarray:
    """`[N, C_i]` probabilities over the source's own classes, as the graph computes them."""
    x = np.asarray(values, dtype=np.float32).reshape(len(values), -1)
    if role.form == "logits":
        exp = np.exp(x - x.max(axis=1, keepdims=True))
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    if role.form == "log_probabilities":
        return np.exp(x).astype(np.float32)
    if role.form in ("positive", "logit"):
        p = (1 / (1 + np.exp(-x))).astype(np.float32) if role.form == "logit" else x
        return np.concatenate([np.float32(1) - p, p], axis=1)
    return x


def class_placement(role: OutputRole, classes: Sequence) -> np.ndarray:
    """`[C_i, C]` 0/1 matrix placing a source's classes among the target's; unknown classes refused."""
    placement = np.zeros((len(role.classes or ()), len(classes)), dtype=np.float32)
    for row, label in enumerate(role.classes or ()):
        if label not in classes:
            raise OnnxfuseError(f"{role.model}: class {label!r} is not a label of the target ({list(classes)[:20]})")
        placement[row, list(classes).index(label)] = 1.0
    return placement


def meta_columns(role: OutputRole, classes: Sequence | None) -> tuple[int, ...]:
    """The columns of a source's signal a stacking head reads (see `Signals`)."""
    if role.task != "classification":
        return tuple(range(role.width or 1))
    if classes is None:  # a classifier feeding a regression stack: all its own classes' probabilities
        return tuple(range(len(role.classes or ())))
    if len(classes) == 2:
        return (1,)
    return tuple(sorted(list(classes).index(c) for c in role.classes or ()))


def votes_with_label(role: OutputRole, classes: Sequence | None) -> bool:
    """A vote reads a source's own label when it has one over integer classes; else the argmax of its signal
    (string labels are compared as class indices: the reference evaluator's Equal refuses mixed string arrays)."""
    return role.label is not None and not any(isinstance(c, str) for c in classes or ())


def one_hot(labels: np.ndarray, classes: Sequence) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for row, label in enumerate(labels.tolist()):
        label = label.decode() if isinstance(label, bytes) else label
        if label in lookup:
            out[row, lookup[label]] = 1.0
    return out
