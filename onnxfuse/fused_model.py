"""`onnxfuse.FusedModel`: a fused file scored on data whose columns are taken by name, never by position.

Beside `api.py` rather than in it: scoring is what `predict` and `evaluate` share, merging is not."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from onnxfuse.data import Table, feature_rows, require_column, string_rows
from onnxfuse.errors import OnnxfuseError, reason
from onnxfuse.support import FEATURES
from onnxfuse.tables import DataInput, table_of

BATCH_ROWS = 65_536
EXPLAIN_OUTPUTS = ("available", "source_effects", "weights")


class FusedModel:
    """A file `onnxfuse merge` wrote (a path or an `onnx.ModelProto`), run by onnxruntime.

    Its inputs are cut from the data by name: the packed `features` tensor from the columns
    `onnxfuse.features` lists (in that order, whatever the data's order), string and tensor inputs from the
    column or array of their name. A missing column is an `OnnxfuseError` naming it; other columns are ignored.
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, *, threads: int | None = None) -> None:
        self.name, proto, target = _opened(model)
        self.metadata = {p.key: p.value for p in proto.metadata_props}
        if "onnxfuse.features" not in self.metadata:
            raise OnnxfuseError(f"{self.name}: not written by onnxfuse merge (no onnxfuse.features metadata)")
        self.features: tuple[str, ...] = tuple(self._recorded("onnxfuse.features", []))
        classes = self._recorded("onnxfuse.classes", None)
        self.classes: tuple | None = tuple(classes) if classes is not None else None
        self.sources: list[dict] = self._recorded("onnxfuse.sources", [])
        self.fusion: dict = self._recorded("onnxfuse.fusion", {})
        self.strings: tuple[str, ...] = tuple(self._recorded("onnxfuse.string_inputs", []))
        self._session = _session(target, threads, self.name)
        self.outputs = tuple(o.name for o in self._session.get_outputs())

    @property
    def features_dtype(self) -> str:
        """The packed `features` input's element type, as `--features-dtype` names it."""
        return str(self._recorded("onnxfuse.features_dtype", "float32"))

    @property
    def task(self) -> str:
        return "classification" if self.classes is not None else "regression"

    def run(self, data: DataInput, *, progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
        """Every output of the file on every row, scored in batches of `BATCH_ROWS`."""
        table, label = table_of(data)
        return self.run_table(table, label, progress=progress)

    def run_table(
        self, table: Table, label: Path, *, progress: Callable[[int], None] | None = None
    ) -> dict[str, np.ndarray]:
        """`run` on columns already read (`label` names them in messages)."""
        rows = len(next(iter(table.values())))
        parts: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for start in range(0, rows, BATCH_ROWS):
            batch = {name: values[start : start + BATCH_ROWS] for name, values in table.items()}
            for part, value in zip(parts, self._session.run(None, self.feeds(batch, label))):
                part.append(value)
            if progress is not None:
                progress(min(start + BATCH_ROWS, rows))
        return {name: np.concatenate(part) for name, part in zip(self.outputs, parts)}

    def predict(self, data: DataInput) -> np.ndarray:
        """`label` per row (classification) or `prediction` (regression)."""
        return self.run(data)["label" if self.task == "classification" else "prediction"]

    def predict_proba(self, data: DataInput) -> np.ndarray:
        """`probabilities` `[N, C]`, columns in `classes` order."""
        if self.task != "classification":
            raise OnnxfuseError(f"{self.name}: a regression model has no probabilities; use predict")
        return self.run(data)["probabilities"]

    def explain(self, data: DataInput) -> dict[str, np.ndarray]:
        """`available` and `source_effects` `[N, M]` (and a mixture's `weights`): the outputs `--explain` adds."""
        if "source_effects" not in self.outputs:
            raise OnnxfuseError(f"{self.name}: merged without --explain; merge again with --explain (explain=True)")
        outputs = self.run(data)
        return {name: outputs[name] for name in EXPLAIN_OUTPUTS if name in outputs}

    def feeds(self, table: Table, label: Path) -> dict[str, np.ndarray]:
        """The file's inputs from named columns (`label` names the data in messages)."""
        feeds = {}
        for value in self._session.get_inputs():
            if value.name == FEATURES:
                dtype = np.float64 if value.type == "tensor(double)" else np.float32
                feeds[value.name] = feature_rows(table, self.features, label, dtype=dtype)
            elif value.name in self.strings:
                column = string_rows(table, value.name, label)
                feeds[value.name] = column.reshape(-1) if len(value.shape) == 1 else column
            else:
                feeds[value.name] = _tensor_input(require_column(table, value.name, label), value, label)
        return feeds

    def _recorded(self, key: str, default: object) -> object:
        text = self.metadata.get(key)
        if text is None:
            return default
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise OnnxfuseError(f"{self.name}: its {key} metadata is not JSON ({text[:40]!r})") from exc


def _opened(model: str | os.PathLike | onnx.ModelProto) -> tuple[str, onnx.ModelProto, str | bytes]:
    """How messages name the model, its proto (weights not loaded) and what onnxruntime opens."""
    if isinstance(model, onnx.ModelProto):
        return "<ModelProto>", model, model.SerializeToString()
    from onnxfuse.load import load_model
    from onnxfuse.spec import ModelSpec

    path = Path(model)
    return str(path), load_model(ModelSpec(path), 0).proto, str(path)


def _session(target: str | bytes, threads: int | None, name: str):
    import onnxruntime as ort

    from onnxfuse.normalize import runtime_errors

    options = ort.SessionOptions()
    options.log_severity_level = 4
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(target, options, providers=["CPUExecutionProvider"])
    except runtime_errors() as exc:
        raise OnnxfuseError(f"fused model {name}: onnxruntime cannot load it ({reason(exc)})") from exc


def _tensor_input(values: np.ndarray, value, label: Path) -> np.ndarray:
    """A non-column input (an image array) in the input's element type."""
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(bool)": np.bool_}.get(value.type)  # fmt: skip
    if dtype is None:
        raise OnnxfuseError(f"data {label}: input '{value.name}' of type {value.type} cannot be fed from data")
    return np.asarray(values).astype(dtype, copy=False)
