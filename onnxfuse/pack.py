"""Stream a model into one self-contained protobuf file, weights copied file to file, never held twice.

The graph (ModelProto field 7) is written as its other fields followed by one
`initializer` entry per large tensor whose `raw_data` is copied straight from the
source's memory-mapped external data (`copy_file_range`) or from the tensor in
memory. Protobuf reads repeated fields in any order, so the result is a plain
ONNX file; the offsets of every payload are returned so verify can read the very
bytes that were written, through a small view model that points into the file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import onnx
import onnx_ir as ir

INLINE_LIMIT = 1024  # tensors up to this many bytes stay inside the serialized graph
_PLACEHOLDER = "onnxfuse-pack:"


@dataclasses.dataclass(frozen=True)
class Packed:
    """Where each streamed tensor's bytes start in the packed file."""

    path: Path
    proto: onnx.ModelProto  # the model as written, large tensors as external references
    offsets: dict[str, tuple[int, int]]  # name -> (offset, length)

    def view(self) -> onnx.ModelProto:
        """The model with every streamed tensor read as external data from the packed file itself."""
        view = onnx.ModelProto()
        view.CopyFrom(self.proto)
        for tensor in view.graph.initializer:
            if tensor.name in self.offsets:
                offset, length = self.offsets[tensor.name]
                del tensor.external_data[:]
                for key, value in (("location", self.path.name), ("offset", offset), ("length", length)):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, str(value)
        return view


@dataclasses.dataclass(frozen=True)
class Serialized:
    """The model's proto with large main-graph tensors as placeholders, and those tensors."""

    proto: onnx.ModelProto
    tensors: dict[str, ir.TensorProtocol]

    @property
    def size(self) -> int:
        """Bytes of the packed file, give or take a few per tensor: the 2 GB decision."""
        return self.proto.ByteSize() + sum(t.nbytes + 32 for t in self.tensors.values())


def write_packed(serialized: Serialized, path: Path) -> Packed:
    """Write the model to `path` as one self-contained ONNX file."""
    proto, tensors = serialized.proto, serialized.tensors
    offsets: dict[str, tuple[int, int]] = {}
    graph = onnx.GraphProto()
    graph.CopyFrom(proto.graph)
    streamed = [t for t in graph.initializer if t.name in tensors]
    kept = [t for t in graph.initializer if t.name not in tensors]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    heads = [(_tensor_head(t), tensors[t.name]) for t in streamed]
    graph_bytes = graph.SerializeToString(deterministic=True)
    entries = [_field_length(5, len(head) + _field_length(9, tensor.nbytes)) for head, tensor in heads]
    shell = onnx.ModelProto()
    shell.CopyFrom(proto)
    shell.ClearField("graph")
    with open(path, "wb") as handle:
        handle.write(shell.SerializeToString(deterministic=True))
        handle.write(_key(7) + _varint(len(graph_bytes) + sum(entries)) + graph_bytes)
        for head, tensor in heads:
            handle.write(_key(5) + _varint(len(head) + _field_length(9, tensor.nbytes)) + head)
            handle.write(_key(9) + _varint(tensor.nbytes))
            handle.flush()
            offsets[tensor.name] = (handle.tell(), tensor.nbytes)
            _write_payload(tensor, handle)
    return Packed(path=path, proto=proto, offsets=offsets)


def _large(model: ir.Model) -> list[ir.Value]:
    return [
        v
        for v in model.graph.initializers.values()
        if v.const_value is not None
        and v.const_value.dtype != ir.DataType.STRING
        and v.const_value.nbytes > INLINE_LIMIT
    ]


def serialize(model: ir.Model) -> Serialized:
    """The model's proto with large main-graph tensors as placeholders (their data is not read).

    The model is left as it was."""
    tensors = {v.name: v.const_value for v in _large(model)}
    swapped = {v: v.const_value for v in _large(model) + _small_external(model, tensors)}
    try:
        for value, tensor in swapped.items():
            if value.name in tensors:
                value.const_value = ir.ExternalTensor(
                    _PLACEHOLDER + value.name, 0, tensor.nbytes, tensor.dtype, shape=tensor.shape, name=tensor.name
                )
            else:  # small or subgraph weights: read them into the graph
                value.const_value = ir.Tensor(tensor.numpy(), name=tensor.name)
        proto = ir.serde.serialize_model(model)
    finally:
        for value, tensor in swapped.items():
            value.const_value = tensor
    return Serialized(proto, tensors)


def _small_external(model: ir.Model, streamed: dict[str, ir.TensorProtocol]) -> list[ir.Value]:
    """External tensors that will not be streamed: small ones, and any inside subgraphs."""
    return [
        v
        for graph in model.graphs()
        for v in graph.initializers.values()
        if isinstance(v.const_value, ir.ExternalTensor) and not (graph is model.graph and v.name in streamed)
    ]


def _tensor_head(tensor: onnx.TensorProto) -> bytes:
    """A tensor's fields without its data."""
    head = onnx.TensorProto()
    head.CopyFrom(tensor)
    del head.external_data[:]
    head.ClearField("data_location")
    return head.SerializeToString(deterministic=True)


def _write_payload(tensor: ir.TensorProtocol, handle) -> None:
    """The tensor's raw little-endian bytes: copied in the kernel from a memory-mapped source file."""
    if isinstance(tensor, ir.ExternalTensor):
        with open(tensor.path, "rb") as source:
            _copy(source, handle, offset=tensor.offset or 0, length=tensor.nbytes)
    else:
        handle.write(tensor.tobytes())


def _copy(source, handle, *, offset: int, length: int) -> None:
    """Copy bytes file to file with `copy_file_range` where the kernel can, else in chunks."""
    handle.flush()
    remaining = length
    if hasattr(os, "copy_file_range"):
        position = offset
        while remaining:
            try:
                done = os.copy_file_range(source.fileno(), handle.fileno(), remaining, position)
            except OSError:
                break  # e.g. across file systems on old kernels: fall back to reading
            if done == 0:
                raise OSError(f"{source.name} ended early")
            position, remaining = position + done, remaining - done
        handle.seek(0, os.SEEK_END)
    source.seek(offset + length - remaining)
    while remaining:
        chunk = source.read(min(remaining, 1 << 22))
        if not chunk:
            raise OSError(f"{source.name} ended early")
        handle.write(chunk)
        remaining -= len(chunk)


def _key(field: int) -> bytes:
    return _varint(field << 3 | 2)


def _field_length(field: int, length: int) -> int:
    return len(_key(field)) + len(_varint(length)) + length


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
