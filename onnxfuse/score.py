"""Run the spliced sources over many rows in onnxruntime, batch by batch, with bounded memory."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxfuse.pack import save_external

BATCH_ROWS = 65_536
SCORE_FILE = "score.onnx"
HOLDOUT_FILE = "holdout.onnx"  # the sources and the training part's head (see `fuse`), for the hold-out stage


def score(
    model: ir.Model,
    outputs: Mapping[str, ir.Value],
    feeds: Mapping[str, np.ndarray],
    *,
    folder: Path | None,
    batch_rows: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """The given values of the spliced graph on every row of `feeds`.

    Rules: the graph is saved once in `folder` with its weights in external data
    (onnxruntime memory-maps them), run in batches of `batch_rows` (default
    `BATCH_ROWS`, read at each call so a test can lower it), and `progress` is told
    the rows done in each batch. The model is left as it was. Without a `folder` (the
    Python API without an output) onnxruntime reads it from memory.

    Every batch runs on one onnxruntime thread (batches run side by side, one per
    core): onnxruntime's tree ensembles sum their trees in an order that depends on
    its thread count, so with its default threads the scores, and the head fitted
    on them, would change in the last bit with the machine's core count. With one
    thread a row's scores depend only on its batch, which is the same everywhere.
    At most one batch of intermediate tensors per core exists at a time.
    """
    batch_rows = BATCH_ROWS if batch_rows is None else batch_rows
    values = list(outputs.values())
    if folder is None:
        source: str | bytes = serialize_with_outputs(model, values)
    else:
        source = str(save_with_outputs(model, values, folder / SCORE_FILE))
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach us as exceptions; no C++ log lines on stderr
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = [value.name for value in outputs.values()]
    wanted = {i.name for i in session.get_inputs()}
    total = len(next(iter(feeds.values())))
    starts = range(0, total, batch_rows)
    results: dict[str, np.ndarray] = {}

    def run(start: int) -> int:
        batch = {k: v[start : start + batch_rows] for k, v in feeds.items() if k in wanted}
        for name, value in zip(names, session.run(names, batch)):
            results[name][start : start + len(value)] = value
        return min(batch_rows, total - start)

    first = {k: v[:batch_rows] for k, v in feeds.items() if k in wanted}
    for name, value in zip(names, session.run(names, first)):  # tells the shapes: allocated once
        results[name] = np.empty((total, *value.shape[1:]), dtype=value.dtype)
        results[name][: len(value)] = value
    if progress is not None:
        progress(min(batch_rows, total))
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for batch in [pool.submit(run, start) for start in starts[1:]]:  # progress told in row order
            rows = batch.result()
            if progress is not None:
                progress(rows)
    return {key: results[value.name] for key, value in outputs.items()}


def save_with_outputs(model: ir.Model, values: list[ir.Value], path: Path) -> Path:
    """Save `model` exposing `values` as its outputs (weights as external data beside it)."""
    with _exposing(model, values):
        save_external(model, path, path.with_suffix(".data").name)
    return path


def serialize_with_outputs(model: ir.Model, values: list[ir.Value]) -> bytes:
    """The bytes of `model` exposing `values` as its outputs, weights inside (below 2 GB): a source's external
    weights are read in first (onnxruntime resolves a model's external data from bytes against the working
    folder, not the source's)."""
    ir.external_data.load_to_model(model)
    with _exposing(model, values):
        return ir.serde.serialize_model(model).SerializeToString()


@contextlib.contextmanager
def _exposing(model: ir.Model, values: list[ir.Value]) -> Iterator[None]:
    """`values` as the graph's outputs for the block; the model's own outputs restored after."""
    graph = model.graph
    original = list(graph.outputs)
    graph.outputs.clear()
    graph.outputs.extend(dict.fromkeys(values))
    try:
        yield
    finally:
        graph.outputs.clear()
        graph.outputs.extend(original)
