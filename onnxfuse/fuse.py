"""Put the fusion head into the spliced graph: the contract's `label`/`probabilities` or `prediction`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnxfuse.errors import OnnxfuseError
from onnxfuse.normalize import Versions, unify_versions
from onnxfuse.roles import Classes, OutputRole, class_placement, votes_with_label
from onnxfuse.splice import Spliced, attach
from onnxfuse.support import BATCH_DIM, FEATURES, ML
from onnxfuse.train import TrainedHead

PREFIX = "fusion/"
CONTRACT_OUTPUTS = ("label", "probabilities", "prediction")
_KINDS = {"classification": "classifier", "regression": "regressor", "scores": "model of unlabeled scores"}


@dataclasses.dataclass(frozen=True)
class Fused:
    """The graph with the contract's outputs, and what the metadata says about the head."""

    model: ir.Model
    task: str
    classes: Classes | None


def common_task(roles: Sequence[OutputRole]) -> str:
    """mean / vote / gate combine like with like: all classifiers or all regressors."""
    tasks = sorted({role.task for role in roles})
    for role in roles:
        if role.task == "scores":
            raise OnnxfuseError(_no_classes(role, "without --data and --target, the classes must be known"))
    if len(tasks) != 1:
        kinds = ", ".join(f"{r.model} is a {_KINDS[r.task]}" for r in roles)
        raise OnnxfuseError(
            f"these sources need a stacking head ({kinds}); give --data and --target and use --fusion stack"
        )
    return tasks[0]


def check_sources_fit(roles: Sequence[OutputRole], method: str, task: str) -> None:
    """mean, vote and gate mix like with like: the sources must all predict the target's task."""
    if method == "stack":
        return
    if method == "vote" and task == "regression":
        raise OnnxfuseError("--fusion vote needs classifiers; the target is a regression target (use mean or stack)")
    for role in roles:
        if role.task == "scores" and task == "classification":
            raise OnnxfuseError(_no_classes(role, f"--fusion {method} needs probabilities over known classes"))
        if role.task != task:
            kind = {"classification": "classifier", "regression": "regressor"}.get(
                role.task, "model of unlabeled scores"
            )
            hint = f", or --declare {role.index}:logits={role.prediction} if it is a logit" if role.prediction else ""
            raise OnnxfuseError(
                f"{role.model} is a {kind} but the target is {task}; --fusion {method} mixes like with like "
                f"(use --fusion stack{hint})"
            )


def _no_classes(role: OutputRole, why: str) -> str:
    return (
        f"{role.model}: output '{role.prediction}' holds unlabeled scores (outputs {role.outputs}); {why}: "
        f"declare them with --declare {role.index}:classes=A,B,... (or classes = [...] in its [[model]] table), "
        "or use --fusion stack with --data and --target"
    )


def union_classes(roles: Sequence[OutputRole]) -> Classes:
    """Without a target, the label space is the sorted union of the sources' classes."""
    kinds = {type(c) for role in roles for c in role.classes or ()}
    if len(kinds) > 1:
        lists = "; ".join(f"{r.model}: {list(r.classes or ())}" for r in roles)
        raise OnnxfuseError(f"class labels mix strings and integers ({lists})")
    return tuple(sorted({c for role in roles for c in role.classes or ()}))


