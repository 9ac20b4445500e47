"""The fused file's digest: sealed into its metadata when emit writes it, recomputed by `onnxfuse verify`.

`onnxfuse.digest` holds `"sha256:<hex>"`, the sha256 of the file's exact bytes with
that hex replaced by 64 zeros (the placeholder emit writes first), so emit hashes the
finished file once and patches the value in place (same length: no offset moves).
Above 2 GB the weights live in `OUT-stem.<16 hex of their sha256>.data`: OUT's
bytes (hence its digest) name that hash, and verify rehashes the data file too.
Files are read in chunks (and protobuf fields walked with seeks), never whole.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import onnx
from google.protobuf.message import DecodeError

from onnxfuse.errors import VerificationError
from onnxfuse.load import file_sha256

DIGEST_KEY = "onnxfuse.digest"
_SCHEME = "sha256:"
PLACEHOLDER = json.dumps(_SCHEME + "0" * 64)  # the metadata value as written before sealing
CHUNK = 1 << 20
_HASHED_DATA = re.compile(r"\.([0-9a-f]{16})\.data$")
# protobuf field numbers: ModelProto.graph, .metadata_props; GraphProto.initializer; TensorProto.external_data
_GRAPH, _METADATA, _INITIALIZER, _EXTERNAL_DATA = 7, 14, 5, 13
# ModelProto's fields and wire types (0 varint, 2 length-delimited): anything else is not an ONNX model
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


class MissingDigest(VerificationError):
    """The file records no digest (written before onnxfuse sealed its files)."""


def data_name(out: Path, sha256: str) -> str:
    """The weights' file beside OUT above 2 GB: `fused.onnx` -> `fused.<first 16 hex of its sha256>.data`."""
    return f"{out.stem}.{sha256[:16]}.data"


def is_data_name(name: str, out: Path, *, hashed_only: bool = False) -> bool:
    """Whether `name` is an onnxfuse weights file of OUT (today's content-named one, or the older `fused.data`)."""
    match = _HASHED_DATA.search(name)
    hashed = match is not None and name[: match.start()] == out.stem
    return hashed or (not hashed_only and name == f"{out.stem}.data")


def seal(path: Path) -> str:
    """Hash the file as written (its digest entry holds the placeholder), write the hex into it, return the hex.

    Rules: the placeholder entry occurs exactly once; the file keeps its length.
    """
    placeholder = _entry(PLACEHOLDER)
    hexdigest, offsets = _hash(path, placeholder, placeholder)
    if len(offsets) != 1:
        raise VerificationError(f"{path.name}: {len(offsets)} {DIGEST_KEY} placeholders where emit wrote one")
    with open(path, "r+b") as handle:
        handle.seek(offsets[0] + len(placeholder) - 65)  # the hex, before the value's closing quote
        handle.write(hexdigest.encode())
    return hexdigest


def seal_bytes(data: bytes) -> tuple[bytes, str]:
    """`seal` for a file built in memory: the same hash of the same bytes, the hex written into a copy."""
    placeholder = _entry(PLACEHOLDER)
    if data.count(placeholder) != 1:
        raise VerificationError(f"{data.count(placeholder)} {DIGEST_KEY} placeholders where emit wrote one")
    hexdigest = hashlib.sha256(data).hexdigest()
    return data.replace(placeholder, _entry(json.dumps(_SCHEME + hexdigest))), hexdigest


def check_recorded(path: Path | bytes, hexdigest: str) -> None:
    """Merge's own check: the file on disk (or in memory) records the digest emit computed (no second pass)."""
    if isinstance(path, bytes):
        name, recorded = "the fused model", _metadata_of(path).get(DIGEST_KEY)
    else:
        name, recorded = path.name, read_metadata(path).get(DIGEST_KEY)
    if recorded != json.dumps(_SCHEME + hexdigest):
        raise VerificationError(f"{name}: {DIGEST_KEY} is {recorded}, emit computed {_SCHEME}{hexdigest}")


def _metadata_of(data: bytes) -> dict[str, str]:
    return {entry.key: entry.value for entry in onnx.load_model_from_string(data).metadata_props}


def check_digest(path: Path) -> None:
    """Raise VerificationError unless the file's bytes, and its data files, are those emit sealed.

    Rules: the recorded `onnxfuse.digest` equals the sha256 of the bytes with the
    recorded hex put back to the placeholder; every external-data file is named
    `<stem>.<16 hex>.data` and its content hashes to that name; a file without a
    digest raises MissingDigest.
    """
    recorded = read_metadata(path).get(DIGEST_KEY)
    if recorded is None:
        raise MissingDigest(f"{path.name} records no {DIGEST_KEY} (written before onnxfuse sealed its files)")
    value = _parse(recorded, path)
    hexdigest, _ = _hash(path, _entry(recorded), _entry(PLACEHOLDER))
    if hexdigest != value:
        raise VerificationError(
            f"its bytes are not those onnxfuse merge wrote and verified ({DIGEST_KEY} {_SCHEME}{value[:16]}… "
            f"recorded, the file hashes to {_SCHEME}{hexdigest[:16]}…)"
        )
    for location in external_locations(path):
        _check_data_file(path, location)


