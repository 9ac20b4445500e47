"""The hold-out table over every hold-out row of data larger than the fit sample, streamed piece by piece.

Rules: a piece's hold-out rows (`sampling.held_out`) are read and run in onnxruntime through the spliced sources
with the head fitted on the training part built in (`fuse._holdout_model`), so the fused figures are the graph's own
and the head costs what it costs in the file; each comparable source alone answers as `train.answers` does in
memory. The from-scratch baseline is not streamed: a reference figure predicted by its learner outside the graph (a
boosting baseline costs more than the whole graph), it keeps its figures on the fit sample's hold-out rows, a
uniform sample of these (see `train.train_head`). `streaming.Accumulator`s sum the metrics, merged in the pieces'
order, so the engines (`engine.iter_pieces`: threads, or Ray actors that each build their own session) give the same
figures. Rows no head can answer (no source available, an infinite feature) and rows of a class the sample never saw
are counted, not scored.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from onnxfuse.bind import Binding
from onnxfuse.dataset import Piece, piece_batches, rows_at
from onnxfuse.errors import OnnxfuseError
from onnxfuse.evaluation import FUSED
from onnxfuse.feeds import bound_feeds
from onnxfuse.heads.base import LabelSpace
from onnxfuse.roles import OutputRole
from onnxfuse.sampling import SAMPLE_STREAM, Streamed, held_out, keys_at
from onnxfuse.signals import numpy_signals, numpy_votes
from onnxfuse.streaming import Accumulator
from onnxfuse.support import FEATURES
from onnxfuse.train import Scorers, answers, usable_rows


@dataclasses.dataclass(frozen=True)
class HoldoutJob:
    """Picklable: a Ray worker rebuilds the session from `model`'s bytes (`__call__`), never from a session."""

    model: bytes | str  # the spliced sources exposing `outputs`: their bytes, or the scoring file's path (local)
    outputs: tuple[tuple[str, str], ...]  # (score key, graph value name)
    binding: Binding
    roles: tuple[OutputRole, ...]
    space: LabelSpace
    votes: bool
    feature_columns: tuple[tuple[int, ...], ...] | None
    names: tuple[tuple[str, str | None], ...]
    scorers: Scorers
    streamed: Streamed

    def __call__(self, threads: int) -> _PieceScorer:
        return _PieceScorer(self, threads)


@dataclasses.dataclass
class Partial:
    """One piece's sums: an accumulator per table row, and the rows counted but not scored."""

    metrics: dict[str, Accumulator]
    rows: int = 0
    skipped: int = 0
    unknown_class: int = 0

    def merge(self, other: Partial) -> None:
        for name, accumulator in other.metrics.items():
            self.metrics[name].merge(accumulator)
        self.rows += other.rows
        self.skipped += other.skipped
        self.unknown_class += other.unknown_class


