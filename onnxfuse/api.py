"""`onnxfuse.merge(...)` for Python users: the CLI's options and errors, models and data in memory, nothing written
unless asked."""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from onnxfuse.errors import OnnxfuseError
from onnxfuse.evaluation import Evaluation
from onnxfuse.spec import PATHS, FuseSpec, ModelSpec, declare, option_types, options
from onnxfuse.tables import DataInput, as_table

if TYPE_CHECKING:
    import pandas as pd

    from onnxfuse.heads.base import Head
    from onnxfuse.progress import Reporter

ModelInput = str | os.PathLike | onnx.ModelProto | ModelSpec


@dataclasses.dataclass(frozen=True)
class MergeResult:
    """A verified fused model: `model` (its proto), `report` (the `onnxfuse.fusion` metadata: method, head, hold-out
    figures), `head` (the fitted head), `evaluation` (the hold-out rows' answers, None without a hold-out)."""

    model: onnx.ModelProto
    report: dict
    head: Head
    evaluation: Evaluation | None
    features: tuple[str, ...]
    classes: tuple | None
    task: str
    sealed: bytes = dataclasses.field(repr=False, default=b"")  # the verified bytes, which `save` writes as they are

    def save(self, path: str | os.PathLike) -> Path:
        """Write the verified bytes (with the digest `onnxfuse verify` checks) atomically: a temp file beside
        `path`, then one rename."""
        from onnxfuse.emit import check_output, output_path, write_file

        target = output_path(path)
        check_output(target, [])
        write_file(target, self.sealed)
        return target

    def report_frame(self) -> pd.DataFrame:
        """The hold-out table as a DataFrame: one row per model (sources, fused, baseline), one column per metric."""
        import pandas as pd

        table = self.report.get("holdout", {}).get("metrics", {})
        return pd.DataFrame.from_dict(table, orient="index").rename_axis("model")

    def save_report(self, path: str | os.PathLike) -> Path:
        """The report as `--report` writes it: `.json`, or `.html` with the plots of the hold-out rows."""
        from onnxfuse.report import check_html, is_html, write_report

        target = Path(path)
        if is_html(target) and self.evaluation is None:
            raise OnnxfuseError(f"report {target}: there are no hold-out rows to plot; merge with a target and "
                                "holdout above 0, or write .json")  # fmt: skip
        check_html(target, [])
        write_report(target, self.report, self.evaluation, title="onnxfuse.merge")
        return target


def merge(
    models: Sequence[ModelInput],
    data: DataInput | None = None,
    *,
    features: Sequence[Sequence[str] | None] | None = None,
    declarations: Sequence[Mapping[str, Any] | None] | None = None,
    names: Sequence[str | None] | None = None,
    progress: Reporter | None = None,
    **settings: Any,
) -> MergeResult:
    """Merge `models` (paths or `onnx.ModelProto`s, or `ModelSpec`s) into one verified model.

    `data`: a pandas DataFrame, a pyarrow Table, a mapping of column name to array, or a path (.csv, .tsv,
    .parquet, .npz). `features`: per model, the columns its tensor input takes (None: bound by name).
    `declarations`: per model, what onnxfuse cannot infer (`{"logits": "output_0"}`, `{"classes": [...]}`).
    `names`: per model, how the report and metadata name it (default: the file's stem, `model{i}` for a proto).
    `settings`: the options of `onnxfuse merge`, by their spec-file names (listed below). Without `output`,
    nothing is written: the sources are scored and the file verified in memory (below 2 GB), and only the
    returned result holds it. Errors are `OnnxfuseError`, with the CLI's messages.
    """
    from onnxfuse.pipeline import merge as run_merge

    if isinstance(models, str | os.PathLike | onnx.ModelProto | ModelSpec):
        raise OnnxfuseError("onnxfuse.merge: give the models as a list, e.g. merge(['a.onnx', 'b.onnx'], data)")
    chosen = _settings(settings)
    if chosen.get("ort") and chosen.get("output") is None:
        raise OnnxfuseError("onnxfuse.merge: ort=True writes OUT.ort beside the model; give output='fused.onnx'")
    table, label = (None, None) if data is None else as_table(data)
    specs = _model_specs(models, {"features": features, "declarations": declarations, "names": names})
    spec = FuseSpec(models=specs, output=chosen.pop("output", None), data=label, **chosen)
    result = run_merge(spec, progress=progress, table=table)
    sealed = result.sealed if result.sealed is not None else spec.output.read_bytes()
    return MergeResult(onnx.load_model_from_string(sealed), result.fusion, result.head, result.evaluation,
                       result.features, result.classes, result.task, sealed)  # fmt: skip


