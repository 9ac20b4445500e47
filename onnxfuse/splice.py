"""Union the normalized sources into one onnx-ir graph under `m{i}/` prefixes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import InlinePass

from onnxfuse.bind import Binding, InputBinding
from onnxfuse.errors import OnnxfuseError, reason
from onnxfuse.normalize import NormalizedModel, Versions
from onnxfuse.support import BATCH_DIM, FEATURES, ML, STANDARD_DOMAINS

GRAPH_NAME = "onnxfuse"


@dataclasses.dataclass(frozen=True)
class Spliced:
    """The fused graph (no outputs yet) and each model's outputs inside it, by original name."""

    model: ir.Model
    outputs: tuple[dict[str, ir.Value], ...]


def splice(models: Sequence[NormalizedModel], binding: Binding, versions: Versions) -> Spliced:
    """Splice every model into one graph.

    Rules: model i's every name (nodes, values, initializers, subgraph values and
    their outer-scope references, local functions and their call sites) gets the
    prefix `m{i}/`; its numeric column inputs read `Gather(features, columns, axis=1)`
    (plus a Cast where it wants another type than `features`' float32 or float64), its
    string column inputs the fused `string [N, 1]` input of the column's name (a
    Reshape to `[N]` for a rank-1 input), its other inputs the shared graph input of
    the same name; local functions are inlined so only standard domains remain.
    Each model is deserialized anew from its proto, so no source is mutated.
    """
    fused = ir.Graph(
        inputs=[], outputs=[], nodes=[], name=GRAPH_NAME,
        opset_imports={"": versions.opset, ML: versions.ml_opset},
    )  # fmt: skip
    model = ir.Model(fused, ir_version=versions.ir_version, producer_name="onnxfuse")
    if binding.features:
        fused.inputs.append(ir.val(FEATURES, ir.DataType(binding.dtype), [BATCH_DIM, len(binding.features)]))
    for column in binding.strings:
        fused.inputs.append(ir.val(column, ir.DataType.STRING, [BATCH_DIM, 1]))
    for value_info in binding.shared:
        fused.inputs.append(ir.serde.deserialize_value_info_proto(value_info, None))
    shared = {v.name: v for v in fused.inputs}
    outputs = []
    for index, (normalized, bindings) in enumerate(zip(models, binding.models), start=1):
        prefix = f"m{index}/"
        feeds = {b.name: _feed(fused, b, binding, shared, prefix=prefix) for b in bindings}
        folder = normalized.source.path.resolve().parent
        label = normalized.source.label
        outputs.append(attach(model, normalized.proto, prefix=prefix, inputs=feeds, label=label, base_dir=folder))
    if model.functions:
        InlinePass()(model)
        outputs = _live_values(fused, outputs)
    for domain in list(fused.opset_imports):
        if domain not in STANDARD_DOMAINS:
            del fused.opset_imports[domain]
    model.opset_imports.update(fused.opset_imports)
    return Spliced(model=model, outputs=tuple(outputs))


def _live_values(graph: ir.Graph, outputs: list[dict[str, ir.Value]]) -> list[dict[str, ir.Value]]:
    """Inlining a call gives its outputs new Value objects of the same names: follow them."""
    produced = {value.name: value for node in graph for value in node.outputs if value.name}
    return [{key: produced.get(value.name, value) for key, value in model.items()} for model in outputs]


