"""`onnxfuse verify`: re-run the equivalence checks of an existing fused file against its sources."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from onnxfuse.bind import bind
from onnxfuse.data import column_names, read_table
from onnxfuse.digest import MissingDigest, check_digest
from onnxfuse.errors import OnnxfuseError, VerificationError
from onnxfuse.feeds import source_rows, verification_feeds
from onnxfuse.headcheck import verify_head
from onnxfuse.load import file_sha256, load_model
from onnxfuse.normalize import normalize
from onnxfuse.spec import ModelSpec
from onnxfuse.verify import verify


def reverify(fused: Path, models: Sequence[Path], *, data: Path | None = None, seed: int = 0) -> int:
    """Check `fused` against the source files; return how many sources were compared.

    Rules: sources are matched to the file's `onnxfuse.sources` by sha256 (in any
    order; a file whose hash is not among them raises VerificationError naming it);
    every source must be given; inputs are bound to the recorded columns; rows come
    from `data` or are seeded; on them each spliced copy equals its source file
    (`verify`) and the head, fed the source files' outputs, gives the file's outputs
    (`verify_head`); then the file's bytes and weights' files must be those merge
    sealed (`onnxfuse.digest`; a file without one fails: nothing proves its head).
    Bad input raises OnnxfuseError; a difference VerificationError.
    """
    proto = load_model(ModelSpec(fused), 0).proto
    sources = recorded_sources(_metadata(proto), fused)
    if len(models) != len(sources):
        raise OnnxfuseError(f"{fused.name} was fused from {len(sources)} models; {len(models)} given")
    ordered = match_by_hash(sources, models, fused)
    specs = [ModelSpec(path, _features(entry), entry.get("name")) for path, entry in zip(ordered, sources)]
    loaded = [load_model(spec, index) for index, spec in enumerate(specs, start=1)]
    opsets = {o.domain: o.version for o in proto.opset_import}
    normalized, _ = normalize(loaded, target_opset=opsets.get(""))
    table = read_table(data) if data is not None else None
    recorded_inputs = _metadata(proto)
    dtype = recorded_inputs.get("onnxfuse.features_dtype", '"float32"')
    binding = bind(normalized, data_columns=column_names(table), features_dtype=str(_json(dtype, fused)))
    recorded = json.loads(_metadata(proto)["onnxfuse.features"])
    if list(binding.features) != recorded:
        raise VerificationError(f"{fused.name}: its sources read columns {binding.features}, the file {recorded}")
    strings = _json(recorded_inputs.get("onnxfuse.string_inputs", "[]"), fused)
    if list(binding.strings) != strings:
        raise VerificationError(f"{fused.name}: its sources read string columns {binding.strings}, the file {strings}")
    feeds = verification_feeds(binding, table, data, seed=seed)
    with _scratch(fused) as scratch:
        verify(fused, normalized, binding, feeds=feeds, scratch=scratch, exact=source_rows(binding, table))
        verify_head(fused, normalized, binding, feeds=feeds, scratch=scratch)
    _check_digest(fused)
    return len(loaded)


def _check_digest(fused: Path) -> None:
    """Last, once the outputs are known to agree: so a difference they show is named first."""
    try:
        check_digest(fused)
    except MissingDigest as exc:
        raise VerificationError(
            f"{exc}: its sources' copies and head agree on the verification rows, but other edits cannot be "
            "ruled out; merge it again to seal it"
        ) from exc
    except VerificationError as exc:
        raise VerificationError(f"its sources' copies and head agree on the verification rows, but {exc}") from exc


def _json(text: str, fused: Path) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise OnnxfuseError(f"{fused}: its onnxfuse metadata is not JSON ({text[:40]!r})") from exc


def _metadata(proto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def recorded_sources(metadata: dict[str, str], fused: Path) -> list[dict]:
    """The file's `onnxfuse.sources`, checked: one entry with a sha256 per source."""
    if "onnxfuse.sources" not in metadata or "onnxfuse.features" not in metadata:
        raise OnnxfuseError(f"{fused}: not written by onnxfuse merge (no onnxfuse.sources metadata)")
    try:
        sources = json.loads(metadata["onnxfuse.sources"])
    except json.JSONDecodeError as exc:
        raise OnnxfuseError(f"{fused}: its onnxfuse.sources metadata is not JSON") from exc
    if not isinstance(sources, list) or not all(isinstance(s, dict) and "sha256" in s for s in sources):
        raise OnnxfuseError(f"{fused}: its onnxfuse.sources metadata has no sha256 per source")
    return sources


def match_by_hash(sources: list[dict], models: Sequence[Path], fused: Path) -> list[Path]:
    """The given files in the recorded sources' order, matched by sha256 (any order given; each must match)."""
    for path in models:
        if not path.is_file():
            raise OnnxfuseError(f"model {path}: no such file")
    hashes = {path: file_sha256(path) for path in models}
    ordered = []
    for index, entry in enumerate(sources, start=1):
        match = [path for path, digest in hashes.items() if digest == entry["sha256"]]
        if not match:
            unmatched = [p.name for p, d in hashes.items() if d not in {s["sha256"] for s in sources}]
            given = (
                f"these differ from every recorded source: {', '.join(unmatched)}"
                if unmatched
                else f"the files given ({', '.join(p.name for p in models)}) repeat another source"
            )
            raise VerificationError(
                f"source {index} of {fused.name} ('{entry.get('file', '?')}', sha256 {entry['sha256'][:12]}…) "
                f"is not among the given files; {given}"
            )
        ordered.append(match[0])
    return ordered


def _features(entry: dict) -> tuple[str, ...] | None:
    features = entry.get("features")
    return tuple(features) if isinstance(features, list) else None


@contextlib.contextmanager
def _scratch(fused: Path):
    """A hidden temp file beside the fused file: external data resolves only below a model's folder."""
    try:
        handle, name = tempfile.mkstemp(prefix=f".{fused.name}.", suffix=".verify.onnx", dir=fused.resolve().parent)
    except OSError as exc:
        raise OnnxfuseError(f"{fused.parent}: cannot write a temporary copy beside {fused.name} ({exc})") from exc
    os.close(handle)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
