"""Small helpers every stage shares: the contract's names, and reading ONNX protos.

Nothing here imports a stage, so any stage may import it.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

FEATURES = "features"  # the packed input of the fused file
BATCH_DIM = "N"  # the name of every batch dimension the compiler writes
ML = "ai.onnx.ml"
STANDARD_DOMAINS = ("", "ai.onnx", ML)


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
