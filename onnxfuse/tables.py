"""Data handed over in memory (a pandas DataFrame, a pyarrow Table, a mapping of arrays) as named numpy columns,
the form `data.read_table` gives a file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnxfuse.data import Table, check_rows, read_table, to_numpy
from onnxfuse.dataset import is_glob, open_dataset
from onnxfuse.errors import OnnxfuseError

DataInput = Any  # pandas.DataFrame | pyarrow.Table | Mapping[str, array-like] | str | os.PathLike


def as_table(data: DataInput) -> tuple[Table | None, Path | tuple[Path, ...]]:
    """`(columns, label)`: the columns of in-memory data and how messages name it; a path comes back unread
    (`(None, path)`), for the merge to read it as the CLI does."""
    if isinstance(data, str | os.PathLike):
        return None, Path(data)
    if isinstance(data, list | tuple) and data and all(isinstance(item, str | os.PathLike) for item in data):
        return None, tuple(Path(item) for item in data) if len(data) > 1 else Path(data[0])  # files of one dataset
    return in_memory(data), Path(f"<{type(data).__name__}>")


def table_of(data: DataInput) -> tuple[Table, Path]:
    """The columns of any data the API takes (a path read as `--data` is), and how messages name it."""
    table, label = as_table(data)
    if table is None and (isinstance(label, tuple) or label.is_dir() or is_glob(label)):
        dataset = open_dataset(label)
        return dataset.read(dataset.columns), dataset.label
    return (read_table(label) if table is None else table), label


def in_memory(data: DataInput) -> Table:
    """Columns in their order, typed as `read_table` types a file's: strings as objects, integers with nulls as
    floats (NaN)."""
    import pyarrow as pa

    kind = type(data).__name__
    if _is_dataframe(data):
        _check_column_names(list(data.columns), kind)
        data = pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, pa.Table | pa.RecordBatch):
        _check_column_names(data.column_names, kind)
        table = {name: to_numpy(column) for name, column in zip(data.column_names, data.columns)}
    elif isinstance(data, Mapping):
        _check_column_names(list(data), kind)
        table = {str(name): _column(values, name) for name, values in data.items()}
    else:
        raise OnnxfuseError(f"data: a {kind} is not data; give a pandas DataFrame, a pyarrow Table, a mapping of "
                            "column name to array, or a path (.csv, .tsv, .parquet, .npz)")  # fmt: skip
    check_rows(table, f"data <{kind}>")
    return table


def _is_dataframe(data: object) -> bool:
    return type(data).__name__ == "DataFrame" and hasattr(data, "columns") and hasattr(data, "iloc")


def _check_column_names(names: list, kind: str) -> None:
    seen = set()
    for name in names:
        if not isinstance(name, str):
            raise OnnxfuseError(f"data <{kind}>: column {name!r} is not named by a string; name every column")
        if name in seen:
            raise OnnxfuseError(f"data <{kind}>: column '{name}' appears more than once")
        seen.add(name)


def _column(values: object, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 0:
        raise OnnxfuseError(f"data: column '{name}' is one value ({array.item()!r}), not one per row")
    if array.dtype.kind == "U":
        return array.astype(object)
    return array
