"""Read `.csv` / `.parquet` / `.npz` data into named columns, and build rows to feed models."""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from onnxfuse.bind import Binding
from onnxfuse.support import FEATURES
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


def feature_rows(
    table: Table, columns: tuple[str, ...], path: Path, *, count: int | None = None, dtype: type = np.float32
) -> np.ndarray:
    """`[N, F]` of the given columns in `dtype` (float32 or float64); non-numeric columns are refused by name."""
    blocks = []
    for column in columns:
        values = require_column(table, column, path)[:count]
        if values.dtype.kind not in "biuf":
            raise OnnxfuseError(f"data {path}: column '{column}' is not numeric ({values.dtype})")
        blocks.append(values.astype(dtype))
    return np.stack(blocks, axis=1) if blocks else np.zeros((0, 0), dtype=dtype)


def string_rows(table: Table, column: str, path: Path, *, count: int | None = None) -> np.ndarray:
    """A string column as `string [N, 1]`: missing values (null, None) are the empty string `""`."""
    values = require_column(table, column, path)[:count]
    if values.ndim > 1 and values.size != len(values):
        raise OnnxfuseError(f"data {path}: '{column}' holds {values.shape[1:]} values per row; a string column one")
    if values.dtype.kind == "f":
        raise OnnxfuseError(
            f"data {path}: column '{column}' holds floats, but a model reads it as strings; write it as text"
        )
    flat = values.reshape(-1)
    if values.dtype.kind in "OUS":
        flat = [v.decode() if isinstance(v, bytes) else ("" if v is None else str(v)) for v in flat]
    else:  # integers and booleans: their text, as a string column of digits reads
        flat = [str(v) for v in flat.tolist()]
    return np.array(flat, dtype=object).reshape(-1, 1)


def check_bound_columns(table: Table, binding: Binding, path: Path) -> None:
    """Refuse columns an integer model input cannot read exactly through `features`.

    Rules: NaN has no integer value; with float32 features an integer input reads
    exact values only up to 2^24 in magnitude, with float64 up to 2^53.
    """
    limit, limit_text = (2**24, "2^24") if binding.dtype == TensorProto.FLOAT else (2**53, "2^53")
    for column in binding.features:
        readers = [(label, b) for label, b in binding.readers(column) if b.is_integer]
        if not readers or column not in table or table[column].dtype.kind not in "biuf":
            continue
        values, (label, reader) = table[column], readers[0]
        where = f"data {path}: column '{column}' feeds {label}'s integer input '{reader.name}'"
        if values.dtype.kind == "f" and np.isnan(values).any():
            raise OnnxfuseError(
                f"{where} but holds NaN, which has no integer value; fill the missing values "
                "or re-export the model with a float input"
            )
        if len(values) and np.abs(values.astype(np.float64)).max() > limit:
            wide = binding.dtype == TensorProto.FLOAT
            fix = "use --features-dtype float64" if wide else "scale or re-encode the column"
            raise OnnxfuseError(
                f"{where} and holds values beyond {limit_text}, which {binding.dtype_name} features "
                f"cannot carry exactly; {fix}"
            )


