"""Read source models without pulling their weights into memory, and refuse unsafe files."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from google.protobuf.message import DecodeError, Message
from onnx import external_data_helper

from onnxfuse.errors import OnnxfuseError, reason

if TYPE_CHECKING:
    from onnxfuse.spec import ModelSpec

_PROTOBUF_LIMIT = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class SourceModel:
    """One source file as read: its proto keeps external weights as references."""

    index: int
    spec: ModelSpec
    sha256: str
    proto: onnx.ModelProto
    serialized: bytes | None = dataclasses.field(default=None, repr=False)  # a model given in memory

    @property
    def path(self) -> Path:
        return self.spec.path

    @property
    def file(self) -> str | bytes:
        """What an onnxruntime session loads: the file's path, or the bytes of a model given in memory."""
        return self.serialized if self.serialized is not None else str(self.path)

    @property
    def label(self) -> str:
        """How messages name this model: `model 2 (b.onnx)`."""
        return f"model {self.index} ({self.path.name})"

    @property
    def name(self) -> str:
        return self.spec.name or self.path.stem


def load_model(spec: ModelSpec, index: int) -> SourceModel:
    """Read model `index` (1-based; 0 for a model on its own, as `inspect` reads it).

    Rules: the file must be a readable ONNX protobuf with a graph and outputs; its
    external-data references must stay inside the model's folder (no absolute
    paths, no `..`, no symlink out) and point at existing, long-enough files;
    weights are never read here (onnx-ir memory-maps them later).
    """
    label = f"model {index} ({spec.path})" if index else str(spec.path)
    if spec.proto is not None:
        return _in_memory(spec, index, label)
    proto = _read_proto(spec.path, label)
    _check_structure(proto, label)
    _check_external_data(proto, spec.path, label)
    _check_model(spec.path, label)
    return SourceModel(index=index, spec=spec, sha256=file_sha256(spec.path), proto=proto)


def _in_memory(spec: ModelSpec, index: int, label: str) -> SourceModel:
    """A model handed over as a proto: checked as a file is; its sha256 is that of the file `onnx.save` writes."""
    proto = spec.proto
    if any(external_data_helper.uses_external_data(t) for t in external_data_helper._get_all_tensors(proto)):
        raise OnnxfuseError(f"{label}: a ModelProto whose weights are external data; give its path instead")
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise OnnxfuseError(f"{label}: over protobuf's 2 GB limit; save it with external data and give its path")
    _check_structure(proto, label)
    serialized = proto.SerializeToString()
    try:
        onnx.checker.check_model(serialized)
    except (onnx.checker.ValidationError, RuntimeError, ValueError) as exc:
        raise OnnxfuseError(f"{label}: invalid ONNX model: {reason(exc)}") from exc
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)  # the caller's proto is never changed, nor read again
    sha256 = hashlib.sha256(serialized).hexdigest()
    return SourceModel(index=index, spec=spec, sha256=sha256, proto=copy, serialized=serialized)


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks so large files never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_proto(path: Path, label: str) -> onnx.ModelProto:
    if not path.is_file():
        raise OnnxfuseError(f"{label}: no such file")
    if not os.access(path, os.R_OK):
        raise OnnxfuseError(f"{label}: file is not readable")
    size = path.stat().st_size
    if size == 0:
        raise OnnxfuseError(f"{label}: file is empty, not an ONNX model")
    if size > _PROTOBUF_LIMIT:
        raise OnnxfuseError(f"{label}: {size} bytes is over protobuf's 2 GB limit; save its weights as external data")
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError, OSError) as exc:
        raise OnnxfuseError(f"{label}: not a readable ONNX model ({reason(exc)})") from exc


def _check_structure(proto: onnx.ModelProto, label: str) -> None:
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.graph.output:
        raise OnnxfuseError(f"{label}: not an ONNX model (no IR version, graph or outputs); truncated?")
    if proto.ir_version > onnx.IR_VERSION:
        raise OnnxfuseError(
            f"{label}: IR version {proto.ir_version} is newer than the installed onnx "
            f"{onnx.__version__} knows ({onnx.IR_VERSION})"
        )
    if broken := _undecodable_text(proto):
        raise OnnxfuseError(f"{label}: {broken} is not valid UTF-8; the file is corrupted")


def _undecodable_text(message: Message) -> str | None:
    """The first string field protobuf could not decode (it hands those back as bytes), as `field b'...'`."""
    for field, value in message.ListFields():
        if field.type not in (field.TYPE_STRING, field.TYPE_MESSAGE):
            continue
        for item in value if field.is_repeated else (value,):
            if field.type == field.TYPE_MESSAGE:
                if found := _undecodable_text(item):
                    return found
            elif isinstance(item, bytes):
                return f"{field.containing_type.name}.{field.name} {item[:40]!r}"
    return None


def _check_model(path: Path, label: str) -> None:
    try:
        onnx.checker.check_model(str(path))  # by path, so external data resolves beside the model
    except (onnx.checker.ValidationError, RuntimeError, ValueError) as exc:
        raise OnnxfuseError(f"{label}: invalid ONNX model: {reason(exc)}") from exc


def _check_external_data(proto: onnx.ModelProto, path: Path, label: str) -> None:
    folder = path.resolve().parent
    for tensor in external_data_helper._get_all_tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        try:
            info = external_data_helper.ExternalDataInfo(tensor)
        except (ValueError, TypeError) as exc:
            raise OnnxfuseError(f"{label}: tensor '{tensor.name}' has invalid external-data fields ({exc})") from exc
        where = f"{label}: tensor '{tensor.name}' external data '{info.location}'"
        target = _safe_location(folder, info.location, where)
        size = target.stat().st_size
        needed = _tensor_bytes(tensor)
        offset = info.offset or 0
        length = info.length if info.length is not None else needed
        if needed is not None and length != needed:
            raise OnnxfuseError(f"{where}: length {length} but the tensor needs {needed} bytes")
        if length is not None and offset + length > size:
            raise OnnxfuseError(f"{where}: needs bytes {offset}..{offset + length} but the file has {size}; truncated?")


def _safe_location(folder: Path, location: str, where: str) -> Path:
    """The external-data file, refused when it escapes the model's folder."""
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")):
        raise OnnxfuseError(f"{where}: absolute or empty paths are refused")
    target = (folder / location).resolve()
    if folder not in target.parents:
        raise OnnxfuseError(f"{where}: the path leaves the model's folder {folder}")
    if not target.is_file():
        raise OnnxfuseError(f"{where}: no such file beside the model")
    return target


def _tensor_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes a fixed-width tensor takes; None for strings."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError, TypeError):
        return None
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    return count * np.dtype(dtype).itemsize
