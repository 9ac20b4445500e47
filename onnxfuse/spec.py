"""Every option of a merge, once, as frozen dataclasses."""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxfuse.engine import ENGINES
from onnxfuse.errors import OnnxfuseError
from onnxfuse.heads import FUSIONS, METAS, fusion

if TYPE_CHECKING:
    import onnx

TASKS = ("auto", "classification", "regression")
FEATURES_DTYPES = ("auto", "float32", "float64")
OPS = ("standard", "core")
PATHS = tuple[Path, ...]  # an option that takes several paths (`--data` repeated)


def option(default: Any, help: str, *, flags: tuple[str, ...] = (), **rules: Any) -> Any:
    """A FuseSpec field that is also a command-line option and a spec-file key.

    `flags` (default `--field-name`) name the option; the spec-file key is the long
    flag with `_` for `-`. `rules`: `choices`, `minimum`, `maximum`, `maximum_open`
    (checked for every spec, whichever way it was made), and `negated` (a flag such as
    `--no-optimize` that sets the field to False).
    """
    return dataclasses.field(default=default, metadata={"help": help, "flags": flags, **rules})


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One source model: its file and, optionally, the data columns its input takes."""

    path: Path
    features: tuple[str, ...] | None = None
    name: str | None = None
    # declarations for what onnxfuse cannot infer (see roles.output_role): output names, and the class list
    probabilities: str | None = None
    logits: str | None = None
    log_probabilities: str | None = None
    label: str | None = None
    prediction: str | None = None
    classes: tuple[str, ...] | tuple[int, ...] | None = None
    # a model handed over in memory (the Python API): `path` then only names it, as "model1.onnx"
    proto: onnx.ModelProto | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class FuseSpec:
    """A whole `onnxfuse merge` request, as the CLI or a spec file states it."""

    models: tuple[ModelSpec, ...]
    output: Path | None = option(dataclasses.MISSING, "The fused .onnx file to write.", flags=("-o", "--output"))
    data: Path | PATHS | None = option(
        None, "Rows to verify (and train) on: a .csv, .tsv, .parquet or .npz file, a folder of Parquet or CSV files "
        "(hive partitions included), a glob, or several files (repeat --data).",
    )  # fmt: skip
    target: str | None = option(None, "The label column in --data.")
    fusion: str = option(
        "stack", "How the sources are combined: a meta-learner (stack), their weighted mean, a weighted vote of "
        "their labels, or a per-row gate on the features (gate).", choices=tuple(FUSIONS),
    )  # fmt: skip
    meta: str = option(
        "auto", "The stacking head's learner (--fusion stack): auto chooses among each source alone, the fitted "
        "mean, the gate and the linear, mlp and gbdt (LightGBM) learners by cross-validation.", choices=METAS,
    )  # fmt: skip
    task: str = option("auto", "The target's task; auto reads it from the target column.", choices=TASKS)
    passthrough: bool = option(False, "The stacking head also reads the raw features.")
    holdout: float = option(
        0.2, "Fraction of the labelled rows held out to report the head on (0: no report); the head is then "
        "refitted on all rows.", minimum=0.0, maximum=1.0, maximum_open=True,
    )  # fmt: skip
    seed: int = option(0, "Seed of the hold-out split, the heads and generated verification rows.")
    fit_rows: int = option(
        1_000_000, "The head is fitted on a seeded uniform sample of at most this many rows of --data; the hold-out "
        "rows of all of it are measured.", minimum=2,
    )  # fmt: skip
    engine: str = option(
        "local", "Where larger-than-sample data is scored: local threads, or Ray Data (pip install 'onnxfuse[ray]'; "
        "RAY_ADDRESS names a cluster).", choices=ENGINES,
    )  # fmt: skip
    target_opset: int | None = option(None, "ai.onnx opset of the output.", minimum=1)
    max_ir_version: int | None = option(None, "Refuse to write a higher IR version.", minimum=3)
    keep_model_outputs: bool = option(False, "Also output each model's own outputs as m{i}/<name>.")
    optimize: bool = option(True, "Keep the plain splice.", flags=("--no-optimize",), negated=True)
    ort: bool = option(False, "Also write OUT.ort for mobile runtimes.")
    report: Path | None = option(
        None, "Write the hold-out report: .json, or .html with plots (pip install 'onnxfuse[report]')."
    )
    explain: bool = option(False, "Also output `available` and `source_effects` per row (and mixtures' `weights`).")
    ops: str = option(
        "standard", "Operator domains of the file: standard (ai.onnx and ai.onnx.ml), or core (ai.onnx alone: every "
        "ai.onnx.ml op rewritten, for OpenVINO, tract, TensorRT; slower in onnxruntime).", choices=OPS,
    )  # fmt: skip
    features_dtype: str = option(
        "auto", "Element type of the packed `features` input; auto: float64 when a model reads a column as double.",
        choices=FEATURES_DTYPES,
    )  # fmt: skip
    # not an option: False builds the head as before availability handling (NaN propagates), for the benchmarks
    # that measure what the handling costs and gains
    availability: bool = True


def options() -> list[dataclasses.Field]:
    """The FuseSpec fields that are options, in the order `--help` lists them."""
    return [field for field in dataclasses.fields(FuseSpec) if "help" in field.metadata]


def long_flag(field: dataclasses.Field) -> str:
    flags = field.metadata["flags"] or (f"--{field.name.replace('_', '-')}",)
    return next(flag for flag in flags if flag.startswith("--"))


def option_types(field: dataclasses.Field) -> set[type]:
    """The types an option's value may have (its type hint without None): `Path | None` gives {Path}."""
    hint = typing.get_type_hints(FuseSpec)[field.name]
    return (set(typing.get_args(hint)) or {hint}) - {type(None)}


