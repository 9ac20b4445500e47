"""The facts `onnxfuse inspect` shows about a model file."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
from onnx import external_data_helper, helper

from onnxfuse.load import load_model
from onnxfuse.spec import ModelSpec
from onnxfuse.support import iter_model_nodes


def describe(path: Path) -> dict:
    """Inputs, outputs, opsets, IR version, producer, op counts, weight bytes, external files.

    The model is read with the same safety checks as `merge` and its weights are
    never loaded: sizes come from the tensor headers and external-data lengths.
    """
    proto = load_model(ModelSpec(path), 0).proto
    tensors = list(external_data_helper._get_all_tensors(proto))
    external = sorted(
        {
            external_data_helper.ExternalDataInfo(t).location
            for t in tensors
            if external_data_helper.uses_external_data(t)
        }
    )
    opsets = {(o.domain or "ai.onnx"): o.version for o in sorted(proto.opset_import, key=lambda o: o.domain)}
    ops = Counter(f"{n.domain}:{n.op_type}" if n.domain else n.op_type for n in iter_model_nodes(proto))
    return {
        "file": str(path),
        "ir_version": proto.ir_version,
        "opsets": opsets,
        "oldest_onnxruntime": oldest_onnxruntime(proto.ir_version, opsets),
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "inputs": [_value(v) for v in proto.graph.input if v.name not in {t.name for t in proto.graph.initializer}],
        "outputs": [_value(v) for v in proto.graph.output],
        "nodes": dict(sorted(ops.items())),
        "weight_bytes": sum(_tensor_bytes(t) for t in tensors),
        "external_data": external,
        "metadata": {p.key: p.value for p in proto.metadata_props},
    }


# onnxruntime release -> the newest IR version, ai.onnx and ai.onnx.ml opsets it loads: its
# compatibility table for 1.14-1.19; 1.20-1.32 measured (the Python wheels loading and running
# files stamped with each version; ai.onnx.ml 5 counted only where TreeEnsemble-5 runs).
ONNXRUNTIME_LIMITS = (
    ("1.14", 8, 18, 3), ("1.15", 9, 19, 3), ("1.16", 9, 19, 3), ("1.17", 9, 20, 4),
    ("1.18", 10, 21, 4), ("1.19", 10, 21, 4), ("1.20", 10, 21, 4), ("1.21", 10, 22, 5), ("1.22", 10, 22, 5),
    ("1.23", 11, 23, 5), ("1.24", 13, 25, 5), ("1.25", 13, 26, 5), ("1.26", 13, 26, 5), ("1.27", 13, 26, 5),
    ("1.28", 13, 26, 5), ("1.29", 13, 26, 5), ("1.30", 13, 26, 5), ("1.31", 13, 26, 5), ("1.32", 14, 28, 5),
)  # fmt: skip


def oldest_onnxruntime(ir_version: int, opsets: dict[str, int]) -> str:
    """The oldest onnxruntime release known to load a file of these versions."""
    needed = (ir_version, opsets.get("ai.onnx", 0), opsets.get("ai.onnx.ml", 0))
    for index, (release, *limits) in enumerate(ONNXRUNTIME_LIMITS):
        if all(n <= limit for n, limit in zip(needed, limits)):
            if index == 0:
                return f"{release} or older"
            previous = ONNXRUNTIME_LIMITS[index - 1][0]
            gap = "" if _next_minor(previous) == release else f" (releases after {previous} not tabulated)"
            return release + gap
    return f"newer than {ONNXRUNTIME_LIMITS[-1][0]}"


def _next_minor(release: str) -> str:
    major, minor = release.split(".")
    return f"{major}.{int(minor) + 1}"


def format_text(info: dict) -> str:
    """The human-readable form of `describe`."""
    lines = [
        f"file: {info['file']}",
        f"producer: {info['producer'] or '-'}",
        f"IR version: {info['ir_version']}",
        "opsets: " + ", ".join(f"{d} {v}" for d, v in info["opsets"].items()),
        f"oldest onnxruntime: {info['oldest_onnxruntime']}",
        "inputs:",
        *(f"  {v['name']}: {v['type']}" for v in info["inputs"]),
        "outputs:",
        *(f"  {v['name']}: {v['type']}" for v in info["outputs"]),
        f"nodes: {sum(info['nodes'].values())}",
        *(f"  {op}: {count}" for op, count in info["nodes"].items()),
        f"weight bytes: {info['weight_bytes']}",
        "external data: " + (", ".join(info["external_data"]) or "none"),
    ]
    lines += [f"metadata {key}: {value}" for key, value in sorted(info["metadata"].items())]
    return "\n".join(lines)


def _value(value: onnx.ValueInfoProto) -> dict:
    return {"name": value.name, "type": _type_text(value.type)}


def _type_text(type_proto: onnx.TypeProto) -> str:
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        tensor = type_proto.tensor_type
        dtype = _dtype_name(tensor.elem_type)
        if not tensor.HasField("shape"):
            return f"{dtype}[?]"
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
        return f"{dtype}[{', '.join(map(str, dims))}]"
    if kind == "sequence_type":
        return f"seq({_type_text(type_proto.sequence_type.elem_type)})"
    if kind == "map_type":
        key = _dtype_name(type_proto.map_type.key_type)
        return f"map({key}, {_type_text(type_proto.map_type.value_type)})"
    return kind or "?"


def _dtype_name(elem_type: int) -> str:
    try:
        return helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower()
    except (KeyError, ValueError):
        return f"unknown({elem_type})"


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    if external_data_helper.uses_external_data(tensor):
        return int(external_data_helper.ExternalDataInfo(tensor).length or 0)
    return tensor.ByteSize()
