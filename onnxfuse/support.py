"""Small helpers every stage shares: the contract's names, reading ONNX protos, adding fusion nodes.

Nothing here imports a stage, so any stage may import it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx
import onnx_ir as ir

FEATURES = "features"  # the packed input of the fused file
BATCH_DIM = "N"  # the name of every batch dimension the compiler writes
ML = "ai.onnx.ml"
STANDARD_DOMAINS = ("", "ai.onnx", ML)
CORE_DOMAINS = ("", "ai.onnx")  # --ops core


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of a graph and of its subgraphs (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_nodes(sub)


def iter_model_nodes(proto: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of the model: graph, subgraphs and local function bodies."""
    yield from iter_nodes(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield node
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from iter_nodes(attr.g)


def elem_type(value: onnx.ValueInfoProto) -> int | None:
    return value.type.tensor_type.elem_type if value.type.HasField("tensor_type") else None


def rank(value: onnx.ValueInfoProto) -> int | None:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    return len(value.type.tensor_type.shape.dim)


# Building the fusion part of the graph: every name the compiler adds starts with PREFIX, so none collides
# with the sources' (they are all under m{i}/).
PREFIX = "fusion/"


def add_node(graph: ir.Graph, op_type: str, inputs: Sequence[ir.Value], attributes: dict, name: str) -> ir.Value:
    """Append one node under PREFIX; its single output takes the node's name."""
    full = name if name.startswith(PREFIX) else PREFIX + name
    node = ir.node(op_type, list(inputs), attributes, name=full)
    node.outputs[0].name = full
    graph.append(node)
    return node.outputs[0]


def add_constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """An initializer under PREFIX; object arrays become string tensors (onnx-ir's deduplication can hash them)."""
    full = PREFIX + name
    if array.dtype == object:
        tensor = ir.StringTensor([str(s).encode() for s in array.ravel()], shape=ir.Shape(array.shape), name=full)
    else:
        tensor = ir.tensor(array, name=full)
    value = ir.val(full, const_value=tensor)
    value.type, value.shape = ir.TensorType(value.const_value.dtype), ir.Shape(array.shape)
    graph.register_initializer(value)
    return value


def reduce_sum(graph: ir.Graph, value: ir.Value, axes: Sequence[int], *, keepdims: bool, name: str) -> ir.Value:
    """ReduceSum over `axes`, written for the graph's ai.onnx opset (axes an input from 13, an attribute before)."""
    if graph.opset_imports.get("", 21) >= 13:
        axes_value = add_constant(graph, f"{name.removeprefix(PREFIX)}_axes", np.array(axes, dtype=np.int64))
        return add_node(graph, "ReduceSum", [value, axes_value], {"keepdims": int(keepdims)}, name)
    return add_node(graph, "ReduceSum", [value], {"axes": list(axes), "keepdims": int(keepdims)}, name)


def unsqueeze(graph: ir.Graph, value: ir.Value, axes: Sequence[int], name: str) -> ir.Value:
    """Unsqueeze at `axes`, written for the graph's ai.onnx opset (axes an input from 13, an attribute before)."""
    if graph.opset_imports.get("", 21) >= 13:
        axes_value = add_constant(graph, f"{name.removeprefix(PREFIX)}_axes", np.array(axes, dtype=np.int64))
        return add_node(graph, "Unsqueeze", [value, axes_value], {}, name)
    return add_node(graph, "Unsqueeze", [value], {"axes": list(axes)}, name)


def as_float(graph: ir.Graph, value: ir.Value, name: str) -> ir.Value:
    if value.dtype == ir.DataType.FLOAT:
        return value
    return add_node(graph, "Cast", [value], {"to": ir.DataType.FLOAT}, name)


def flatten(graph: ir.Graph, value: ir.Value) -> ir.Value:
    """`[N, 1]` (or `[N]`) as `[N]`."""
    stem = value.name.removeprefix(PREFIX)
    shape = add_constant(graph, f"{stem}_flat_shape", np.array([-1], dtype=np.int64))
    return add_node(graph, "Reshape", [value, shape], {}, f"{stem}_flat")


def class_array(classes: Sequence) -> np.ndarray:
    """Class labels as the graph holds them: strings (object array) or int64."""
    if all(isinstance(c, str) for c in classes):
        return np.array(classes, dtype=object)
    return np.array(classes, dtype=np.int64)