def fuse(
    spliced: Spliced,
    roles: Sequence[OutputRole],
    head: TrainedHead,
    *,
    task: str,
    classes: Classes | None,
    versions: Versions,
    keep_model_outputs: bool = False,
) -> Fused:
    """Add the head to the spliced graph (it takes over `spliced.model`).

    Rules: each source's signal is its probabilities placed among `classes` by
    label value (one-hot labels for `vote`), or its prediction as `[N, 1]`; a stack
    head is the fitted estimator converted by skl2onnx (zipmap off, at the graph's
    opsets, names under `fusion/`); gate, mean and vote mix the signals with
    softmax weights, per row for the gate. `label` is the class of the highest
    probability (first on ties). With `keep_model_outputs` every source output is
    exposed as `m{i}/<name>`.
    """
    graph = spliced.model.graph
    vote = head.options.method == "vote"
    signals = [
        _signal(graph, outputs, role, classes, index, vote=vote)
        for index, (outputs, role) in enumerate(zip(spliced.outputs, roles), start=1)
    ]
    if head.estimator is not None:
        _stack_head(spliced.model, signals, head, versions=versions, task=task)
    else:
        mixed = _mix(graph, signals, head, task=task)
        if task == "classification":
            _contract_output(graph, mixed, "probabilities", ir.DataType.FLOAT, [BATCH_DIM, len(classes or ())])
            _label_of(graph, mixed, classes or ())
        else:
            _contract_output(graph, mixed, "prediction", ir.DataType.FLOAT, [BATCH_DIM])
    graph.outputs.sort(key=lambda value: CONTRACT_OUTPUTS.index(value.name))
    if keep_model_outputs:
        for outputs in spliced.outputs:
            graph.outputs.extend(v for v in outputs.values() if v not in graph.outputs)
    return Fused(model=spliced.model, task=task, classes=classes)


def _signal(
    graph: ir.Graph, outputs: dict[str, ir.Value], role: OutputRole, classes, index: int, *, vote: bool
) -> ir.Value:
    if role.task == "scores":
        value = _as_float(graph, outputs[role.prediction or ""], f"m{index}/scores_float")
        shape = _constant(graph, f"m{index}/scores_shape", np.array([-1, role.width or 1], dtype=np.int64))
        return _add(graph, "Reshape", [value, shape], {}, f"m{index}/scores")
    if role.task == "regression":
        value = _as_float(graph, outputs[role.prediction or ""], f"m{index}/prediction_float")
        shape = _constant(graph, f"m{index}/column_shape", np.array([-1, 1], dtype=np.int64))
        return _add(graph, "Reshape", [value, shape], {}, f"m{index}/prediction_column")
    if vote:
        return _one_hot_vote(graph, outputs, role, classes, index)
    probabilities = _own_probabilities(graph, outputs[role.probabilities or ""], role, index)
    if classes is None or tuple(role.classes or ()) == tuple(classes):
        return probabilities
    matrix = _constant(graph, f"m{index}/class_placement", class_placement(role, classes))
    return _add(graph, "MatMul", [probabilities, matrix], {}, f"m{index}/aligned_probabilities")


def _own_probabilities(graph: ir.Graph, value: ir.Value, role: OutputRole, index: int) -> ir.Value:
    """The source's signal as probabilities over its own classes (as roles.class_probabilities computes)."""
    value = _as_float(graph, value, f"m{index}/signal_float")
    if role.form == "logits":
        return _add(graph, "Softmax", [value], {"axis": 1}, f"m{index}/softmax")
    if role.form == "log_probabilities":
        return _add(graph, "Exp", [value], {}, f"m{index}/exp")
    if role.form not in ("positive", "logit"):
        return value
    shape = _constant(graph, f"m{index}/column_shape", np.array([-1, 1], dtype=np.int64))
    positive = _add(graph, "Reshape", [value, shape], {}, f"m{index}/positive_column")
    if role.form == "logit":
        positive = _add(graph, "Sigmoid", [positive], {}, f"m{index}/sigmoid")
    one = _constant(graph, f"m{index}/one", np.array(1.0, dtype=np.float32))
    negative = _add(graph, "Sub", [one, positive], {}, f"m{index}/negative")
    return _add(graph, "Concat", [negative, positive], {"axis": 1}, f"m{index}/two_classes")