def _settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword options checked against `FuseSpec`'s option list: a typo names the closest option."""
    fields = {field.name: field for field in options()}
    chosen = {}
    for key, value in settings.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise OnnxfuseError(f"onnxfuse.merge: unknown option '{key}'{hint} options: {', '.join(fields)}")
        if key == "output" and isinstance(value, str | os.PathLike):
            from onnxfuse.emit import output_path

            value = output_path(value)  # before Path() drops a trailing '/'
        if value is not None:
            chosen[key] = _typed(fields[key], value)
    return chosen


def _typed(field: dataclasses.Field, value: Any) -> Any:
    wanted = option_types(field)
    if Path in wanted and isinstance(value, str | os.PathLike):
        return Path(value)
    if PATHS in wanted and isinstance(value, list | tuple) and value and all(isinstance(v, str | os.PathLike)
                                                                            for v in value):  # fmt: skip
        return tuple(Path(v) for v in value)
    wanted = {kind for kind in wanted if kind is not PATHS}
    if float in wanted and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tuple(wanted)) or (isinstance(value, bool) and bool not in wanted):
        kinds = " or ".join(sorted("path" if kind is Path else kind.__name__ for kind in wanted))
        raise OnnxfuseError(f"onnxfuse.merge: option '{field.name}' must be a {kinds}, not {type(value).__name__}")
    return value


def _model_specs(models, per_model: Mapping[str, Sequence | None]) -> tuple[ModelSpec, ...]:
    """One `ModelSpec` per model (`per_model`: its features, declarations and name, each a list or None); a
    `ModelProto` stays in memory, named `model{i}.onnx` (what `onnx.save` would write hashes the same)."""
    for what, given in per_model.items():
        if given is not None and (isinstance(given, str) or len(given) != len(models)):
            raise OnnxfuseError(f"onnxfuse.merge: {what} has {len(given)} entries for {len(models)} models; give a "
                                "list with one per model (None where there is nothing to say)")  # fmt: skip
    specs = []
    for index, model in enumerate(models, start=1):
        spec = _model_spec(model, index)
        columns, declared, name = (None if given is None else given[index - 1] for given in per_model.values())
        if columns is not None:
            if isinstance(columns, str):
                raise OnnxfuseError(f"onnxfuse.merge: features of model {index} must be a list of columns, not "
                                    f"the string '{columns}'")  # fmt: skip
            spec = dataclasses.replace(spec, features=tuple(columns))
        if declared:
            spec = declare(spec, dict(declared), f"onnxfuse.merge: model {index}")
        if name is not None:
            spec = dataclasses.replace(spec, name=str(name))
        specs.append(spec)
    return tuple(specs)


def _model_spec(model: ModelInput, index: int) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return dataclasses.replace(model, path=Path(model.path))
    if isinstance(model, str | os.PathLike):
        return ModelSpec(Path(model))
    if isinstance(model, onnx.ModelProto):
        return ModelSpec(Path(f"model{index}.onnx"), name=f"model{index}", proto=model)  # checked by `load`
    raise OnnxfuseError(f"onnxfuse.merge: model {index} is a {type(model).__name__}; give a path or an "
                        "onnx.ModelProto")  # fmt: skip


def _options_help() -> str:
    lines = ["", "Options (`settings`), as `onnxfuse merge` and the spec file name them:"]
    for field in options():
        default = "" if field.default is dataclasses.MISSING else f" (default {field.default!r})"
        lines.append(f"    {field.name}: {field.metadata['help']}{default}")
    return "\n".join(lines)


merge.__doc__ = (merge.__doc__ or "") + _options_help()