def verification_feeds(
    binding: Binding, table: Table | None, path: Path | None, *, seed: int, count: int = VERIFY_ROWS
) -> dict[str, np.ndarray]:
    """Rows to compare the fused model with its sources: the data's first rows, else seeded ones."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    dtype = helper.tensor_dtype_to_np_dtype(binding.dtype)
    if table is not None:
        count = min(count, len(next(iter(table.values()))))
        if path is not None:
            check_bound_columns(table, binding, path)
    if binding.features:
        if table is not None and path is not None:
            feeds[FEATURES] = feature_rows(table, binding.features, path, count=count, dtype=dtype)
        else:
            feeds[FEATURES] = np.round(rng.normal(size=(count, len(binding.features))) * 2, 2).astype(dtype)
    for column in binding.strings:
        if table is not None and path is not None:
            feeds[column] = string_rows(table, column, path, count=count)
        else:
            feeds[column] = rng.choice(np.array(["a", "b", "c"], dtype=object), size=(count, 1))
    for value in binding.shared:
        if table is not None and value.name in table:
            feeds[value.name] = _as_input(table[value.name][:count], value)
        else:
            feeds[value.name] = _generated(value, rng, count)
    return feeds


def source_rows(binding: Binding, table: Table | None, *, count: int = VERIFY_ROWS) -> dict[str, np.ndarray]:
    """The data's own values of the packed columns, as `verification_feeds` took them (its first rows),
    so each source can be fed at the data's precision rather than the fused input's."""
    if table is None:
        return {}
    return {c: table[c][:count] for c in binding.features if c in table and table[c].dtype.kind in "biuf"}


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
    why: str = ""  # which rule chose the task, for the summary line

    @property
    def rows(self) -> int:
        return len(self.target)

    def take(self, rows: np.ndarray) -> Labelled:
        return dataclasses.replace(self, feeds=take(self.feeds, rows), target=self.target[rows])


def labelled_rows(
    table: Table, binding: Binding, path: Path, *, target: str, task: str = "auto", classifiers: bool = False
) -> Labelled:
    """Feeds for every row plus a checked target.

    Rules: the target has no missing, NaN or infinite values; strings and
    booleans mean classification; integral numbers (integers, or floats that are
    all whole, as pandas writes a label column that once held a NaN) mean
    classification when `classifiers` (some source is a classifier) or when they
    are integers with at most 20 distinct values; other numbers regression;
    `task` overrides; classification needs two classes or more. `Labelled.why`
    says which rule chose the task. NaN in feature columns is passed to the models.
    """
    values = require_column(table, target, path)
    task, why = _task_of(values, task, target, path, classifiers=classifiers)
    if task == "regression":
        return Labelled(_all_feeds(binding, table, path), values.astype(np.float64), task, None, why)
    labels = _class_labels(values, target, path)
    classes = tuple(v.item() if isinstance(v, np.generic) else v for v in np.unique(labels))
    if len(classes) < 2:
        raise OnnxfuseError(f"data {path}: column '{target}' holds one class only ({classes[0]!r}); nothing to learn")
    return Labelled(_all_feeds(binding, table, path), labels, task, classes, why)


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


def _task_of(values: np.ndarray, task: str, target: str, path: Path, *, classifiers: bool) -> tuple[str, str]:
    if values.dtype.kind in "fc" and not np.isfinite(values.astype(np.float64)).all():
        raise OnnxfuseError(f"data {path}: column '{target}' holds NaN or infinite values")
    if values.dtype == object and any(v is None or (isinstance(v, str) and not v) for v in values):
        raise OnnxfuseError(f"data {path}: column '{target}' has missing values")
    if values.dtype == object and not all(isinstance(v, str | int | float | bool | np.generic) for v in values):
        raise OnnxfuseError(f"data {path}: column '{target}' holds lists or other nested values, not labels")
    if task != "auto":
        if task == "regression" and values.dtype.kind not in "biuf":
            raise OnnxfuseError(f"data {path}: --task regression but column '{target}' is not numeric")
        return task, f"--task {task}"
    if values.dtype.kind in "OUSb":
        return "classification", f"target '{target}' holds {'booleans' if values.dtype.kind == 'b' else 'strings'}"
    integral = values.dtype.kind in "iu" or bool(np.all(values == np.round(values)))
    if not integral:
        return "regression", f"target '{target}' holds fractional numbers"
    distinct = len(np.unique(values))
    if classifiers:
        return "classification", f"target '{target}' holds {distinct} whole numbers and the sources are classifiers"
    if values.dtype.kind in "iu" and distinct <= MAX_CLASSES_FOR_INTEGERS:
        return "classification", f"target '{target}' holds {distinct} distinct integers"
    kind = "integers" if values.dtype.kind in "iu" else "whole numbers"
    return "regression", f"target '{target}' holds {distinct} distinct {kind} and no source is a classifier"


def _class_labels(values: np.ndarray, target: str, path: Path) -> np.ndarray:
    if values.dtype.kind in "OUS":
        return np.array([str(v) for v in values], dtype=object)
    if values.dtype.kind == "f" and not np.all(values == np.round(values)):
        raise OnnxfuseError(
            f"data {path}: column '{target}' has fractional values; classes must be integers or strings"
        )
    return values.astype(np.int64)


def _all_feeds(binding: Binding, table: Table, path: Path) -> dict[str, np.ndarray]:
    check_bound_columns(table, binding, path)
    feeds: dict[str, np.ndarray] = {}
    if binding.features:
        dtype = helper.tensor_dtype_to_np_dtype(binding.dtype)
        feeds[FEATURES] = feature_rows(table, binding.features, path, dtype=dtype)
    for column in binding.strings:
        feeds[column] = string_rows(table, column, path)
    for value in binding.shared:
        if value.name not in table:
            raise OnnxfuseError(f"data {path}: no column or array '{value.name}' for the model input of that name")
        feeds[value.name] = _as_input(table[value.name], value)
    return feeds