def _one_hot_vote(graph: ir.Graph, outputs, role: OutputRole, classes, index: int) -> ir.Value:
    if votes_with_label(role, classes):
        label, row = outputs[role.label], _class_array(classes).reshape(1, -1)
    else:  # the index of the source's most probable class among the target's
        placed = _signal(graph, outputs, role, classes, index, vote=False)
        label = _add(graph, "ArgMax", [placed], {"axis": 1, "keepdims": 0}, f"m{index}/vote_index")
        row = np.arange(len(classes), dtype=np.int64).reshape(1, -1)
    row = _constant(graph, f"m{index}/vote_classes", row)
    axes = _constant(graph, f"m{index}/vote_axes", np.array([1], dtype=np.int64))
    column = _add(graph, "Unsqueeze", [label, axes], {}, f"m{index}/label_column")
    equal = _add(graph, "Equal", [column, row], {}, f"m{index}/vote_equal")
    return _add(graph, "Cast", [equal], {"to": ir.DataType.FLOAT}, f"m{index}/vote")


def _mix(graph: ir.Graph, signals: list[ir.Value], head: TrainedHead, *, task: str) -> ir.Value:
    """Softmax-weighted sum of the signals: fixed weights, or a gate on the imputed features."""
    gate = head.gate
    if not head.uses_features:
        weights = np.exp(gate.bias - gate.bias.max())
        weights = (weights / weights.sum()).astype(np.float32)
        scaled = [
            _add(
                graph,
                "Mul",
                [s, _constant(graph, f"weight_{m}", np.array(w, dtype=np.float32))],
                {},
                f"m{m + 1}/weighted",
            )
            for m, (s, w) in enumerate(zip(signals, weights))
        ]
        total = _add(graph, "Sum", scaled, {}, "sum")
        return total if task == "classification" else _flatten(graph, total)
    features = _imputed_features(graph, head)
    logits = _add(graph, "MatMul", [features, _constant(graph, "gate/weights", gate.weights)], {}, "gate/scores")
    logits = _add(graph, "Add", [logits, _constant(graph, "gate/bias", gate.bias)], {}, "gate/logits")
    weights = _add(graph, "Softmax", [logits], {"axis": 1}, "gate/weights_per_row")
    axis1 = _constant(graph, "gate/axis1", np.array([1], dtype=np.int64))
    if task == "classification":
        stacked = _add(
            graph,
            "Concat",
            [_add(graph, "Unsqueeze", [s, axis1], {}, f"gate/m{m + 1}") for m, s in enumerate(signals)],
            {"axis": 1},
            "gate/experts",
        )
        axis2 = _constant(graph, "gate/axis2", np.array([2], dtype=np.int64))
        weights = _add(graph, "Unsqueeze", [weights, axis2], {}, "gate/weights_column")
    else:
        stacked = _add(graph, "Concat", signals, {"axis": 1}, "gate/experts")
    product = _add(graph, "Mul", [stacked, weights], {}, "gate/weighted")
    return _add(graph, "ReduceSum", [product, axis1], {"keepdims": 0}, "gate/mixed")


def _stack_head(model: ir.Model, signals: list[ir.Value], head: TrainedHead, *, versions: Versions, task: str) -> None:
    graph = model.graph
    columns = []
    for m, (signal, chosen) in enumerate(zip(signals, head.meta_columns)):
        indices = _constant(graph, f"m{m + 1}/meta_columns", np.array(chosen, dtype=np.int64))
        columns.append(_add(graph, "Gather", [signal, indices], {"axis": 1}, f"m{m + 1}/meta"))
    if head.options.passthrough:
        columns.append(_imputed_features(graph, head))
    meta = _add(graph, "Concat", columns, {"axis": 1}, "meta_input") if len(columns) > 1 else columns[0]
    from skl2onnx import to_onnx  # only stacking needs the converter

    width = sum(len(c) for c in head.meta_columns) + (len(head.standardizer.mean) if head.options.passthrough else 0)
    proto = to_onnx(
        head.estimator,
        np.zeros((1, width), dtype=np.float32),
        target_opset={"": versions.opset, ML: versions.ml_opset},
        options={"zipmap": False} if task == "classification" else None,
    )
    proto = unify_versions(proto, f"the --meta {head.options.meta} head", versions)
    label = f"the --meta {head.options.meta} head"
    outputs = attach(model, proto, prefix=f"{PREFIX}head/", inputs={proto.graph.input[0].name: meta}, label=label)
    if task == "classification":
        label, probabilities = outputs["label"], outputs["probabilities"]
        label.name, probabilities.name = "label", "probabilities"
        graph.outputs.extend([label, probabilities])
    else:
        prediction = _flatten(graph, _as_float(graph, outputs["variable"], "head/prediction_float"))
        _contract_output(graph, prediction, "prediction", ir.DataType.FLOAT, [BATCH_DIM])


