"""The lowered file against the original in onnxruntime, on real rows with NaN cells: no transformation unverified.

Tolerances (the issue's): scores and probabilities within 1e-5; labels (int or string outputs) equal, except on
rows where the original itself is a near-tie (its top two scores within 1e-5, or a one-column score within 1e-5
of 0 or 0.5), where summing in another order may pick the other class."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxfuse.emit import PROTOBUF_LIMIT
from onnxfuse.errors import OnnxfuseError, VerificationError
from onnxfuse.lower import lower_model

TIE = 1e-5
NAN_EVERY = 7  # one float cell in this many rows becomes NaN, so the missing-value paths are compared too


def lower_fused(model: ir.Model, feeds: Mapping[str, np.ndarray], labels: Sequence[str]) -> ir.Model:
    """The fused graph with every ai.onnx.ml node rewritten, checked against the graph as it was on `feeds`;
    `labels` name the sources (`model 2 (b.onnx)`) for errors about their nodes (`m2/...`).

    Weights held as external data are read in (the core file is rewritten as protobuf)."""
    weights = sum(v.const_value.nbytes for g in model.graphs() for v in g.initializers.values() if v.const_value)
    if weights > PROTOBUF_LIMIT:
        raise OnnxfuseError(f"--ops core: the fused model's weights take {weights / 2**30:.1f} GB; core files are "
                            "written below protobuf's 2 GB limit only: use --ops standard")  # fmt: skip
    ir.external_data.load_to_model(model)
    original = ir.serde.serialize_model(model)
    lowered = lower_model(original, "the fused model", owner=lambda name: _owner(name, labels))
    check_lowered(original.SerializeToString(), lowered.SerializeToString(), with_missing(feeds), "--ops core")
    return ir.serde.deserialize_model(lowered)


def _owner(node: str, labels: Sequence[str]) -> str:
    """`m2/...` is model 2's node, `fusion/...` the head's."""
    prefix = node.split("/", 1)[0]
    if prefix.startswith("m") and prefix[1:].isdigit() and 0 < int(prefix[1:]) <= len(labels):
        return labels[int(prefix[1:]) - 1]
    return "the fusion head" if prefix == "fusion" else "the fused model"


def with_missing(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The rows again, then a copy of them with one float cell per NAN_EVERY rows set to NaN."""
    rng = np.random.default_rng(0)
    extended = {}
    for name, value in feeds.items():
        value = np.asarray(value)
        copy = value.copy()
        if copy.dtype.kind == "f" and copy.ndim == 2 and len(copy):
            rows = np.arange(0, len(copy), NAN_EVERY)
            copy[rows, rng.integers(0, copy.shape[1], size=len(rows))] = np.nan
        extended[name] = np.concatenate([value, copy]) if value.ndim else value
    return extended


def check_lowered(original: bytes, lowered: bytes, feeds: Mapping[str, np.ndarray], what: str) -> None:
    """Raise VerificationError unless the lowered model gives the original's outputs (see the module's rules)."""
    expected, actual = _run(original, feeds), _run(lowered, feeds)
    ties = _near_ties(expected)
    for name, wanted in expected.items():
        got = np.asarray(actual[name])
        wanted = np.asarray(wanted)
        if got.shape != wanted.shape or got.dtype != wanted.dtype:
            raise VerificationError(f"{what}: output '{name}' is {got.dtype}{list(got.shape)} where the original "
                                    f"gives {wanted.dtype}{list(wanted.shape)}")  # fmt: skip
        if wanted.dtype.kind in "fc":
            if not np.allclose(got, wanted, rtol=TIE, atol=TIE, equal_nan=True):
                worst = float(np.nanmax(np.abs(got.astype(np.float64) - wanted.astype(np.float64))))
                raise VerificationError(f"{what}: output '{name}' differs from the original by up to {worst:.3g}")
            continue
        differ = (got != wanted).reshape(len(wanted), -1).any(axis=1) if wanted.ndim else np.array([got != wanted])
        wrong = int(np.sum(differ & ~ties[: len(differ)]))
        if wrong:
            raise VerificationError(f"{what}: output '{name}' differs from the original on {wrong} rows that are "
                                    "no near-tie")  # fmt: skip


def _near_ties(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per row: whether some float output of the original is a near-tie there."""
    rows = max((len(v) for v in outputs.values() if np.ndim(v)), default=0)
    ties = np.zeros(rows, dtype=bool)
    for value in outputs.values():
        value = np.asarray(value)
        if value.dtype.kind != "f" or value.ndim == 0 or len(value) != rows:
            continue
        flat = value.reshape(rows, -1).astype(np.float64)
        if flat.shape[1] >= 2:
            top = np.sort(flat, axis=1)[:, -2:]
            ties |= top[:, 1] - top[:, 0] <= TIE * np.maximum(1.0, np.abs(top[:, 1]))
        else:
            ties |= (np.abs(flat[:, 0]) <= TIE) | (np.abs(flat[:, 0] - 0.5) <= TIE)
    return ties


def _run(model: bytes, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted})))
