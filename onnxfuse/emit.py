"""Write the fused file: deterministic bytes, one file below 2 GB, atomically and only once verified."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from onnxfuse.errors import OnnxfuseError
from onnxfuse.pack import INLINE_LIMIT, serialize, write_packed

PROTOBUF_LIMIT = 2**31 - 1
_MARGIN = 1 << 20
PACKED, VIEW, LARGE = "packed.onnx", "view.onnx", "fused.onnx"


@dataclasses.dataclass(frozen=True)
class Staged:
    """The fused file, complete in the workspace: `view` is what verify reads, `moves` what emit renames."""

    view: Path
    moves: tuple[tuple[Path, Path], ...]  # (temporary, destination), weights first


def data_name(out: Path) -> str:
    """The external-data file beside OUT (`fused.onnx` -> `fused.data`), used only above 2 GB."""
    return out.with_suffix(".data").name if out.suffix else out.name + ".data"


@contextlib.contextmanager
def workspace(out: Path, inputs: list[Path]) -> Iterator[Path]:
    """A temp folder in OUT's folder (so `os.replace` is atomic), removed whatever happens.

    The name is chosen first and the folder made inside the `try`, so an interrupt
    landing right after it exists still removes it; a name someone else holds is
    never touched.
    """
    check_output(out, inputs)
    for _ in range(100):
        folder = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
        mine = True
        try:
            try:
                os.mkdir(folder, 0o700)
            except FileExistsError:
                mine = False
                continue
            except OSError as exc:  # e.g. a read-only file system, where even root cannot write
                mine = False
                raise OnnxfuseError(f"output {out}: cannot write in {out.parent} ({exc.strerror})") from exc
            yield folder
            return
        finally:
            if mine:
                shutil.rmtree(folder, ignore_errors=True)
    raise OnnxfuseError(f"output {out}: cannot make a temporary folder in {out.parent}")


def stage(model: ir.Model, folder: Path, *, out: Path, metadata: Mapping[str, str]) -> Staged:
    """Write the final bytes into the workspace, once.

    Rules: metadata is set as given (sorted); below protobuf's 2 GB limit the file
    is self-contained, streamed tensor by tensor from the sources' memory-mapped
    weights (never a second copy in memory), and verify reads those very bytes
    through a small view model; above the limit the weights go to one `OUT.data`.
    The model's graph and weights are not changed.
    """
    model.metadata_props.clear()
    model.metadata_props.update(sorted(metadata.items()))
    _keep_strings_inline(model)  # also makes string tables (e.g. class labels) serializable as bytes
    serialized = serialize(model)
    if serialized.size < PROTOBUF_LIMIT - _MARGIN:
        packed = write_packed(serialized, folder / PACKED)
        onnx.save(packed.view(), str(folder / VIEW))
        return Staged(view=folder / VIEW, moves=((packed.path, out),))
    data = data_name(out)
    save_external(model, folder / LARGE, data)
    return Staged(view=folder / LARGE, moves=((folder / data, out.parent / data), (folder / LARGE, out)))


def emit(staged: Staged) -> None:
    """Move the verified files into place: each complete and fsynced before its `os.replace`."""
    for temporary, destination in staged.moves:
        _fsync(temporary)
        os.replace(temporary, destination)


def save_external(model: ir.Model, path: Path, data: str) -> None:
    """Save with every tensor over 1 KB in the external-data file `data` beside `path`."""
    _keep_strings_inline(model)
    ir.save(model, path, external_data=data, size_threshold_bytes=INLINE_LIMIT)


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


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


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
