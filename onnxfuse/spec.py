"""Every option of a merge, once, as frozen dataclasses."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from onnxfuse.errors import OnnxfuseError

FUSIONS = ("stack", "mean", "vote", "gate")
METAS = ("linear", "mlp", "gbdt")
TASKS = ("auto", "classification", "regression")
FEATURES_DTYPES = ("auto", "float32", "float64")


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


@dataclasses.dataclass(frozen=True)
class FuseSpec:
    """A whole `onnxfuse merge` request, as the CLI or a spec file states it."""

    models: tuple[ModelSpec, ...]
    output: Path
    data: Path | None = None
    target: str | None = None
    fusion: str = "stack"
    meta: str = "linear"
    task: str = "auto"
    passthrough: bool = False
    holdout: float = 0.2
    seed: int = 0
    target_opset: int | None = None
    max_ir_version: int | None = None
    keep_model_outputs: bool = False
    optimize: bool = True
    ort: bool = False
    report: Path | None = None
    features_dtype: str = "auto"  # of the packed `features`; auto: float64 when a source reads a column as double


SPEC_KEYS = (
    "output", "data", "target", "fusion", "meta", "task", "passthrough", "holdout", "seed",
    "target_opset", "max_ir_version", "keep_model_outputs", "no_optimize", "ort", "report", "features_dtype", "model",
)  # fmt: skip
DECLARED_OUTPUTS = ("probabilities", "logits", "log_probabilities", "label", "prediction")
MODEL_KEYS = ("path", "features", "name", *DECLARED_OUTPUTS, "classes")
_PATH_KEYS = ("output", "data", "report")


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
    _check_keys(raw, SPEC_KEYS, f"spec {path}")
    folder = path.resolve().parent
    options = {
        key: (_under(folder, value, f"spec {path}: '{key}'") if key in _PATH_KEYS else value)
        for key, value in raw.items()
        if key != "model"
    }
    if "no_optimize" in options:
        options["optimize"] = not options.pop("no_optimize")
    _check_types(options, f"spec {path}")
    tables = raw.get("model", [])
    if not isinstance(tables, list):
        raise OnnxfuseError(f"spec {path}: 'model' must be a list of [[model]] tables")
    options["models"] = tuple(
        _model_spec(table, folder, f"spec {path}: model {i}") for i, table in enumerate(tables, 1)
    )
    return options


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


_TYPES = {
    "fusion": str, "meta": str, "task": str, "target": str, "passthrough": bool, "holdout": (int, float),
    "seed": int, "target_opset": int, "max_ir_version": int, "keep_model_outputs": bool, "optimize": bool, "ort": bool,
    "features_dtype": str,
}  # fmt: skip
_CHOICES = {"fusion": FUSIONS, "meta": METAS, "task": TASKS, "features_dtype": FEATURES_DTYPES}


def _check_types(options: dict, where: str) -> None:
    for key, value in options.items():
        wanted = _TYPES.get(key)
        if wanted is not None and (not isinstance(value, wanted) or (wanted is int and isinstance(value, bool))):
            raise OnnxfuseError(f"{where}: '{key}' has the wrong type ({type(value).__name__})")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise OnnxfuseError(f"{where}: '{key}' must be one of {', '.join(_CHOICES[key])}, not '{value}'")


def _check_keys(table: dict, known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise OnnxfuseError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
