"""What every op family's rewrite shares: a builder of plain ai.onnx nodes and the error for what cannot be lowered.

A rule takes one `ai.onnx.ml` node and returns the `ai.onnx` nodes (and initializers) that compute the same
outputs, under the same output names, so the rest of the graph is untouched."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfuse.errors import OnnxfuseError

ML = "ai.onnx.ml"
MIN_OPSET = 13  # ReduceSum's axes as an input, Split's split as an input: one form of each op to write


class CannotLower(OnnxfuseError):
    """An op, or an attribute mode of one, with no rewrite into ai.onnx: never a silently different file."""


@dataclasses.dataclass
class Context:
    """What a rule may ask about the graph: names in use, the ai.onnx opset, and the inferred types of values."""

    label: str  # how messages name the model: "model 1 (a.onnx)" or the file
    opset: int  # the model's ai.onnx opset (>= MIN_OPSET)
    types: Mapping[str, onnx.TypeProto]  # value name -> inferred type, where shape inference knows it
    used: set[str]  # every name in the graph, and every name a rule has made so far

    def fresh(self, hint: str) -> str:
        """A value or node name unused in the graph."""
        base = hint.replace(" ", "_")
        name, count = base, 0
        while name in self.used:
            count += 1
            name = f"{base}_{count}"
        self.used.add(name)
        return name

    def elem_type(self, name: str) -> int | None:
        """The element type (onnx.TensorProto.FLOAT, ...) of a value, or None when inference does not know it."""
        kind = self.types.get(name)
        if kind is None or not kind.HasField("tensor_type"):
            return None
        return kind.tensor_type.elem_type or None

    def shape(self, name: str) -> tuple[int | str | None, ...] | None:
        """The inferred shape of a value (ints, symbols, or None per unknown dim), or None when unknown."""
        kind = self.types.get(name)
        if kind is None or not kind.HasField("tensor_type") or not kind.tensor_type.HasField("shape"):
            return None
        dims = kind.tensor_type.shape.dim
        return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)


@dataclasses.dataclass
class Lowered:
    """A rule's result: nodes in topological order, and the constants they read."""

    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]


Rule = Callable[[onnx.NodeProto, Context], Lowered]


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values (bytes decoded for strings and string lists)."""
    values = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        values[attribute.name] = value
    return values


def refuse(context: Context, node: onnx.NodeProto, what: str) -> CannotLower:
    """The error for a mode with no rewrite, naming model, node and op (raise it)."""
    return CannotLower(
        f"{context.label}: node '{node.name or node.output[0]}' ({node.op_type}): {what}; --ops core cannot "
        "rewrite it into ai.onnx, use --ops standard"
    )


class Builder:
    """Collects the nodes of one rewrite; `op` returns the new output name(s), `const` an initializer's name."""

    def __init__(self, context: Context, node: onnx.NodeProto) -> None:
        self.context = context
        self.prefix = f"{node.name or node.output[0]}/core"
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, value: np.ndarray | Sequence | float | int, hint: str = "const", dtype: Any = None) -> str:
        array = np.asarray(value, dtype=dtype)
        if array.dtype.kind in "US":
            array = array.astype(object)
        name = self.context.fresh(f"{self.prefix}/{hint}")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], *, outputs: Sequence[str] | int = 1, **attrs: Any) -> Any:
        """Append one ai.onnx node; `outputs` names its outputs (e.g. the ml node's own) or counts fresh ones.
        Returns the one output's name, or the list of names for several."""
        names = (
            [self.context.fresh(f"{self.prefix}/{op_type}") for _ in range(outputs)]
            if isinstance(outputs, int)
            else list(outputs)
        )
        node_name = self.context.fresh(f"{self.prefix}/{op_type}_node")
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=node_name, **attrs))
        return names[0] if len(names) == 1 else names

    def greater(self, left: str, right: str, *, equal: bool = False) -> str:
        """left > right (>= with `equal`), written right < left: OpenVINO 2026.4's CPU plugin holds Greater and
        GreaterOrEqual true for a NaN left side, where onnxruntime (and IEEE) say false."""
        return self.op("LessOrEqual" if equal else "Less", [right, left])

    def reduce(self, op_type: str, value: str, axes: Sequence[int], *, keepdims: int = 1, out: str | None = None
               ) -> str:
        """ReduceSum/Max/Min/Mean/Prod/LogSumExp over `axes`, in the form the model's opset takes (axes as an
        input from 13 for ReduceSum, from 18 for the others)."""
        outputs = [out] if out else 1
        if op_type == "ReduceSum" or self.context.opset >= 18:
            axes_name = self.const(np.asarray(axes, dtype=np.int64), "axes")
            return self.op(op_type, [value, axes_name], outputs=outputs, keepdims=keepdims)
        return self.op(op_type, [value], outputs=outputs, axes=list(axes), keepdims=keepdims)

    def result(self) -> Lowered:
        return Lowered(self.nodes, self.initializers)