def spec_key(field: dataclasses.Field) -> str:
    """The spec-file key of an option: its long flag with `_` for `-`."""
    return long_flag(field).removeprefix("--").replace("-", "_")


def check_spec(spec: FuseSpec) -> None:
    """Refuse a spec no merge can run, naming the option: each option's rules, then how options go together."""
    for field in options():
        _check_rules(field, getattr(spec, field.name), long_flag(field))
    if len(spec.models) < 2:
        raise OnnxfuseError("merge needs at least two models")
    if spec.target and not spec.data:
        raise OnnxfuseError("--target needs --data")
    chosen = fusion(spec.fusion)
    trains = chosen.trains
    if spec.passthrough and "passthrough" not in chosen.options:
        raise OnnxfuseError(
            f"--passthrough feeds the raw features to the fusion head; --fusion {spec.fusion} mixes the sources' "
            "outputs only: drop --passthrough, or use --fusion stack or gate"
        )
    if spec.data and not spec.target and trains:
        raise OnnxfuseError(f"--fusion {spec.fusion} needs --target, the label column of --data")
    if trains and not spec.data:
        raise OnnxfuseError(
            f"--fusion {spec.fusion} trains on data: give --data and --target (or use --fusion mean / vote)"
        )


def _check_rules(field: dataclasses.Field, value: Any, name: str) -> None:
    rules = field.metadata
    if value is None:
        return
    if "choices" in rules and value not in rules["choices"]:
        raise OnnxfuseError(f"{name} must be one of {', '.join(rules['choices'])}, not '{value}'")
    low, high, open_high = rules.get("minimum"), rules.get("maximum"), rules.get("maximum_open")
    if (low is not None and value < low) or (high is not None and (value >= high if open_high else value > high)):
        where = f"[{low}, {high}{')' if open_high else ']'}" if high is not None else f"at least {low}"
        raise OnnxfuseError(f"{name} must be {'in ' if high is not None else ''}{where}, not {value}")


DECLARED_OUTPUTS = ("probabilities", "logits", "log_probabilities", "label", "prediction")
MODEL_KEYS = ("path", "features", "name", *DECLARED_OUTPUTS, "classes")


