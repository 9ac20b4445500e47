"""Map each source's inputs to columns of one packed `features` tensor, or to shared inputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import onnx

from onnxfuse.errors import OnnxfuseError
from onnxfuse.normalize import NormalizedModel
from onnxfuse.support import FEATURES, elem_type, rank

CONTRACT_OUTPUTS = ("label", "probabilities", "prediction", "available", "source_effects")
FEATURES_DTYPES = {"float32": onnx.TensorProto.FLOAT, "float64": onnx.TensorProto.DOUBLE}
_INTEGERS = {
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
}  # fmt: skip
_NUMERIC = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class InputBinding:
    """One model input: fed from columns of `features`, or from a shared graph input."""

    name: str
    elem_type: int
    rank: int
    columns: tuple[str, ...] | None = None  # None: a shared input under its own name

    @property
    def is_string(self) -> bool:
        """A string column input: fed from the fused string input named after its one column."""
        return self.columns is not None and self.elem_type == onnx.TensorProto.STRING

    @property
    def is_integer(self) -> bool:
        return self.elem_type in _INTEGERS


@dataclasses.dataclass(frozen=True)
class Binding:
    """The fused input schema and how every model input reads from it."""

    features: tuple[str, ...]
    models: tuple[tuple[InputBinding, ...], ...]
    shared: tuple[onnx.ValueInfoProto, ...]
    strings: tuple[str, ...] = ()  # string columns, each a fused input `string [N, 1]` of its name
    dtype: int = onnx.TensorProto.FLOAT  # of `features`
    labels: tuple[str, ...] = ()  # each model's `source.label`, for messages

    def column_index(self, column: str) -> int:
        return self.features.index(column)

    @property
    def dtype_name(self) -> str:
        return next(name for name, code in FEATURES_DTYPES.items() if code == self.dtype)

    def readers(self, column: str) -> list[tuple[str, InputBinding]]:
        """(model label, input) of every numeric model input that reads `column` from `features`."""
        return [
            (label, b)
            for label, model in zip(self.labels, self.models)
            for b in model
            if b.columns is not None and not b.is_string and column in b.columns
        ]

    def metadata(self) -> dict[str, object]:
        """What the file records about its inputs beyond `onnxfuse.features`; defaults are left out."""
        recorded: dict[str, object] = {}
        if self.strings:
            recorded["onnxfuse.string_inputs"] = list(self.strings)
        if self.features and self.dtype != onnx.TensorProto.FLOAT:
            recorded["onnxfuse.features_dtype"] = self.dtype_name
        return recorded


def bind(
    models: Sequence[NormalizedModel], *, data_columns: Sequence[str] | None = None, features_dtype: str = "auto"
) -> Binding:
    """Bind every model input.

    Rules: column inputs are numeric rank-1/2 inputs and string inputs one column
    wide (`[N]` or `[N, 1]`). A model with `features` takes them in order across its
    column inputs, each input as many columns as its width; without `features`, a
    one-column input is bound to the column of its own name; other inputs (images,
    wider strings) become graph inputs of their own name, shared across models when
    name, type and shape agree. Numeric columns are packed into `features`, in
    first-appearance order; each string column is one input of its own name, shared
    by every model that reads it, and may not be named `features` or like a contract
    output, nor be read as numbers elsewhere. `features` is float64 when
    `features_dtype` says so, or (`auto`) when any model reads a column as double.
    Every mismatch is an error naming the model, the input and the columns.
    """
    bindings = tuple(_bind_model(model, data_columns) for model in models)
    labels = tuple(model.source.label for model in models)
    features: dict[str, str] = {}
    strings: dict[str, str] = {}
    for label, model_bindings in zip(labels, bindings):
        for binding in model_bindings:
            for column in binding.columns or ():
                (strings if binding.is_string else features).setdefault(column, f"{label}'s input '{binding.name}'")
    _check_string_columns(features, strings)
    shared = _shared_inputs(models, bindings, has_features=bool(features), strings=strings)
    dtype = _features_dtype(features_dtype, bindings)
    return Binding(tuple(features), bindings, shared, strings=tuple(strings), dtype=dtype, labels=labels)


def _check_string_columns(features: dict[str, str], strings: dict[str, str]) -> None:
    for column, reader in strings.items():
        if column == FEATURES or column in CONTRACT_OUTPUTS:
            raise OnnxfuseError(
                f"{reader} reads string column '{column}', a name the fused model uses for its "
                f"{'packed input' if column == FEATURES else 'output'}; rename the column in the data "
                "and bind it with --features"
            )
        if column in features:
            raise OnnxfuseError(
                f"column '{column}' is read as strings by {reader} and as numbers by {features[column]}; "
                "a column has one type: bind one of them to another column with --features"
            )


def _features_dtype(choice: str, bindings: Sequence[tuple[InputBinding, ...]]) -> int:
    if choice == "auto":
        double = any(
            b.elem_type == onnx.TensorProto.DOUBLE and b.columns is not None for model in bindings for b in model
        )
        return onnx.TensorProto.DOUBLE if double else onnx.TensorProto.FLOAT
    if choice not in FEATURES_DTYPES:
        raise OnnxfuseError(f"--features-dtype {choice}: give auto, float32 or float64")
    return FEATURES_DTYPES[choice]


def graph_inputs(model: NormalizedModel) -> list[onnx.ValueInfoProto]:
    """Real inputs: those that are not also initializers (old IR versions list both)."""
    initializers = {init.name for init in model.proto.graph.initializer}
    return [i for i in model.proto.graph.input if i.name not in initializers]


def _bind_model(model: NormalizedModel, data_columns: Sequence[str] | None) -> tuple[InputBinding, ...]:
    inputs = graph_inputs(model)
    label = model.source.label
    for value in inputs:
        if not value.type.HasField("tensor_type"):
            kind = value.type.WhichOneof("value") or "unknown"
            raise OnnxfuseError(
                f"{label}: input '{value.name}' is a {kind.removesuffix('_type')}, not a tensor; "
                "only tensor inputs can be fused"
            )
    wanted = model.source.spec.features
    column_inputs = [i for i in inputs if _is_column_input(i)]
    if wanted is not None:
        if len(set(wanted)) != len(wanted):
            raise OnnxfuseError(f"{label}: --features repeats a column ({','.join(wanted)})")
        if not column_inputs:
            raise OnnxfuseError(
                f"{label}: --features given but the model has no numeric rank-1 or rank-2 input "
                "and no one-column string input"
            )
        bound = _split_columns(column_inputs, tuple(wanted), label)
    else:
        bound = {i.name: _columns_by_name(i, label, data_columns) for i in column_inputs}
    for value in column_inputs:
        batch = value.type.tensor_type.shape.dim[0]
        if batch.HasField("dim_value") and value.name in bound:
            raise OnnxfuseError(
                f"{label}: input '{value.name}' has a fixed batch size {batch.dim_value}; "
                "re-export the model with a dynamic first dimension"
            )
    if data_columns is not None:
        for name, columns in bound.items():
            for column in columns:
                if column not in data_columns:
                    raise OnnxfuseError(f"{label}: input '{name}' needs column '{column}', which the data lacks")
    return tuple(
        InputBinding(name=i.name, elem_type=elem_type(i), rank=rank(i) or 0, columns=bound.get(i.name)) for i in inputs
    )


def _split_columns(
    inputs: list[onnx.ValueInfoProto], wanted: tuple[str, ...], label: str
) -> dict[str, tuple[str, ...]]:
    widths = [_width(i) for i in inputs]
    if None in widths[:-1]:
        name = inputs[widths.index(None)].name
        raise OnnxfuseError(f"{label}: input '{name}' has a dynamic width and is not the last input")
    fixed = sum(w for w in widths if w is not None)
    if widths[-1] is None:
        widths[-1] = len(wanted) - fixed
    if sum(widths) != len(wanted) or widths[-1] < 1:
        described = ", ".join(
            f"'{i.name}' takes {w if w is not None else 'any'}" for i, w in zip(inputs, [_width(i) for i in inputs])
        )
        raise OnnxfuseError(
            f"{label}: input {described} column(s) but --features gives {len(wanted)} ({','.join(wanted)})"
        )
    bound, start = {}, 0
    for value, width in zip(inputs, widths):
        bound[value.name] = wanted[start : start + width]
        start += width
    return bound


def _columns_by_name(value: onnx.ValueInfoProto, label: str, data_columns: Sequence[str] | None) -> tuple[str, ...]:
    width = _width(value)
    if width != 1:
        takes = f"takes {width} columns" if width else "takes any number of columns"
        raise OnnxfuseError(f"{label}: input '{value.name}' {takes}; say which with --features")
    if data_columns is not None and value.name not in data_columns:
        raise OnnxfuseError(f"{label}: input '{value.name}' is not a column of the data; bind it with --features")
    return (value.name,)


def _shared_inputs(
    models: Sequence[NormalizedModel],
    bindings: Sequence[tuple[InputBinding, ...]],
    *,
    has_features: bool,
    strings: dict[str, str],
) -> tuple[onnx.ValueInfoProto, ...]:
    shared: dict[str, tuple[onnx.ValueInfoProto, str]] = {}
    for model, model_bindings in zip(models, bindings):
        values = {i.name: i for i in graph_inputs(model)}
        for binding in model_bindings:
            if binding.columns is not None:
                continue
            value = values[binding.name]
            if has_features and value.name == FEATURES:
                raise OnnxfuseError(
                    f"{model.source.label}: input '{FEATURES}' is not bound to columns but its name is "
                    "the fused model's packed input; bind it with --features"
                )
            if value.name in strings:
                raise OnnxfuseError(
                    f"{model.source.label}: input '{value.name}' is not bound to columns but its name is that of "
                    f"the string column {strings[value.name]} reads; rename one of them"
                )
            if value.name in shared and not _compatible(shared[value.name][0], value):
                raise OnnxfuseError(
                    f"{model.source.label}: input '{value.name}' has another type or shape than in "
                    f"{shared[value.name][1]}; inputs of one name are shared and must agree"
                )
            shared.setdefault(value.name, (value, model.source.label))
    return tuple(v for v, _ in shared.values())


def _compatible(a: onnx.ValueInfoProto, b: onnx.ValueInfoProto) -> bool:
    if a.type.WhichOneof("value") != b.type.WhichOneof("value") or elem_type(a) != elem_type(b):
        return False
    if rank(a) is None or rank(b) is None:
        return True
    if rank(a) != rank(b):
        return False
    for da, db in zip(a.type.tensor_type.shape.dim, b.type.tensor_type.shape.dim):
        if da.HasField("dim_value") and db.HasField("dim_value") and da.dim_value != db.dim_value:
            return False
    return True


def _is_column_input(value: onnx.ValueInfoProto) -> bool:
    if elem_type(value) == onnx.TensorProto.STRING:
        return rank(value) in (1, 2) and _width(value) == 1
    return elem_type(value) in _NUMERIC and rank(value) in (1, 2)


def _width(value: onnx.ValueInfoProto) -> int | None:
    dims = value.type.tensor_type.shape.dim
    if len(dims) == 1:
        return 1
    return dims[1].dim_value if dims[1].HasField("dim_value") else None
