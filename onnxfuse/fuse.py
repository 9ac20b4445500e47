"""Combine the spliced sources' outputs into the contract's `label`/`probabilities` or `prediction`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from onnxfuse.errors import OnnxfuseError
from onnxfuse.normalize import BATCH_DIM
from onnxfuse.outputs import Classes, OutputRole
from onnxfuse.splice import Spliced

PREFIX = "fusion/"


@dataclasses.dataclass(frozen=True)
class Fused:
    """The graph with the contract's outputs, and what the metadata says about the head."""

    model: ir.Model
    task: str
    classes: Classes | None
    method: str
    weights: tuple[float, ...]


def fuse(
    spliced: Spliced,
    roles: Sequence[OutputRole],
    *,
    method: str,
    keep_model_outputs: bool = False,
) -> Fused:
    """Add the fusion head (it takes over `spliced.model`).

    Rules: classifiers' class lists are aligned by label value onto their sorted
    union; `mean` averages probabilities (regressors: predictions), `vote` averages
    one-hot labels; `label` is the class of the highest fused probability (first on
    ties, as numpy's argmax). Trained heads (`stack`, `gate`) are refused until they
    exist. With `keep_model_outputs`, each source output is exposed as `m{i}/<name>`.
    """
    heads: dict[str, Callable[[Spliced, Sequence[OutputRole], Classes | None], None]] = {
        "mean": _mean_head,
        "vote": _vote_head,
    }
    if method not in heads:
        raise OnnxfuseError(
            f"--fusion {method} is not available yet (trained heads are not implemented); "
            "use --fusion mean or --fusion vote"
        )
    task = _common_task(roles)
    classes = _union_classes(roles) if task == "classification" else None
    heads[method](spliced, roles, classes)
    outputs = spliced.model.graph.outputs
    outputs.sort(key=lambda value: ("label", "probabilities", "prediction").index(value.name))
    if keep_model_outputs:
        _expose_model_outputs(spliced)
    weights = tuple(1.0 / len(roles) for _ in roles)
    return Fused(model=spliced.model, task=task, classes=classes, method=method, weights=weights)


def _common_task(roles: Sequence[OutputRole]) -> str:
    tasks = sorted({role.task for role in roles})
    if len(tasks) != 1:
        kinds = ", ".join(
            f"{r.model} is a {'classifier' if r.task == 'classification' else 'regressor'}" for r in roles
        )
        raise OnnxfuseError(f"cannot fuse classifiers with regressors without a trained head ({kinds})")
    return tasks[0]


def _union_classes(roles: Sequence[OutputRole]) -> Classes:
    kinds = {type(c) for role in roles for c in role.classes or ()}
    if len(kinds) > 1:
        lists = "; ".join(f"{r.model}: {list(r.classes or ())}" for r in roles)
        raise OnnxfuseError(f"class labels mix strings and integers ({lists})")
    return tuple(sorted({c for role in roles for c in role.classes or ()}))


def _mean_head(spliced: Spliced, roles: Sequence[OutputRole], classes: Classes | None) -> None:
    graph = spliced.model.graph
    if classes is None:
        predictions = [
            _as_vector(graph, outputs[r.prediction or ""], i)
            for i, (outputs, r) in enumerate(zip(spliced.outputs, roles), 1)
        ]
        _average(graph, predictions, "prediction", [BATCH_DIM])
        return
    aligned = [
        _aligned_probabilities(graph, outputs[role.probabilities or ""], role.classes or (), classes, index)
        for index, (outputs, role) in enumerate(zip(spliced.outputs, roles), start=1)
    ]
    probabilities = _average(graph, aligned, "probabilities", [BATCH_DIM, len(classes)])
    _label_of(graph, probabilities, classes)