def read_spec(path: Path) -> dict:
    """A `--spec` TOML file as FuseSpec keyword arguments, paths resolved against its folder.

    Rules: top-level keys are the long flag names with `_` for `-`; one `[[model]]`
    table per source with `path` and optionally `features` (a list of columns) and
    `name`; an unknown key, a wrong type or a missing `path` is an error that says
    which key and lists the known ones.
    """
    import tomllib

    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise OnnxfuseError(f"spec {path}: cannot read it ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise OnnxfuseError(f"spec {path}: not valid TOML ({exc})") from exc
    by_key = {spec_key(field): field for field in options()}
    _check_keys(raw, (*by_key, "model"), f"spec {path}")
    folder = path.resolve().parent
    settings = {}
    for key, value in raw.items():
        if key != "model":
            field = by_key[key]
            value = _typed(field, value, f"spec {path}: '{key}'", folder)
            settings[field.name] = not value if field.metadata.get("negated") else value
    tables = raw.get("model", [])
    if not isinstance(tables, list):
        raise OnnxfuseError(f"spec {path}: 'model' must be a list of [[model]] tables")
    settings["models"] = tuple(
        _model_spec(table, folder, f"spec {path}: model {i}") for i, table in enumerate(tables, 1)
    )
    return settings


def _model_spec(table: object, folder: Path, where: str) -> ModelSpec:
    if not isinstance(table, dict):
        raise OnnxfuseError(f"{where}: must be a table with 'path'")
    _check_keys(table, MODEL_KEYS, where)
    if not isinstance(table.get("path"), str):
        raise OnnxfuseError(f"{where}: needs 'path', a string")
    features = table.get("features")
    if features is not None and not (isinstance(features, list) and all(isinstance(f, str) and f for f in features)):
        raise OnnxfuseError(f"{where}: 'features' must be a list of column names")
    name = table.get("name")
    if name is not None and not isinstance(name, str):
        raise OnnxfuseError(f"{where}: 'name' must be a string")
    model = ModelSpec(_under(folder, table["path"], where), tuple(features) if features is not None else None, name)
    return declare(model, {key: table[key] for key in (*DECLARED_OUTPUTS, "classes") if key in table}, where)


def declare(model: ModelSpec, declarations: dict, where: str) -> ModelSpec:
    """A model with output declarations: output names are strings, `classes` a list of all-str or all-int."""
    known = (*DECLARED_OUTPUTS, "classes")
    for key, value in declarations.items():
        if key not in known:
            raise OnnxfuseError(f"{where}: unknown declaration '{key}'; known: {', '.join(known)}")
        if key == "classes":
            declarations[key] = _class_list(value, where)
        elif not isinstance(value, str) or not value:
            raise OnnxfuseError(f"{where}: '{key}' must name one output of the model (a string)")
    return dataclasses.replace(model, **declarations)


def _class_list(value: object, where: str) -> tuple:
    items = list(value) if isinstance(value, list | tuple) else []
    strings = all(isinstance(c, str) and c for c in items)
    ints = all(isinstance(c, int) and not isinstance(c, bool) for c in items)
    if len(items) < 2 or len(set(items)) != len(items) or not (strings or ints):
        raise OnnxfuseError(f"{where}: 'classes' must list two or more distinct labels, all strings or all integers")
    return tuple(items)


def _under(folder: Path, value: object, where: str) -> Path:
    """A path from the spec file, relative to the spec's folder (`..` collapsed for messages)."""
    if not isinstance(value, str):
        raise OnnxfuseError(f"{where}: a path must be a string, not {value!r}")
    return Path(os.path.normpath(folder / value))


def _typed(field: dataclasses.Field, value: object, where: str, folder: Path) -> Any:
    """A spec-file value of `field`, checked against the field's type and rules (paths resolved)."""
    wanted = option_types(field)
    if PATHS in wanted and isinstance(value, list):  # several files: `data = ["a.parquet", "b.parquet"]`
        if not value or not all(isinstance(item, str) for item in value):
            raise OnnxfuseError(f"{where} must be a path or a non-empty list of paths")
        return tuple(_under(folder, item, where) for item in value)
    is_path = Path in wanted
    if is_path:
        wanted = {str}
    if float in wanted:
        wanted.add(int)
    if not isinstance(value, tuple(wanted)) or (isinstance(value, bool) and bool not in wanted):
        raise OnnxfuseError(f"{where} has the wrong type ({type(value).__name__})")
    _check_rules(field, value, where)
    if field.name == "output" and value.endswith(("/", os.sep)):  # a Path would drop the separator
        raise OnnxfuseError(f"{where} {value}: is a folder; give a file name like fused.onnx")
    return _under(folder, value, where) if is_path else value


def _check_keys(table: dict, known: tuple[str, ...], where: str) -> None:
    """Refuse keys not in `known`, each with the closest known key when one is close (a typo)."""
    unknown = sorted(set(table) - set(known))
    if not unknown:
        return
    close = {key: difflib.get_close_matches(key, known, n=1, cutoff=0.7) for key in unknown}
    if len(unknown) == 1:
        key = unknown[0]
        named = f"unknown key '{key}';" + (f" did you mean '{close[key][0]}'?" if close[key] else "")
    else:
        listed = [f"'{key}'" + (f" (did you mean '{close[key][0]}'?)" if close[key] else "") for key in unknown]
        named = f"unknown keys {', '.join(listed)};"
    raise OnnxfuseError(f"{where}: {named} known keys: {', '.join(known)}")
