"""`onnxfuse predict`: a fused file's answers on a data file, its columns taken by name, written as a table."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from onnxfuse.data import read_table, require_column
from onnxfuse.emit import check_output
from onnxfuse.errors import OnnxfuseError
from onnxfuse.fused_model import FusedModel

FORMATS = (".csv", ".parquet")


def write_predictions(
    fused: Path, data: Path, output: Path, *, keep: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> int:  # fmt: skip
    """Score `fused` on every row of `data` and write OUT; return the number of rows.

    Rules: OUT is `.csv` or `.parquet`, never one of the inputs, and is written to a
    temp file beside it and renamed into place (a failure leaves no file); its columns
    are the `keep` columns of the data (e.g. an id), then `label` and
    `probability_<class>` per class (classification) or `prediction`, then the
    `--explain` outputs the file has, one column per source (`available_m1`,
    `effect_m1`, `weight_m1`, ...).
    """
    if output.suffix.lower() not in FORMATS:
        raise OnnxfuseError(f"output {output}: write .csv or .parquet, not '{output.suffix or output.name}'")
    check_output(output, [fused, data])
    model = FusedModel(fused)
    table = read_table(data)
    kept = {name: require_column(table, name, data) for name in keep}
    rows = len(next(iter(table.values())))
    outputs = model.run_table(table, data, progress=(lambda done: progress(done, rows)) if progress else None)
    produced = _columns(model, outputs)
    if clash := sorted(set(kept) & set(produced)):
        raise OnnxfuseError(f"--keep {clash[0]}: the output has a column of that name already; rename it in the data")
    _write(output, {**kept, **produced})
    return rows


def _columns(model: FusedModel, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if model.task == "regression":
        columns = {"prediction": outputs["prediction"]}
    else:
        columns = {"label": outputs["label"]}
        for index, label in enumerate(model.classes):
            columns[f"probability_{label}"] = outputs["probabilities"][:, index]
    for name, prefix in (("available", "available"), ("source_effects", "effect"), ("weights", "weight")):
        if name in outputs:
            for m in range(outputs[name].shape[1]):
                columns[f"{prefix}_m{m + 1}"] = outputs[name][:, m]
    return columns


def _write(output: Path, columns: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    table = pa.table({name: pa.array(np.asarray(values).tolist() if np.asarray(values).dtype == object else values)
                      for name, values in columns.items()})  # fmt: skip
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        if output.suffix.lower() == ".csv":
            pa_csv.write_csv(table, temporary)
        else:
            pq.write_table(table, temporary)
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)
