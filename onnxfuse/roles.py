"""What a normalized source's outputs mean: class probabilities and their labels, or a prediction."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfuse.bind import elem_type, rank
from onnxfuse.errors import OnnxfuseError
from onnxfuse.normalize import ML, NormalizedModel

_PASS_THROUGH = {"Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
_CLASS_ATTRS = ("classlabels_int64s", "classlabels_ints", "classlabels_strings")
_LABEL_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.STRING)
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)

Classes = tuple[int, ...] | tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class OutputRole:
    """Which output of a source is its label, probabilities or prediction."""

    model: str  # how messages name the source: `model 2 (b.onnx)`
    task: str  # "classification", "regression", or "scores" (unlabeled `[N, K]`: stacking only)
    label: str | None = None
    probabilities: str | None = None
    prediction: str | None = None
    classes: Classes | None = None
    width: int | None = None  # columns of `prediction`: 1, or K for scores


def output_role(model: NormalizedModel) -> OutputRole:
    """Find what a source predicts.

    Rules: a classifier has a float `[N, C]` probability output (a former ZipMap,
    or the one float rank-2 output beside an int64/string label) whose class list
    comes from the ZipMap, the ML classifier op or the class initializer the label
    is gathered from; a regressor has one float output of shape `[N]` or `[N, 1]`.
    Anything else is an error naming the model and its outputs.
    """
    outputs = {o.name: o for o in model.proto.graph.output}
    labels = [n for n, o in outputs.items() if elem_type(o) in _LABEL_TYPES and rank(o) in (1, None)]
    if model.zipmap_classes:
        probabilities, classes = next(iter(sorted(model.zipmap_classes.items())))
        label = labels[0] if len(labels) == 1 else None
        return OutputRole(
            model.source.label, "classification", label=label, probabilities=probabilities, classes=classes
        )
    floats = [n for n, o in outputs.items() if elem_type(o) in _FLOAT_TYPES]
    matrices = [n for n in floats if rank(outputs[n]) == 2 and _last_dim(outputs[n]) != 1]
    if len(labels) == 1 and len(matrices) == 1:
        classes = trace_classes(model.proto.graph, labels[0])
        if classes is None:
            raise OnnxfuseError(f"{model.source.label}: cannot tell the class list behind output '{labels[0]}'")
        return OutputRole(
            model.source.label, "classification", label=labels[0], probabilities=matrices[0], classes=classes
        )
    vectors = [n for n in floats if rank(outputs[n]) in (1, None) or _last_dim(outputs[n]) == 1]
    if len(outputs) == 1 and len(vectors) == 1:
        return OutputRole(model.source.label, "regression", prediction=vectors[0], width=1)
    if len(outputs) == 1 and len(matrices) == 1 and _last_dim(outputs[matrices[0]]):
        # logits or probabilities without labels (a torch.onnx export): a stacking head can read them
        return OutputRole(model.source.label, "scores", prediction=matrices[0], width=_last_dim(outputs[matrices[0]]))
    raise OnnxfuseError(
        f"{model.source.label}: outputs {', '.join(sorted(outputs))} are neither a classifier's "
        "label and probabilities nor one regression prediction"
    )


def class_placement(role: OutputRole, classes: Sequence) -> np.ndarray:
    """`[C_i, C]` 0/1 matrix placing a source's classes among the target's; unknown classes refused."""
    placement = np.zeros((len(role.classes or ()), len(classes)), dtype=np.float32)
    for row, label in enumerate(role.classes or ()):
        if label not in classes:
            raise OnnxfuseError(f"{role.model}: class {label!r} is not a label of the target ({list(classes)[:20]})")
        placement[row, list(classes).index(label)] = 1.0
    return placement


def meta_columns(role: OutputRole, classes: Sequence | None) -> tuple[int, ...]:
    """The columns of a source's signal a stacking head reads (see heads.Signals)."""
    if role.task != "classification":
        return tuple(range(role.width or 1))
    if classes is None:  # a classifier feeding a regression stack: all its own columns
        return tuple(range(len(role.classes or ())))
    if len(classes) == 2:
        return (1,)
    return tuple(sorted(list(classes).index(c) for c in role.classes or ()))


def trace_classes(graph: onnx.GraphProto, name: str) -> Classes | None:
    """Follow a label output back to the class list it is gathered from."""
    producers = {out: node for node in graph.node for out in node.output}
    constants = {init.name: init for init in graph.initializer}
    constants.update(
        {
            n.output[0]: n.attribute[0].t
            for n in graph.node
            if n.op_type == "Constant" and n.attribute[0].name == "value"
        }
    )
    for _ in range(len(graph.node)):
        node = producers.get(name)
        if node is None:
            return None
        if node.domain == ML and node.op_type.endswith("Classifier"):
            return _classes_from_attrs(node)
        if node.op_type in ("ArrayFeatureExtractor", "Gather") and node.input[0] in constants:
            values = numpy_helper.to_array(constants[node.input[0]]).ravel().tolist()
            return tuple(v.decode() if isinstance(v, bytes) else v for v in values)
        if node.op_type not in _PASS_THROUGH:
            return None
        name = node.input[0]
    return None


def _classes_from_attrs(node: onnx.NodeProto) -> Classes | None:
    for attr in node.attribute:
        if attr.name in _CLASS_ATTRS:
            values = helper.get_attribute_value(attr)
            return tuple(v.decode() if isinstance(v, bytes) else int(v) for v in values)
    return None


def _last_dim(value: onnx.ValueInfoProto) -> int | None:
    dims = value.type.tensor_type.shape.dim
    return dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None
