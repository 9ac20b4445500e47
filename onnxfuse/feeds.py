"""The data's rows as the fused graph's inputs (after `bind`), and the labelled rows a head trains on."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from onnxfuse.bind import Binding
from onnxfuse.data import Table, feature_rows, read_target, string_rows
from onnxfuse.errors import OnnxfuseError, reason
from onnxfuse.support import FEATURES

VERIFY_ROWS = 128


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
            feeds[value.name] = _as_input(table[value.name][:count], value, path)
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


def _as_input(array: np.ndarray, value, path: Path | None = None) -> np.ndarray:
    """A data column for the graph input of its name: its element type, and `[N, 1]` where the input is
    rank 2 and the column one value per row."""
    dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    dims = value.type.tensor_type.shape.dim
    if array.ndim == 1 and len(dims) == 2 and dims[1].dim_value in (0, 1):  # 0: a dim without a value
        array = array.reshape(-1, 1)
    try:
        return array.astype(dtype)
    except (TypeError, ValueError) as exc:
        raise OnnxfuseError(
            f"data {path}: column '{value.name}' cannot be read as the {dtype.__name__} model input of that name "
            f"({reason(exc, 120)})"
        ) from exc


@dataclasses.dataclass(frozen=True)
class Labelled:
    """All rows of the data as model feeds, with the target and what it says about the task."""

    feeds: dict[str, np.ndarray]
    target: np.ndarray
    task: str
    classes: tuple | None
    why: str = ""  # which rule chose the task, for the summary line
    held: np.ndarray | None = None  # bool per row: the hold-out rows, decided per row (`sampling`); None: split here

    @property
    def rows(self) -> int:
        return len(self.target)

    def take(self, rows: np.ndarray) -> Labelled:
        held = None if self.held is None else self.held[rows]
        return dataclasses.replace(self, feeds=take(self.feeds, rows), target=self.target[rows], held=held)


def labelled_rows(
    table: Table, binding: Binding, path: Path, *, target: str, task: str = "auto", classifiers: bool = False
) -> Labelled:
    """Feeds for every row plus the checked target (see `data.read_target`); NaN in feature columns is passed
    to the models."""
    column = read_target(table, target, path, task=task, classifiers=classifiers)
    return Labelled(bound_feeds(binding, table, path), column.values, column.task, column.classes, column.why)


def split_rows(labelled: Labelled, holdout: float, *, seed: int, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/hold-out row indices, stratified by class for classification; the rows' own hold-out flags
    where the data was sampled (`Labelled.held`)."""
    from sklearn.model_selection import train_test_split

    everything = np.arange(labelled.rows)
    if holdout <= 0:
        return everything, everything[:0]
    if labelled.held is not None:
        return np.flatnonzero(~labelled.held), np.flatnonzero(labelled.held)
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


def bound_feeds(binding: Binding, table: Table, path: Path | str) -> dict[str, np.ndarray]:
    """The graph's inputs from the data's columns (see `labelled_rows`)."""
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
        feeds[value.name] = _as_input(table[value.name], value, path)
    return feeds
