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
import io
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

INLINE_LIMIT = 1024  # tensors up to this many bytes stay inside the serialized graph
ALIGNMENT = 64
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
    with open(path, "wb") as handle:
        offsets = _write(serialized, handle)
    return Packed(path=path, proto=serialized.proto, offsets=offsets)


def packed_bytes(serialized: Serialized) -> bytes:
    """The bytes `write_packed` writes, built in memory (below 2 GB: the Python API without an output)."""
    buffer = io.BytesIO()
    _write(serialized, buffer)
    return buffer.getvalue()


def _write(serialized: Serialized, handle) -> dict[str, tuple[int, int]]:
    """The packed file into `handle`; where each streamed tensor's payload starts, and its length."""
    proto, tensors = serialized.proto, serialized.tensors
    offsets: dict[str, tuple[int, int]] = {}
    graph = onnx.GraphProto()
    graph.CopyFrom(proto.graph)
    streamed = [t for t in graph.initializer if t.name in tensors]
    kept = [t for t in graph.initializer if t.name not in tensors]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph_bytes = graph.SerializeToString(deterministic=True)
    shell = onnx.ModelProto()
    shell.CopyFrom(proto)
    shell.ClearField("graph")
    shell_bytes = shell.SerializeToString(deterministic=True)
    for width in range(1, 11):  # the graph's length prefix takes `width` bytes; lay out until it agrees
        position = len(shell_bytes) + len(_key(7)) + width + len(graph_bytes)
        layout = []
        for tensor in streamed:
            entry = _aligned_entry(tensor, tensors[tensor.name].nbytes, position)
            layout.append(entry)
            position = entry.payload_offset + entry.length + len(entry.tail)
        graph_length = position - (len(shell_bytes) + len(_key(7)) + width)
        if len(_varint(graph_length)) == width:
            break
    handle.write(shell_bytes + _key(7) + _varint(graph_length) + graph_bytes)
    for tensor, entry in zip(streamed, layout):
        handle.write(entry.prefix)
        offsets[tensor.name] = (entry.payload_offset, entry.length)
        _write_payload(tensors[tensor.name], handle)
        handle.write(entry.tail)
    return offsets


@dataclasses.dataclass(frozen=True)
class _Entry:
    prefix: bytes  # the initializer entry up to its raw_data bytes
    payload_offset: int
    length: int
    tail: bytes  # resets the padding doc_string, where the tensor had none of its own


def _aligned_entry(tensor: onnx.TensorProto, length: int, position: int) -> _Entry:
    """An initializer entry whose raw_data starts on a 64-byte boundary.

    Weights read in place (onnxruntime's and numpy's memory maps) must be aligned, or
    numpy copies them. The padding is a `doc_string` of spaces written before the
    tensor's own fields; a later empty `doc_string` (protobuf keeps the last value)
    leaves the tensor's documentation as it was.
    """
    head = _tensor_head(tensor)
    for pad in range(ALIGNMENT * 2):
        padding = _key(12) + _varint(pad) + b" " * pad if pad else b""
        tail = _key(12) + _varint(0) if pad and not tensor.doc_string else b""
        body_length = len(padding) + len(head) + _field_length(9, length) + len(tail)
        prefix = _key(5) + _varint(body_length) + padding + head + _key(9) + _varint(length)
        if (position + len(prefix)) % ALIGNMENT == 0:
            return _Entry(prefix, position + len(prefix), length, tail)
    raise AssertionError("no padding aligns the tensor")  # unreachable: some pad below 128 always aligns


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
                    _PLACEHOLDER + value.name, 0, tensor.nbytes, tensor.dtype,
                    shape=tensor.shape, name=tensor.name, doc_string=tensor.doc_string,
                )  # fmt: skip
            else:  # small or subgraph weights: read them into the graph
                value.const_value = ir.Tensor(tensor.numpy(), name=tensor.name, doc_string=tensor.doc_string)
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
    remaining = length
    if hasattr(os, "copy_file_range") and not isinstance(handle, io.BytesIO):
        handle.flush()
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


def save_external(model: ir.Model, path: Path, data: str) -> None:
    """Save with every tensor over 1 KB in the external-data file `data` beside `path`."""
    keep_strings_inline(model)
    ir.save(model, path, external_data=data, size_threshold_bytes=INLINE_LIMIT)


class _InlineStringTensor(ir.StringTensor):
    """ONNX forbids string tensors in external data: report no bytes so onnx-ir keeps them inline."""

    @property
    def nbytes(self) -> int:
        return 0


def keep_strings_inline(model: ir.Model) -> None:
    """Make every string initializer (subgraphs included) one onnx-ir keeps inside the graph, values and doc
    string as they were; calling it again changes nothing."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if (
                tensor is not None
                and tensor.dtype == ir.DataType.STRING
                and not isinstance(tensor, _InlineStringTensor)
            ):
                items = [v.encode() if isinstance(v, str) else bytes(v) for v in tensor.numpy().ravel()]
                strings = np.array(items, dtype=object).reshape(tensor.shape.numpy())
                value.const_value = _InlineStringTensor(strings, name=tensor.name, doc_string=tensor.doc_string)