def _vote_head(spliced: Spliced, roles: Sequence[OutputRole], classes: Classes | None) -> None:
    if classes is None:
        raise OnnxfuseError("--fusion vote needs classifiers; these models are regressors (use --fusion mean)")
    graph = spliced.model.graph
    row = _constant(graph, "vote/classes", _class_array(classes).reshape(1, -1))
    one_hots = []
    for index, (outputs, role) in enumerate(zip(spliced.outputs, roles), start=1):
        if role.label is not None:
            label = outputs[role.label]
        else:
            probabilities = _aligned_probabilities(
                graph, outputs[role.probabilities or ""], role.classes or (), classes, index
            )
            label = _label_of(graph, probabilities, classes, name=f"{PREFIX}m{index}/label")
        axes = _constant(graph, f"vote/m{index}/axes", np.array([1], dtype=np.int64))
        column = _add(graph, "Unsqueeze", [label, axes], {}, f"vote/m{index}/label_column")
        equal = _add(graph, "Equal", [column, row], {}, f"vote/m{index}/equal")
        one_hots.append(_add(graph, "Cast", [equal], {"to": ir.DataType.FLOAT}, f"vote/m{index}/one_hot"))
    probabilities = _average(graph, one_hots, "probabilities", [BATCH_DIM, len(classes)])
    _label_of(graph, probabilities, classes)


def _aligned_probabilities(graph: ir.Graph, value: ir.Value, own: Classes, classes: Classes, index: int) -> ir.Value:
    """The model's `[N, C_i]` probabilities as float `[N, C]` over the union's classes."""
    value = _as_float(graph, value, f"m{index}/probabilities_float")
    if tuple(own) == tuple(classes):
        return value
    placement = np.zeros((len(own), len(classes)), dtype=np.float32)
    for row, label in enumerate(own):
        placement[row, classes.index(label)] = 1.0
    matrix = _constant(graph, f"m{index}/class_placement", placement)
    return _add(graph, "MatMul", [value, matrix], {}, f"m{index}/aligned_probabilities")


def _average(graph: ir.Graph, values: list[ir.Value], output: str, shape: list) -> ir.Value:
    total = _add(graph, "Sum", values, {}, "sum")
    scale = _constant(graph, "scale", np.array(1.0 / len(values), dtype=np.float32))
    result = _add(graph, "Mul", [total, scale], {}, output)
    result.name, result.type, result.shape = output, ir.TensorType(ir.DataType.FLOAT), ir.Shape(shape)
    graph.outputs.append(result)
    return result


def _label_of(graph: ir.Graph, probabilities: ir.Value, classes: Classes, name: str = "label") -> ir.Value:
    index = _add(graph, "ArgMax", [probabilities], {"axis": 1, "keepdims": 0}, f"{name}_index")
    class_array = _class_array(classes)
    table = _constant(graph, f"{name}_classes", class_array)
    label = _add(graph, "Gather", [table, index], {"axis": 0}, name)
    if name == "label":
        dtype = ir.DataType.STRING if class_array.dtype == object else ir.DataType.INT64
        label.name, label.type, label.shape = "label", ir.TensorType(dtype), ir.Shape([BATCH_DIM])
        graph.outputs.append(label)
    return label


def _as_vector(graph: ir.Graph, value: ir.Value, index: int) -> ir.Value:
    value = _as_float(graph, value, f"m{index}/prediction_float")
    shape = _constant(graph, f"m{index}/flat_shape", np.array([-1], dtype=np.int64))
    return _add(graph, "Reshape", [value, shape], {}, f"m{index}/prediction")


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
    value = ir.val(full, const_value=ir.tensor(array, name=full))
    value.type, value.shape = ir.TensorType(value.const_value.dtype), ir.Shape(array.shape)
    graph.register_initializer(value)
    return value


def _expose_model_outputs(spliced: Spliced) -> None:
    graph = spliced.model.graph
    for outputs in spliced.outputs:
        for value in outputs.values():
            if value not in graph.outputs:
                graph.outputs.append(value)