def _imputed_features(graph: ir.Graph, head: TrainedHead) -> ir.Value:
    """`features` with NaN read as the fusion rows' column means, as the head was trained."""
    features = next(v for v in graph.inputs if v.name == FEATURES)
    if features.dtype != ir.DataType.FLOAT:  # float64 features: the head was trained and converted in float32
        features = _add(graph, "Cast", [features], {"to": ir.DataType.FLOAT}, "features_float")
    missing = _add(graph, "IsNaN", [features], {}, "features_missing")
    mean = _constant(graph, "feature_means", head.standardizer.mean.reshape(1, -1))
    return _add(graph, "Where", [missing, mean, features], {}, "features_imputed")


def _label_of(graph: ir.Graph, probabilities: ir.Value, classes: Classes, name: str = "label") -> ir.Value:
    index = _add(graph, "ArgMax", [probabilities], {"axis": 1, "keepdims": 0}, f"{name}_index")
    class_array = _class_array(classes)
    table = _constant(graph, f"{name}_classes", class_array)
    label = _add(graph, "Gather", [table, index], {"axis": 0}, name)
    if name == "label":
        dtype = ir.DataType.STRING if class_array.dtype == object else ir.DataType.INT64
        _contract_output(graph, label, "label", dtype, [BATCH_DIM])
    return label


def _contract_output(graph: ir.Graph, value: ir.Value, name: str, dtype: ir.DataType, shape: list) -> None:
    value.name, value.type, value.shape = name, ir.TensorType(dtype), ir.Shape(shape)
    graph.outputs.append(value)


def _flatten(graph: ir.Graph, value: ir.Value) -> ir.Value:
    shape = _constant(graph, f"{value.name.removeprefix(PREFIX)}_flat_shape", np.array([-1], dtype=np.int64))
    return _add(graph, "Reshape", [value, shape], {}, f"{value.name.removeprefix(PREFIX)}_flat")


def _as_float(graph: ir.Graph, value: ir.Value, name: str) -> ir.Value:
    if value.dtype == ir.DataType.FLOAT:
        return value
    return _add(graph, "Cast", [value], {"to": ir.DataType.FLOAT}, name)


def _class_array(classes: Classes) -> np.ndarray:
    if all(isinstance(c, str) for c in classes):
        return np.array(classes, dtype=object)
    return np.array(classes, dtype=np.int64)


def _add(graph: ir.Graph, op_type: str, inputs: list[ir.Value], attributes: dict, name: str) -> ir.Value:
    full = name if name.startswith(PREFIX) else PREFIX + name
    node = ir.node(op_type, inputs, attributes, name=full)
    node.outputs[0].name = full
    graph.append(node)
    return node.outputs[0]


def _constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    full = PREFIX + name
    if array.dtype == object:  # an ir.StringTensor, which onnx-ir's initializer deduplication can hash
        tensor = ir.StringTensor([str(s).encode() for s in array.ravel()], shape=ir.Shape(array.shape), name=full)
    else:
        tensor = ir.tensor(array, name=full)
    value = ir.val(full, const_value=tensor)
    value.type, value.shape = ir.TensorType(value.const_value.dtype), ir.Shape(array.shape)
    graph.register_initializer(value)
    return value
