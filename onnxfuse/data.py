"""Read `.csv` / `.parquet` / `.npz` data into named columns, and build rows to feed models."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from onnx import helper

from onnxfuse.bind import FEATURES, Binding
from onnxfuse.errors import OnnxfuseError

Table = dict[str, np.ndarray]
VERIFY_ROWS = 128


def read_table(path: Path) -> Table:
    """Columns of a data file, in file order. `.npz` is read with pickle disabled."""
    if not path.is_file():
        raise OnnxfuseError(f"data {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            table = _read_npz(path)
        elif suffix in (".csv", ".parquet", ".pq"):
            arrow = pa_csv.read_csv(path) if suffix == ".csv" else pq.read_table(path)
            table = {name: _to_numpy(arrow.column(name)) for name in arrow.column_names}
        else:
            raise OnnxfuseError(f"data {path}: unknown format '{suffix}'; use .csv, .parquet or .npz")
    except (pa.ArrowException, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise OnnxfuseError(f"data {path}: cannot read it ({str(exc).splitlines()[0][:200]})") from exc
    lengths = {len(v) for v in table.values()}
    if not table or lengths == {0}:
        raise OnnxfuseError(f"data {path}: holds no rows")
    if len(lengths) > 1:
        raise OnnxfuseError(f"data {path}: arrays have different numbers of rows ({sorted(lengths)})")
    return table


def require_column(table: Table, column: str, path: Path) -> np.ndarray:
    if column not in table:
        known = ", ".join(list(table)[:20])
        raise OnnxfuseError(f"data {path}: no column '{column}' (columns: {known})")
    return table[column]


def feature_rows(table: Table, columns: tuple[str, ...], path: Path, *, count: int | None = None) -> np.ndarray:
    """float32 `[N, F]` of the given columns; non-numeric columns are refused by name."""
    blocks = []
    for column in columns:
        values = require_column(table, column, path)[:count]
        if values.dtype.kind not in "biuf":
            raise OnnxfuseError(f"data {path}: column '{column}' is not numeric ({values.dtype})")
        blocks.append(values.astype(np.float32))
    return np.stack(blocks, axis=1) if blocks else np.zeros((0, 0), dtype=np.float32)


def verification_feeds(
    binding: Binding, table: Table | None, path: Path | None, *, seed: int, count: int = VERIFY_ROWS
) -> dict[str, np.ndarray]:
    """Rows to compare the fused model with its sources: the data's first rows, else seeded ones."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    if table is not None:
        count = min(count, len(next(iter(table.values()))))
    if binding.features:
        if table is not None and path is not None:
            feeds[FEATURES] = feature_rows(table, binding.features, path, count=count)
        else:
            feeds[FEATURES] = np.round(rng.normal(size=(count, len(binding.features))) * 2, 2).astype(np.float32)
    for value in binding.shared:
        if table is not None and value.name in table:
            feeds[value.name] = _as_input(table[value.name][:count], value)
        else:
            feeds[value.name] = _generated(value, rng, count)
    return feeds


def _generated(value, rng: np.random.Generator, count: int) -> np.ndarray:
    dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    dims = value.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else (count if i == 0 else 4) for i, d in enumerate(dims)]
    if dtype == np.object_:
        return rng.choice(np.array(["a", "b", "c"], dtype=object), size=shape)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 5, size=shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.normal(size=shape).astype(dtype)


def _as_input(array: np.ndarray, value) -> np.ndarray:
    dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    return array.astype(dtype)


def _read_npz(path: Path) -> Table:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return np.array(column.to_pylist(), dtype=object)
    if column.null_count and (pa.types.is_integer(column.type) or pa.types.is_boolean(column.type)):
        return column.to_numpy(zero_copy_only=False).astype(np.float64)
    return column.to_numpy(zero_copy_only=False)


def column_names(table: Mapping[str, np.ndarray] | None) -> list[str] | None:
    return list(table) if table is not None else None
