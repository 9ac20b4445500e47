"""Write the fused file: deterministic bytes, one file below 2 GB, atomically and only once verified."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import external_data_helper

from onnxfuse.errors import OnnxfuseError

PROTOBUF_LIMIT = 2**31 - 1
_MARGIN = 1 << 20
STAGED = "fused.onnx"


def data_name(out: Path) -> str:
    """The external-data file beside OUT (`fused.onnx` -> `fused.data`), used only above 2 GB."""
    return out.with_suffix(".data").name if out.suffix else out.name + ".data"


@contextlib.contextmanager
def workspace(out: Path, inputs: list[Path]) -> Iterator[Path]:
    """A temp folder in OUT's folder (so `os.replace` is atomic), removed whatever happens."""
    check_output(out, inputs)
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def stage(model: ir.Model, folder: Path, *, out: Path, metadata: Mapping[str, str]) -> Path:
    """Save the model with its weights in one external-data file, for verify to memory-map."""
    model.metadata_props.clear()
    model.metadata_props.update(sorted(metadata.items()))
    path = folder / STAGED
    _keep_strings_inline(model)
    ir.save(model, path, external_data=data_name(out), size_threshold_bytes=1024)
    return path


class _InlineStringTensor(ir.StringTensor):
    """ONNX forbids string tensors in external data: report no bytes so onnx-ir keeps them inline."""

    @property
    def nbytes(self) -> int:
        return 0


def _keep_strings_inline(model: ir.Model) -> None:
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
                value.const_value = _InlineStringTensor(strings, name=tensor.name)


def metadata_json(value: object) -> str:
    """Metadata values: JSON with sorted keys, so equal inputs give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def emit(staged: Path, out: Path) -> None:
    """Replace OUT with the verified staged model.

    Rules: below protobuf's 2 GB limit OUT is one self-contained file, streamed
    tensor by tensor from the staged external data (never a second copy of the
    weights in memory); above it OUT keeps its weights in `OUT.data` beside it.
    Files are complete and fsynced before `os.replace`; inputs are never touched.
    """
    proto = onnx.load(str(staged), load_external_data=False)
    folder = staged.parent
    if _packed_size(proto, folder) < PROTOBUF_LIMIT - _MARGIN:
        packed = folder / "packed.onnx"
        with open(packed, "wb") as handle:
            _write_self_contained(proto, folder, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(packed, out)
        return
    data = folder / data_name(out)
    if _external_tensors(proto):
        _fsync(data)
        os.replace(data, out.parent / data.name)
    _fsync(staged)
    os.replace(staged, out)


def check_output(out: Path, inputs: list[Path]) -> None:
    if not out.parent.is_dir():
        raise OnnxfuseError(f"output {out}: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise OnnxfuseError(f"output {out}: folder {out.parent} is not writable")
    if out.is_dir():
        raise OnnxfuseError(f"output {out}: is a folder")
    for path in inputs:
        for candidate in (out, out.parent / data_name(out)):
            if candidate.resolve() == path.resolve() or (
                candidate.exists() and path.exists() and candidate.samefile(path)
            ):
                raise OnnxfuseError(f"output {candidate}: is an input file ({path}); choose another -o")


def _external_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in proto.graph.initializer if external_data_helper.uses_external_data(t)]


def _packed_size(proto: onnx.ModelProto, folder: Path) -> int:
    lengths = sum(int(external_data_helper.ExternalDataInfo(t).length or 0) for t in _external_tensors(proto))
    return proto.ByteSize() + lengths + 64 * len(proto.graph.initializer)


def _write_self_contained(proto: onnx.ModelProto, folder: Path, handle) -> None:
    """Protobuf bytes of the model with every weight inline, written one tensor at a time.

    The graph (field 7) is written as its other fields followed by one
    `initializer` entry per tensor whose `raw_data` is copied from the data file,
    so the whole model never sits in memory.
    """
    external = _external_tensors(proto)
    for graph in _subgraphs(proto.graph):
        for tensor in graph.initializer:
            if external_data_helper.uses_external_data(tensor):
                external_data_helper.load_external_data_for_tensor(tensor, str(folder))
                tensor.data_location = onnx.TensorProto.DEFAULT
                del tensor.external_data[:]
    graph = onnx.GraphProto()
    graph.CopyFrom(proto.graph)
    inline = [t for t in graph.initializer if not external_data_helper.uses_external_data(t)]
    del graph.initializer[:]
    graph.initializer.extend(inline)
    heads = [_tensor_head(t) for t in external]
    graph_bytes = graph.SerializeToString(deterministic=True)
    graph_length = len(graph_bytes) + sum(_field_length(5, len(head) + _field_length(9, n)) for head, n in heads)
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    model.ClearField("graph")
    handle.write(model.SerializeToString(deterministic=True))
    handle.write(_key(7) + _varint(graph_length) + graph_bytes)
    data_files: dict[str, object] = {}
    with contextlib.ExitStack() as stack:
        for tensor, (head, length) in zip(external, heads):
            info = external_data_helper.ExternalDataInfo(tensor)
            if info.location not in data_files:
                data_files[info.location] = stack.enter_context(open(folder / info.location, "rb"))
            source = data_files[info.location]
            handle.write(_key(5) + _varint(len(head) + _field_length(9, length)) + head)
            handle.write(_key(9) + _varint(length))
            _copy(source, handle, offset=info.offset or 0, length=length)


def _tensor_head(tensor: onnx.TensorProto) -> tuple[bytes, int]:
    """A tensor's fields without its data, and its data length."""
    head = onnx.TensorProto()
    head.CopyFrom(tensor)
    length = int(external_data_helper.ExternalDataInfo(tensor).length or 0)
    del head.external_data[:]
    head.ClearField("data_location")
    return head.SerializeToString(deterministic=True), length


def _subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield attr.g
                yield from _subgraphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield sub
                    yield from _subgraphs(sub)


def _copy(source, handle, *, offset: int, length: int) -> None:
    """Copy bytes file to file in the kernel where it can (`copy_file_range`), else in chunks."""
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
                raise OSError("staged external data ended early")
            position, remaining = position + done, remaining - done
        handle.seek(0, os.SEEK_END)
    source.seek(offset + length - remaining)
    while remaining:
        chunk = source.read(min(remaining, 1 << 22))
        if not chunk:
            raise OSError("staged external data ended early")
        handle.write(chunk)
        remaining -= len(chunk)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


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


def fused_metadata(
    *,
    features: tuple[str, ...],
    classes: tuple | None,
    sources: list[dict],
    fusion: dict,
    version: str,
) -> dict[str, str]:
    """The contract's `metadata_props`, each a sorted JSON string."""
    return {
        "onnxfuse.features": metadata_json(list(features)),
        "onnxfuse.classes": metadata_json(list(classes) if classes is not None else None),
        "onnxfuse.sources": metadata_json(sources),
        "onnxfuse.fusion": metadata_json(fusion),
        "onnxfuse.version": metadata_json(version),
    }
