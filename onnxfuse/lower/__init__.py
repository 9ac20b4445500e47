"""`--ops core` and `onnxfuse lower`: every ai.onnx.ml node rewritten into plain ai.onnx, one module per op family.

Each family module exposes `RULES: dict[op_type, Rule]` (see `base`). `lower_model` swaps each ml node for its
rule's nodes, in place in the node list (same output names, so consumers are untouched), and drops the
ai.onnx.ml opset import. An ml node no rule takes is an error naming it."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import onnx

from onnxfuse.lower.base import MIN_OPSET, ML, CannotLower, Context, Rule
from onnxfuse.lower.quirks import keep_reduced_dims

FAMILIES = ("linear", "encoders", "svm", "trees")


def rules() -> dict[str, Rule]:
    """Every op type some family rewrites."""
    table: dict[str, Rule] = {}
    for family in FAMILIES:
        table.update(importlib.import_module(f"onnxfuse.lower.{family}").RULES)
    return table


def lower_model(model: onnx.ModelProto, label: str, *, owner: Callable[[str], str] | None = None) -> onnx.ModelProto:
    """A copy of `model` with no ai.onnx.ml node or opset import, and the runtime workarounds of `quirks`
    (the input is not changed). `owner`: how errors name the model a node came from, by the node's name (in a
    fused graph, `m2/...` is model 2's); else `label`."""
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    opset = next((o.version for o in lowered.opset_import if o.domain in ("", "ai.onnx")), 0)
    has_ml = any(n.domain == ML for n in _all_nodes(lowered.graph))
    if has_ml and opset < MIN_OPSET:
        raise CannotLower(f"{label}: ai.onnx opset {opset}; --ops core writes opset {MIN_OPSET} or later ops, "
                          f"convert it first (onnxfuse merge --target-opset {MIN_OPSET} or higher)")  # fmt: skip
    graph = onnx.shape_inference.infer_shapes(lowered).graph if has_ml else lowered.graph
    types = {v.name: v.type for v in [*graph.input, *graph.value_info, *graph.output]}
    used = {name for node in _all_nodes(graph) for name in [*node.input, *node.output, node.name]}
    used |= {v.name for v in [*graph.input, *graph.output, *graph.initializer]}
    context = Context(label=label, opset=opset, types=types, used=used)
    if has_ml:
        computed = {name for node in _all_nodes(lowered.graph) if node.domain == ML for name in node.output}
        _lower_graph(lowered.graph, context, rules(), owner or (lambda name: label))
        _retype(lowered, computed)
    _work_around_runtimes(lowered.graph, context)
    return _without_ml_import(lowered)


def _retype(model: onnx.ModelProto, names: set[str]) -> None:
    """The value_info of what ml nodes computed was written loosely by exporters (onnxmltools declares a LightGBM
    label [1] for [N]; onnxruntime ignores it, tract trusts it): the shapes inferred from the ai.onnx nodes that
    compute those values now replace it, or no shape where inference finds none."""
    for value in model.graph.value_info:
        if value.name in names and value.type.HasField("tensor_type"):
            value.type.tensor_type.ClearField("shape")
    inferred = {v.name: v.type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for value in model.graph.value_info:
        if value.name in names and value.name in inferred:
            value.type.CopyFrom(inferred[value.name])


def _work_around_runtimes(graph: onnx.GraphProto, context: Context) -> None:
    """`quirks`' rewrites, subgraphs first (a parent's node list is rebuilt from copies of its nodes)."""
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                _work_around_runtimes(sub, context)
    keep_reduced_dims(graph, context)


def _lower_graph(graph: onnx.GraphProto, context: Context, table: dict[str, Rule], owner: Callable[[str], str]
                 ) -> None:
    nodes = []
    for node in graph.node:
        for attribute in node.attribute:  # ml nodes inside If/Loop/Scan bodies
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                _lower_graph(sub, context, table, owner)
        if node.domain != ML:
            nodes.append(node)
            continue
        context.label = owner(node.name or node.output[0])
        rule = table.get(node.op_type)
        if rule is None:
            raise CannotLower(f"{context.label}: node '{node.name or node.output[0]}' ({node.op_type}): no rewrite "
                              "of this ai.onnx.ml op into ai.onnx; use --ops standard")  # fmt: skip
        done = rule(node, context)
        nodes.extend(done.nodes)
        graph.initializer.extend(done.initializers)
    del graph.node[:]
    graph.node.extend(nodes)


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                yield from _all_nodes(sub)


def _without_ml_import(model: onnx.ModelProto) -> onnx.ModelProto:
    kept = [o for o in model.opset_import if o.domain != ML]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model
