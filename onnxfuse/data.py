"""Read `.csv` / `.tsv` / `.parquet` / `.npz` data into named columns, and read its target column.

This is the data as the user gave it, before any model is bound to it: `feeds` turns it into model inputs."""

from __future__ import annotations

import dataclasses
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from onnxfuse.errors import OnnxfuseError, reason

Table = dict[str, np.ndarray]


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
        elif suffix in (".csv", ".tsv", ".parquet", ".pq"):
            parquet = suffix in (".parquet", ".pq")
            arrow = pq.read_table(path) if parquet else pa_csv.read_csv(path, parse_options=_parse(suffix))
            _refuse_repeated_columns(arrow.column_names, path)
            table = {name: to_numpy(column) for name, column in zip(arrow.column_names, arrow.columns)}
        else:
            raise OnnxfuseError(f"data {path}: unknown format '{suffix}'; use .csv, .tsv, .parquet or .npz")
    except (pa.ArrowException, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise OnnxfuseError(f"data {path}: cannot read it ({reason(exc, 200)})") from exc
    check_rows(table, f"data {path}")
    return table


def check_rows(table: Table, where: str) -> None:
    """Data holds rows, and every column the same number of them."""
    lengths = {len(v) for v in table.values()}
    if not table or lengths == {0}:
        raise OnnxfuseError(f"{where}: holds no rows")
    if len(lengths) > 1:
        raise OnnxfuseError(f"{where}: arrays have different numbers of rows ({sorted(lengths)})")


def _refuse_repeated_columns(names: list[str], path: Path) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise OnnxfuseError(f"data {path}: column '{name}' appears more than once")
        seen.add(name)


def _parse(suffix: str):
    """`.tsv` is tab-separated, `.csv` comma-separated (pyarrow's default)."""
    import pyarrow.csv as pa_csv

    return pa_csv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")


def require_column(table: Table, column: str, path: Path) -> np.ndarray:
    if column not in table:
        raise OnnxfuseError(f"data {path}: no column '{column}'{columns_found(list(table), path)}")
    return table[column]


DELIMITERS = {";": "';'", "\t": "tabs", "|": "'|'", ",": "','"}


def columns_found(names: Sequence[str], path: Path) -> str:
    """What an unknown-column message adds: ` (columns: up to 20 of them)`, and where the file was read as one
    column, a hint that it is separated by another character than its suffix says."""
    listed = f" (columns: {', '.join(names[:20])}{', ...' if len(names) > 20 else ''})"
    suffix = path.suffix.lower()
    if len(names) != 1 or suffix not in (".csv", ".tsv"):
        return listed
    used = "," if suffix == ".csv" else "\t"
    found = [text for char, text in DELIMITERS.items() if char != used and char in names[0]]
    if not found and suffix == ".tsv":
        return listed
    guess = found[0] if found else "something other than ','"
    return (
        f"{listed} (the file has one column {names[0]!r}: is it separated by {guess}? "
        "onnxfuse reads .csv as comma-separated and .tsv as tab-separated)"
    )


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
    # integers and booleans: their text, as a string column of digits reads
    texts = [_text(v, column, path) for v in flat] if values.dtype.kind in "OUS" else [str(v) for v in flat.tolist()]
    return np.array(texts, dtype=object).reshape(-1, 1)


def _text(value: object, column: str, path: Path) -> str:
    if value is None:
        return ""
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OnnxfuseError(
            f"data {path}: column '{column}' holds bytes that are not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "write the file as UTF-8"
        ) from exc


def _read_npz(path: Path) -> Table:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (NotImplementedError, zlib.error) as exc:  # zipfile: an unknown compression method; corrupt deflate data
        raise OnnxfuseError(f"data {path}: cannot read it ({reason(exc, 200)})") from exc


def to_numpy(column) -> np.ndarray:
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
class Target:
    """The checked target column and what it says about the task."""

    values: np.ndarray  # float64 for regression, class labels (int64 or str objects) for classification
    task: str
    classes: tuple | None
    why: str  # which rule chose the task, for the summary line


def read_target(table: Table, target: str, path: Path, *, task: str = "auto", classifiers: bool = False) -> Target:
    """The target column, checked.

    Rules: the target has no missing, NaN or infinite values; strings and
    booleans mean classification; integral numbers (integers, or floats that are
    all whole, as pandas writes a label column that once held a NaN) mean
    classification when `classifiers` (some source is a classifier) or when they
    are integers with at most 20 distinct values; other numbers regression;
    `task` overrides; classification needs two classes or more.
    """
    values = require_column(table, target, path)
    task, why = _task_of(values, task, target, path, classifiers=classifiers)
    if task == "regression":
        return Target(values.astype(np.float64), task, None, why)
    labels = _class_labels(values, target, path)
    classes = tuple(v.item() if isinstance(v, np.generic) else v for v in np.unique(labels))
    if len(classes) < 2:
        raise OnnxfuseError(f"data {path}: column '{target}' holds one class only ({classes[0]!r}); nothing to learn")
    return Target(labels, task, classes, why)


def _task_of(values: np.ndarray, task: str, target: str, path: Path, *, classifiers: bool) -> tuple[str, str]:
    if values.dtype.kind in "mM":
        raise OnnxfuseError(f"data {path}: column '{target}' holds dates or times, not labels or numbers")
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
