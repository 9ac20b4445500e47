"""`onnxfuse verify`: the fused file's head recomputed from the source files' own outputs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxfuse.bind import Binding
from onnxfuse.errors import VerificationError
from onnxfuse.normalize import NormalizedModel
from onnxfuse.verify import REFERENCE_TOLERANCE, compare, run_onnxruntime, run_source


def verify_head(
    fused: Path,
    models: Sequence[NormalizedModel],
    binding: Binding,
    *,
    feeds: Mapping[str, np.ndarray],
    scratch: Path,
) -> None:
    """Raise VerificationError unless the head, fed the source files' outputs, gives the fused file's outputs.

    Rules: the head is everything between the sources' outputs (`m{i}/<output>`) and
    the file's other outputs (`label`/`probabilities` or `prediction`, and
    `available`/`source_effects`); it reads only those source outputs, the file's
    inputs (e.g. `features`) and initializers, never a value inside a source's own
    computation; written to `scratch` (beside `fused`, where its external data
    resolves) and run alone in onnxruntime on the verification rows, fed each
    source file's outputs as `run_source` gives them, it reproduces the fused
    file's outputs (labels exactly, floats within the reference tolerance).
    """
    proto = onnx.load(str(fused), load_external_data=False)
    boundary = {f"m{i}/{o.name}" for i, m in enumerate(models, start=1) for o in m.proto.graph.output}
    head = head_model(proto, boundary)
    onnx.save(head, str(scratch))
    outputs = {}
    for index, model in enumerate(models, start=1):
        ran = run_source(model, binding.models[index - 1], binding, feeds)
        outputs.update({f"m{index}/{name}": value for name, value in ran.items()})
    head_feeds = {}
    for value in head.graph.input:
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        head_feeds[value.name] = np.asarray(outputs[value.name] if value.name in boundary else feeds[value.name])
        head_feeds[value.name] = head_feeds[value.name].astype(dtype, copy=False)
    recomputed = run_onnxruntime(scratch, head_feeds)
    actual = run_onnxruntime(fused, feeds)
    for name, expected in recomputed.items():
        compare(name, actual[name], expected, REFERENCE_TOLERANCE, "the head recomputed from the source files' outputs")


def head_model(proto: onnx.ModelProto, boundary: set[str]) -> onnx.ModelProto:
    """The nodes computing the file's outputs (but the `boundary` ones) from `boundary`, inputs and initializers."""
    graph = proto.graph
    producer = {name: node for node in graph.node for name in node.output if name}
    constants = {t.name: t for t in graph.initializer}
    inputs = {v.name for v in graph.input}
    inside = _computing(boundary, producer)
    outputs = [o for o in graph.output if o.name not in boundary]
    if not outputs:
        raise VerificationError("the fused file has no output besides its sources' outputs: no head to check")
    chosen, read, seen, stack = set(), set(), set(), [o.name for o in outputs]
    while stack:
        name = stack.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        if name in boundary or name in inputs or name in constants:
            read.add(name)
            continue
        node = producer.get(name)
        if node is None:
            raise VerificationError(f"the head reads '{name}', which nothing in the fused file computes")
        if id(node) in inside:
            raise VerificationError(f"the head reads '{name}' from inside a source's computation, not its outputs")
        chosen.add(id(node))
        stack.extend(_reads(node))
    typed = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    missing = sorted(n for n in read if n not in constants and n not in typed)
    if missing:
        raise VerificationError(f"the fused file declares no type for {', '.join(missing)}, which its head reads")
    head_inputs = [_any_shape(typed[n]) for n in sorted(read) if n not in constants]
    weights = [constants[n] for n in sorted(read) if n in constants]
    head = helper.make_graph(chosen_nodes(graph, chosen), "head", head_inputs, outputs, weights)
    return helper.make_model(head, opset_imports=proto.opset_import, ir_version=proto.ir_version)


def chosen_nodes(graph: onnx.GraphProto, chosen: set[int]) -> list[onnx.NodeProto]:
    """The chosen nodes in the graph's (topological) order."""
    return [node for node in graph.node if id(node) in chosen]


def _computing(boundary: Iterable[str], producer: Mapping[str, onnx.NodeProto]) -> set[int]:
    """The nodes the `boundary` values depend on: the sources' own computation."""
    found, stack = set(), list(boundary)
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in found:
            found.add(id(node))
            stack.extend(_reads(node))
    return found


def _reads(node: onnx.NodeProto) -> list[str]:
    """A node's inputs and the outer-scope names its subgraphs read."""
    names = list(node.input)
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            local = {v.name for v in graph.input} | {t.name for t in graph.initializer}
            local |= {name for inner in graph.node for name in inner.output}
            names += [name for inner in graph.node for name in _reads(inner) if name not in local]
    return names


def _any_shape(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """The value as an input of any shape (exporters declare some wrong static shapes, e.g. LightGBM's label)."""
    return helper.make_tensor_value_info(value.name, value.type.tensor_type.elem_type, None)