def attach(
    model: ir.Model,
    proto: onnx.ModelProto,
    *,
    prefix: str,
    inputs: dict[str, ir.Value],
    label: str,
    base_dir: Path | None = None,
) -> dict[str, ir.Value]:
    """Add a copy of `proto`'s graph to `model` under `prefix`, its inputs read from `inputs`.

    Returns the attached graph's outputs by their original names.
    """
    try:
        source = ir.serde.deserialize_model(_copy(proto))
    except (ir.serde.SerdeError, TypeError, ValueError) as exc:  # e.g. repeated output names
        raise OnnxfuseError(f"{label}: onnx-ir cannot read its graph ({reason(exc, 200)})") from exc
    _prefix_names(source, prefix)
    if base_dir is not None:
        ir.external_data.set_base_dir(source.graph, str(base_dir))
    graph_inputs = {v.name: v for v in source.graph.inputs if not v.is_initializer()}
    for name, replacement in inputs.items():
        graph_inputs[prefix + name].replace_all_uses_with(replacement, replace_graph_outputs=True)
    source.graph.inputs.clear()
    names = [output.name for output in proto.graph.output]
    outputs = dict(zip(names, source.graph.outputs))
    _move_graph(source, model)
    return outputs


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnx-ir wraps the proto's tensors in place (a rename writes through), so splice a copy."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def _prefix_names(model: ir.Model, prefix: str) -> None:
    """Prefix every name, in every scope; outer-scope references follow the Value objects."""
    seen: set[int] = set()
    for graph in model.graphs():
        values = list(graph.inputs) + list(graph.initializers.values())
        for node in graph:
            if node.name:
                node.name = prefix + node.name
            values.extend(node.outputs)
        for value in values:
            if value.name and id(value) not in seen:
                seen.add(id(value))
                value.name = prefix + value.name
    renamed = {}
    for function in model.functions.values():
        old = function.identifier()
        function.name = prefix + function.name
        renamed[old] = function
        for node in function:
            if node.name:
                node.name = prefix + node.name
    for node in _call_sites(model):
        function = renamed.get((node.domain, node.op_type, node.overload))
        if function is not None:
            node.op_type = function.name
    model.functions.clear()
    model.functions.update({f.identifier(): f for f in renamed.values()})


def _call_sites(model: ir.Model) -> list[ir.Node]:
    nodes = list(model.graph.all_nodes())
    for function in model.functions.values():
        nodes.extend(function.all_nodes())
    return nodes


def _feed(
    fused: ir.Graph, input_binding: InputBinding, binding: Binding, shared: dict[str, ir.Value], *, prefix: str
) -> ir.Value:
    """What one model input reads in the fused graph."""
    if input_binding.columns is None:
        return shared[input_binding.name]
    if not input_binding.is_string:
        return _gather_columns(fused, input_binding, binding, prefix=prefix)
    column = shared[input_binding.columns[0]]
    if input_binding.rank == 2:
        return column
    base = f"{prefix}bind/{input_binding.name}"
    shape = ir.val(f"{base}/shape", const_value=ir.tensor(np.array([-1], dtype=np.int64), name=f"{base}/shape"))
    shape.type, shape.shape = ir.TensorType(ir.DataType.INT64), ir.Shape([1])
    fused.register_initializer(shape)
    reshape = ir.node("Reshape", [column, shape], name=f"{base}/Reshape")
    reshape.outputs[0].name = f"{base}/reshaped"
    fused.append(reshape)
    return reshape.outputs[0]


def _gather_columns(fused: ir.Graph, input_binding: InputBinding, binding: Binding, *, prefix: str) -> ir.Value:
    """`Gather(features, [columns], axis=1)`, then Cast when the model wants another type."""
    indices = [binding.column_index(c) for c in input_binding.columns or ()]
    index_array = np.array(indices[0] if input_binding.rank == 1 else indices, dtype=np.int64)
    base = f"{prefix}bind/{input_binding.name}"
    columns = ir.val(f"{base}/columns", const_value=ir.tensor(index_array, name=f"{base}/columns"))
    columns.type, columns.shape = ir.TensorType(ir.DataType.INT64), ir.Shape(index_array.shape)
    fused.register_initializer(columns)
    gather = ir.node("Gather", [fused.inputs[0], columns], {"axis": 1}, name=f"{base}/Gather")
    gather.outputs[0].name = f"{base}/gathered"
    fused.append(gather)
    wanted = ir.DataType(input_binding.elem_type)
    if wanted == ir.DataType(binding.dtype):
        return gather.outputs[0]
    cast = ir.node("Cast", [gather.outputs[0]], {"to": wanted}, name=f"{base}/Cast")
    cast.outputs[0].name = f"{base}/cast"
    fused.append(cast)
    return cast.outputs[0]


def _move_graph(source: ir.Model, target: ir.Model) -> None:
    """Move nodes, initializers and functions of `source` into `target`."""
    graph, fused = source.graph, target.graph
    graph.outputs.clear()
    nodes = list(graph)
    graph.remove(nodes, safe=False)
    fused.extend(nodes)
    for name in list(graph.initializers):
        value = graph.initializers.pop(name)
        fused.register_initializer(value)
    for identifier, function in source.functions.items():
        target.functions[identifier] = function
        fused.opset_imports.setdefault(function.domain, 1)