class _PieceScorer:
    """A session over the spliced sources, and the piece-by-piece scoring."""

    def __init__(self, job: HoldoutJob, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.job = job
        self.session = ort.InferenceSession(job.model, options, providers=["CPUExecutionProvider"])
        self.wanted = {i.name for i in self.session.get_inputs()}

    def __call__(self, piece: Piece) -> Partial:
        job, streamed = self.job, self.job.streamed
        partial = Partial({name: Accumulator(job.space.task, job.space.classes) for name in _names(job)})
        for offset, batch in piece_batches(piece, streamed.columns, streamed.dataset.schema):
            held = np.flatnonzero(held_out(piece.name, offset, batch.num_rows, seed=streamed.seed,
                                           holdout=streamed.holdout))  # fmt: skip
            if not len(held):
                continue
            keys = keys_at(piece.name, held + offset, seed=streamed.seed, stream=SAMPLE_STREAM)
            # positions, not a boolean mask (which costs 20x more per column), and only held rows become strings
            self._score(rows_at(batch, held), keys, piece, partial)
        return partial

    def _score(self, table: Mapping[str, np.ndarray], keys: np.ndarray, piece: Piece, partial: Partial) -> None:
        job = self.job
        partial.rows += len(keys)
        truth, known = _target(table[job.streamed.target], job.space, piece)
        partial.unknown_class += int((~known).sum())
        feeds = bound_feeds(job.binding, table, piece.path)
        runnable = {name: values for name, values in feeds.items() if name in self.wanted}
        values = self.session.run([name for _, name in job.outputs], runnable)
        scores = {key: np.asarray(value) for (key, _), value in zip(job.outputs, values)}
        fused = scores.pop(FUSED)
        features = feeds.get(FEATURES)
        signals = numpy_signals(scores, job.roles, job.space.classes, features=features,
                                feature_columns=job.feature_columns)  # fmt: skip
        usable = known & usable_rows(signals, features, availability=job.feature_columns is not None)
        partial.skipped += int((known & ~usable).sum())
        if not usable.all():  # rare: most pieces have every row usable, and copy nothing here
            if not usable.any():
                return
            rows = np.flatnonzero(usable)
            signals, scores = signals.take(rows), {key: value.take(rows, axis=0) for key, value in scores.items()}
            fused, truth, keys = fused.take(rows, axis=0), truth.take(rows), keys.take(rows)
            features = None if features is None else features.take(rows, axis=0)
        head_signals = numpy_votes(signals, scores, job.space.classes) if job.votes else signals
        outputs = answers(job.scorers, signals, head_signals, features, job.names, job.space, fused=fused,
                          baseline=False)  # fmt: skip
        for name, output in outputs.items():
            partial.metrics[name].update(truth, output, keys)


def stream_holdout(job: HoldoutJob, *, progress=None) -> dict[str, Any]:
    """The hold-out table's metrics over every hold-out row, and its row counts (see `train.train_head`)."""
    from onnxfuse.engine import iter_pieces

    streamed = job.streamed
    pieces = streamed.dataset.pieces
    total = Partial({name: Accumulator(job.space.task, job.space.classes) for name in _names(job)})
    partials = iter_pieces(pieces, job, engine=streamed.engine, rows=lambda piece: piece.rows or 0,
                           progress=progress)  # fmt: skip
    with contextlib.closing(partials):
        for partial in partials:  # folded in piece order as they come: a few partials in memory, not one per piece
            total.merge(partial)
    if not total.rows:
        raise OnnxfuseError(f"data {streamed.dataset.label}: no hold-out row; raise --holdout")
    results = {name: accumulator.result() for name, accumulator in total.metrics.items()}
    sampled = next(iter(total.metrics.values()))
    rows = {
        "holdout": total.rows - total.skipped - total.unknown_class,
        "data": streamed.data_rows,
        "fit_sample": streamed.sample_rows,
        "holdout_skipped": total.skipped,
        "holdout_unknown_class": total.unknown_class,
    }
    if sampled.auc_sampled:
        rows["roc_auc_rows"] = min(sampled.rows, sampled.auc_rows)
    return {"metrics": results, "rows": {k: v for k, v in rows.items() if v is not None}}


def _names(job: HoldoutJob) -> list[str]:
    names = [name for name, reading in job.names if reading]
    names.append(FUSED)
    return names


def _target(values: np.ndarray, space: LabelSpace, piece: Piece) -> tuple[np.ndarray, np.ndarray]:
    """The piece's target as the head reads it, and which rows hold a class the sample knows."""
    if space.task == "regression":
        if values.dtype.kind not in "biuf":
            raise OnnxfuseError(f"data {piece.path}: the target column is not numeric here")
        target = values.astype(np.float64)
        if not np.isfinite(target).all():
            raise OnnxfuseError(f"data {piece.path}: the target column holds NaN or infinite values")
        return target, np.ones(len(target), dtype=bool)
    if values.dtype.kind in "OUS":
        labels = np.array(["" if v is None else str(v) for v in values], dtype=object)
    else:
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise OnnxfuseError(f"data {piece.path}: the target column holds NaN or infinite values")
        labels = values.astype(np.int64)
    known = np.isin(labels, np.array(space.classes, dtype=labels.dtype))
    return labels, known
