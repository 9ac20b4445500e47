"""Write the fused file: deterministic sealed bytes, one file below 2 GB, atomically and only once verified."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx import external_data_helper

from onnxfuse.digest import (
    DIGEST_KEY,
    PLACEHOLDER,
    check_recorded,
    data_name,
    external_locations,
    is_data_name,
    seal,
    seal_bytes,
)
from onnxfuse.errors import OnnxfuseError, VerificationError, warn
from onnxfuse.load import file_sha256
from onnxfuse.pack import keep_strings_inline, packed_bytes, save_external, serialize, write_packed

PROTOBUF_LIMIT = 2**31 - 1
_MARGIN = 1 << 20
PACKED, VIEW, LARGE = "packed.onnx", "view.onnx", "fused.onnx"
_UNNAMED = "weights.data"  # the weights above 2 GB until their hash names them


@dataclasses.dataclass(frozen=True)
class Staged:
    """The fused file, complete in the workspace: `view` is what verify reads, `moves` what emit renames."""

    view: Path | bytes  # in memory (no workspace): the file's bytes, which verify reads as they are
    moves: tuple[tuple[Path, Path], ...]  # (temporary, destination), OUT last; none in memory
    digest: str | None = None  # the sha256 sealed into OUT's `onnxfuse.digest`

    @property
    def sealed(self) -> bytes | None:
        """The sealed file, when it was staged in memory."""
        return self.view if isinstance(self.view, bytes) else None


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


def stage(
    model: ir.Model, folder: Path | None, *, out: Path | None, metadata: Mapping[str, str], limit: int = PROTOBUF_LIMIT
) -> Staged:
    """Write the final bytes into the workspace, once, and seal them.

    Rules: metadata is set as given (sorted) plus `onnxfuse.digest`, the sha256 of
    the written bytes (see `onnxfuse.digest`); below `limit` (protobuf's 2 GB) the
    file is self-contained, streamed tensor by tensor from the sources'
    memory-mapped weights (never a second copy in memory), and verify reads those
    very bytes through a small view model; above it the weights go to one
    `OUT-stem.<16 hex of their sha256>.data` that OUT names. The model's graph and
    weights are not changed. Without a `folder` (the Python API without an output)
    the same bytes are built and sealed in memory, below 2 GB only.
    """
    model.metadata_props.clear()
    model.metadata_props.update(sorted({**metadata, DIGEST_KEY: PLACEHOLDER}.items()))
    keep_strings_inline(model)  # also makes string tables (e.g. class labels) serializable as bytes
    serialized = serialize(model)
    if folder is None:
        if serialized.size >= limit - _MARGIN:
            raise OnnxfuseError("onnxfuse.merge: the fused model is over 2 GB, so its weights go to a second file; "
                                "give output='fused.onnx' to write it")  # fmt: skip
        sealed, digest = seal_bytes(packed_bytes(serialized))
        return Staged(view=sealed, moves=(), digest=digest)
    if serialized.size < limit - _MARGIN:
        packed = write_packed(serialized, folder / PACKED)
        digest = seal(packed.path)
        onnx.save(packed.view(), str(folder / VIEW))  # the view's metadata keeps the placeholder: verify ignores it
        return Staged(view=folder / VIEW, moves=((packed.path, out),), digest=digest)
    data = _save_large(model, folder / LARGE, out)
    moves = ((folder / data, out.parent / data),) if data else ()
    return Staged(view=folder / LARGE, moves=(*moves, (folder / LARGE, out)), digest=seal(folder / LARGE))


def _save_large(model: ir.Model, path: Path, out: Path) -> str | None:
    """The graph at `path`, every weight in one file beside it named by its content hash; that name, if any."""
    save_external(model, path, _UNNAMED)
    weights = path.parent / _UNNAMED
    if not weights.is_file() or weights.stat().st_size == 0:  # no tensor over 1 KB: nothing to put beside OUT
        weights.unlink(missing_ok=True)
        return None
    name = data_name(out, file_sha256(weights))
    os.replace(weights, path.parent / name)
    proto = onnx.load(str(path), load_external_data=False)  # the graph only: every weight is external
    for tensor in external_data_helper._get_all_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = name
    path.write_bytes(proto.SerializeToString(deterministic=True))
    return name


def check_sealed(staged: Staged) -> None:
    """Verify's digest check at merge: the staged OUT records the digest emit just computed of its bytes."""
    if staged.digest is None:
        raise VerificationError("the staged file was not sealed")
    check_recorded(staged.sealed if staged.sealed is not None else staged.moves[-1][0], staged.digest)


def emit(staged: Staged) -> None:
    """Move the verified files into place, OUT last: its rename is the one atomic switch.

    Rules: each file is complete and fsynced before its `os.replace`; the weights'
    file (named by its content hash, so it never overwrites another run's) goes
    first, then OUT, so a reader, a kill or a failure at any point leaves an OUT
    paired with its own weights; onnxfuse merges into one folder switch one at a
    time (a lock on the folder); after the switch, the weights' files the previous
    OUT named (onnxfuse's names for OUT only) that the new OUT does not name are
    removed; if the switch fails, the files moved in for it are removed unless OUT
    names them.
    """
    *first, (temporary, out) = staged.moves
    with _locked(out.parent) as folder:
        previous = owned_data_files(out)
        moved = []
        try:
            for source, destination in first:
                _fsync(source)
                os.replace(source, destination)
                moved.append(destination)
            os.fsync(folder)
            _fsync(temporary)
            os.replace(temporary, out)
        except BaseException:
            _remove_unnamed(out, [path for path in moved if is_data_name(path.name, out)])
            raise
        os.fsync(folder)
        _remove_unnamed(out, [*previous, *_left_by_killed_merges(out)])


def _left_by_killed_merges(out: Path) -> list[Path]:
    """Content-named weights' files of OUT that a merge killed between its two renames left behind: under the
    folder lock no running merge has one outside its workspace, so OUT's switch may remove those OUT does not name."""
    return [path for path in out.parent.iterdir() if path.is_file() and is_data_name(path.name, out, hashed_only=True)]


def owned_data_files(out: Path) -> list[Path]:
    """The weights' files beside OUT that OUT names and onnxfuse would have written for it (none if unreadable)."""
    return [out.parent / name for name in _locations(out) if is_data_name(name, out)]


def _locations(out: Path) -> list[str]:
    if not out.is_file():
        return []
    try:
        return external_locations(out)
    except (OSError, ValueError):  # not an ONNX file (e.g. something the user had there): it names no weights
        return []


def _remove_unnamed(out: Path, candidates: Sequence[Path]) -> None:
    named = set(_locations(out))
    for path in candidates:
        if path.name not in named:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[int]:
    """An exclusive lock on the folder (released when the process ends, however): switches one at a time."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield descriptor
    finally:
        os.close(descriptor)


def write_file(path: Path, data: bytes) -> None:
    """`data` at `path` atomically: a temp file beside it, fsynced, then one rename (no partial file, ever)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        temporary.write_bytes(data)
        _fsync(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def metadata_json(value: object) -> str:
    """Metadata values: JSON with sorted keys, so equal inputs give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def output_path(raw: str | os.PathLike, what: str = "output", *, suffix: str = ".onnx") -> Path:
    """The file a user named to write, as a Path, checked before `Path` drops a trailing `/`.

    Rules: a name ending in a path separator, or naming an existing folder, is an
    error (nothing is written); a name not ending in `suffix` gets one warning
    (it is still written where the user said).
    """
    text = os.fspath(raw)
    separators = tuple(sep for sep in (os.sep, os.altsep, "/") if sep)
    if text.endswith(separators) or Path(text).is_dir():
        raise OnnxfuseError(f"{what} {text}: is a folder; give a file name like fused{suffix}")
    path = Path(text)
    if path.suffix.lower() != suffix:
        warn(f"{what} {text} does not end in {suffix}; it is written under that name, but tools look for {suffix}")
    return path


def check_output(out: Path, inputs: list[Path]) -> None:
    if not out.parent.is_dir():
        raise OnnxfuseError(f"output {out}: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise OnnxfuseError(f"output {out}: folder {out.parent} is not writable")
    if out.is_dir():
        raise OnnxfuseError(f"output {out}: is a folder; give a file name")
    for path in inputs:
        for candidate in (out, *owned_data_files(out)):  # OUT is replaced, the weights' files it names removed
            for used in (path, *_external_files(path)):
                if candidate.resolve() == used.resolve() or (
                    candidate.exists() and used.exists() and candidate.samefile(used)
                ):
                    what = f"an input file ({path})" if used == path else f"the weights of input {path}"
                    raise OnnxfuseError(f"output {candidate}: is {what}; choose another -o")


def _external_files(path: Path) -> list[Path]:
    """The external-data files an input model names (none for data files or unreadable ones)."""
    if path.suffix != ".onnx":
        return []
    return [path.parent / name for name in _locations(path)]


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