def _check_data_file(path: Path, location: str) -> None:
    match = _HASHED_DATA.search(location)
    if match is None:
        raise VerificationError(f"its weights file {location} carries no content hash in its name, so no digest")
    actual = file_sha256(path.parent / location)
    if not actual.startswith(match.group(1)):
        raise VerificationError(
            f"its weights file {location} is not the one it was written with (content sha256 {actual[:16]}…)"
        )


def _parse(recorded: str, path: Path) -> str:
    try:
        value = json.loads(recorded)
    except json.JSONDecodeError:
        value = None
    if not (isinstance(value, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", value)):
        raise VerificationError(f'{path.name}: {DIGEST_KEY} is {recorded[:80]!r}, not a JSON "sha256:<hex>"')
    return value.removeprefix(_SCHEME)


def _entry(value: str) -> bytes:
    """The digest's metadata entry as protobuf writes it: the bytes searched for in the file."""
    return onnx.StringStringEntryProto(key=DIGEST_KEY, value=value).SerializeToString()


def _hash(path: Path, find: bytes, replace: bytes) -> tuple[str, list[int]]:
    """sha256 of the file read in chunks with every `find` read as `replace` (same length); where they were.

    One buffer of CHUNK bytes (plus the tail an entry may straddle) is reused: nothing else is allocated.
    """
    digest, offsets = hashlib.sha256(), []
    keep = len(find) - 1
    buffer = bytearray(CHUNK + keep)
    view = memoryview(buffer)
    pending = position = 0  # `pending` bytes at the buffer's start, not yet hashed, begin at file offset `position`
    with open(path, "rb") as handle:
        while count := handle.readinto(view[pending:]):
            end = pending + count
            found = buffer.find(find, 0, end)
            while found >= 0:
                offsets.append(position + found)
                buffer[found : found + len(find)] = replace
                found = buffer.find(find, found + len(find), end)
            cut = max(end - keep, 0)
            digest.update(view[:cut])
            view[: end - cut] = bytes(view[cut:end])
            pending, position = end - cut, position + cut
    digest.update(view[:pending])
    return digest.hexdigest(), offsets


def read_metadata(path: Path) -> dict[str, str]:
    """The model's `metadata_props`, read without reading its graph or weights (ValueError if not protobuf)."""
    metadata = {}
    with open(path, "rb") as handle:
        for field, offset, length in _fields(handle, 0, path.stat().st_size, _MODEL_FIELDS):
            if field == _METADATA:
                entry = _entry_at(handle, offset, length)
                metadata[entry.key] = entry.value
    return metadata


def _entry_at(handle: BinaryIO, offset: int, length: int) -> onnx.StringStringEntryProto:
    handle.seek(offset)
    try:
        return onnx.StringStringEntryProto.FromString(handle.read(length))
    except DecodeError as exc:
        raise ValueError(f"not a key-value entry at byte {offset}") from exc


def external_locations(path: Path) -> list[str]:
    """The external-data files the main graph's initializers name, read without reading the weights.

    Raises ValueError on a file that is not protobuf."""
    locations = set()
    with open(path, "rb") as handle:
        for field, offset, length in _fields(handle, 0, path.stat().st_size, _MODEL_FIELDS):
            if field != _GRAPH:
                continue
            for tensor, start, size in _fields(handle, offset, offset + length):
                if tensor != _INITIALIZER:
                    continue
                for key, where, width in _fields(handle, start, start + size):
                    if key == _EXTERNAL_DATA:
                        entry = _entry_at(handle, where, width)
                        if entry.key == "location":
                            locations.add(entry.value)
    return sorted(locations)


def _fields(
    handle: BinaryIO, start: int, end: int, known: Mapping[int, int] | None = None
) -> Iterator[tuple[int, int, int]]:
    """(field number, offset, length) of each length-delimited protobuf field in [start, end), others skipped.

    Raises ValueError on bytes that are not protobuf (field 0, a bad wire type, a field
    running past `end`) or, with `known` ({field: wire type}), not that message: so
    garbage (text, zeros) is refused at its first bytes, not walked to its end."""
    position = start
    while position < end:
        handle.seek(position)
        tag, position = _varint(handle, position)
        field, wire = tag >> 3, tag & 7
        if field == 0 or (known is not None and known.get(field) != wire):
            raise ValueError(f"field {field} (wire type {wire}) at byte {position}: not this protobuf message")
        if wire == 0:
            _, position = _varint(handle, position)
        elif wire in (1, 5):
            position += 8 if wire == 1 else 4
        elif wire == 2:
            length, position = _varint(handle, position)
            if position + length > end:
                raise ValueError(f"a field of {length} bytes runs past byte {end}")
            yield field, position, length
            position += length
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {position}")


def _varint(handle: BinaryIO, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = handle.read(1)
        if not byte or shift > 63:
            raise ValueError(f"a bad varint at byte {position}")
        value |= (byte[0] & 0x7F) << shift
        shift, position = shift + 7, position + 1
        if byte[0] < 0x80:
            return value, position
