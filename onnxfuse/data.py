"""Read `.csv` / `.parquet` / `.npz` data into named columns, and build rows to feed models."""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from onnx import helper

from onnxfuse.bind import FEATURES, Binding
from onnxfuse.errors import OnnxfuseError, reason

Table = dict[str, np.ndarray]
VERIFY_ROWS = 128


def read_table(path: Path) -> Table:
    """Columns of a data file, in file order. `.npz` is read with pickle disabled."""
    import pyarrow as pa  # imported here: merges without data do not pay for it
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    if not path.is_file():
        raise OnnxfuseError(f"data {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            table = _read_npz(path)
        elif suffix in (".csv", ".parquet", ".pq"):
            arrow = pa_csv.read_csv(path) if suffix == ".csv" else pq.read_table(path)
            _refuse_repeated_columns(arrow.column_names, path)
            table = {name: _to_numpy(column) for name, column in zip(arrow.column_names, arrow.columns)}
        else:
            raise OnnxfuseError(f"data {path}: unknown format '{suffix}'; use .csv, .parquet or .npz")
    except (pa.ArrowException, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise OnnxfuseError(f"data {path}: cannot read it ({reason(exc, 200)})") from exc
    lengths = {len(v) for v in table.values()}
    if not table or lengths == {0}:
        raise OnnxfuseError(f"data {path}: holds no rows")
    if len(lengths) > 1:
        raise OnnxfuseError(f"data {path}: arrays have different numbers of rows ({sorted(lengths)})")
    return table


def _refuse_repeated_columns(names: list[str], path: Path) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise OnnxfuseError(f"data {path}: column '{name}' appears more than once")
        seen.add(name)


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


def _to_numpy(column) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return np.array(column.to_pylist(), dtype=object)
    if column.null_count and (pa.types.is_integer(column.type) or pa.types.is_boolean(column.type)):
        return column.to_numpy(zero_copy_only=False).astype(np.float64)
    return column.to_numpy(zero_copy_only=False)


def column_names(table: Mapping[str, np.ndarray] | None) -> list[str] | None:
    return list(table) if table is not None else None


MAX_CLASSES_FOR_INTEGERS = 20


@dataclasses.dataclass(frozen=True)
class Labelled:
    """All rows of the data as model feeds, with the target and what it says about the task."""

    feeds: dict[str, np.ndarray]
    target: np.ndarray
    task: str
    classes: tuple | None

    @property
    def rows(self) -> int:
        return len(self.target)

    def take(self, rows: np.ndarray) -> Labelled:
        return dataclasses.replace(self, feeds=take(self.feeds, rows), target=self.target[rows])


def labelled_rows(table: Table, binding: Binding, path: Path, *, target: str, task: str = "auto") -> Labelled:
    """Feeds for every row plus a checked target.

    Rules: the target has no missing, NaN or infinite values; strings, booleans
    and integers with at most 20 distinct values mean classification, floats
    regression (`task` overrides); classification needs two classes or more.
    NaN in feature columns is passed to the models as it is.
    """
    values = require_column(table, target, path)
    task = _task_of(values, task, target, path)
    if task == "regression":
        return Labelled(_all_feeds(binding, table, path), values.astype(np.float64), task, None)
    labels = _class_labels(values, target, path)
    classes = tuple(v.item() if isinstance(v, np.generic) else v for v in np.unique(labels))
    if len(classes) < 2:
        raise OnnxfuseError(f"data {path}: column '{target}' holds one class only ({classes[0]!r}); nothing to learn")
    return Labelled(_all_feeds(binding, table, path), labels, task, classes)


def split_rows(labelled: Labelled, holdout: float, *, seed: int, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/hold-out row indices, stratified by class for classification."""
    from sklearn.model_selection import train_test_split

    everything = np.arange(labelled.rows)
    if holdout <= 0:
        return everything, everything[:0]
    stratify = labelled.target if labelled.task == "classification" else None
    if stratify is not None:
        values, counts = np.unique(stratify, return_counts=True)
        if counts.min() < 2:
            rare = values[int(np.argmin(counts))]
            rare = rare.item() if isinstance(rare, np.generic) else rare
            raise OnnxfuseError(
                f"column '{target}': class {rare!r} has {counts.min()} row(s); a stratified hold-out needs 2 or more"
            )
    try:
        train, held = train_test_split(everything, test_size=holdout, random_state=seed, stratify=stratify)
    except ValueError as exc:
        raise OnnxfuseError(f"column '{target}': cannot hold out {holdout} of {labelled.rows} rows ({exc})") from exc
    return np.sort(train), np.sort(held)


def take(feeds: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: array[rows] for name, array in feeds.items()}


def _task_of(values: np.ndarray, task: str, target: str, path: Path) -> str:
    if values.dtype.kind in "fc" and not np.isfinite(values.astype(np.float64)).all():
        raise OnnxfuseError(f"data {path}: column '{target}' holds NaN or infinite values")
    if values.dtype == object and any(v is None or (isinstance(v, str) and not v) for v in values):
        raise OnnxfuseError(f"data {path}: column '{target}' has missing values")
    if values.dtype == object and not all(isinstance(v, str | int | float | bool | np.generic) for v in values):
        raise OnnxfuseError(f"data {path}: column '{target}' holds lists or other nested values, not labels")
    if task != "auto":
        if task == "regression" and values.dtype.kind not in "biuf":
            raise OnnxfuseError(f"data {path}: --task regression but column '{target}' is not numeric")
        return task
    if values.dtype.kind in "OUSb":
        return "classification"
    if values.dtype.kind in "iu" and len(np.unique(values)) <= MAX_CLASSES_FOR_INTEGERS:
        return "classification"
    return "regression"


def _class_labels(values: np.ndarray, target: str, path: Path) -> np.ndarray:
    if values.dtype.kind in "OUS":
        return np.array([str(v) for v in values], dtype=object)
    if values.dtype.kind == "f" and not np.all(values == np.round(values)):
        raise OnnxfuseError(
            f"data {path}: column '{target}' has fractional values; classes must be integers or strings"
        )
    return values.astype(np.int64)


def _all_feeds(binding: Binding, table: Table, path: Path) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    if binding.features:
        feeds[FEATURES] = feature_rows(table, binding.features, path)
    for value in binding.shared:
        if value.name not in table:
            raise OnnxfuseError(f"data {path}: no column or array '{value.name}' for the model input of that name")
        feeds[value.name] = _as_input(table[value.name], value)
    return feeds
