"""The `onnxfuse` command: parse flags into a FuseSpec, run the pipeline, map errors to exit codes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from onnxfuse import __version__
from onnxfuse.errors import OnnxfuseError, VerificationError
from onnxfuse.spec import FUSIONS, METAS, TASKS, FuseSpec, ModelSpec

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2


class _Group(click.Group):
    """Every failure ends in one `error: ...` line; a traceback only with ONNXFUSE_DEBUG=1."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.ClickException as exc:
            code = _fail(exc, exc.format_message(), EXIT_USAGE)
        except click.Abort as exc:
            code = _fail(exc, "interrupted", EXIT_INTERNAL)
        except OnnxfuseError as exc:
            code = _fail(exc, str(exc), EXIT_USAGE)
        except VerificationError as exc:
            code = _fail(exc, f"verification failed, nothing written: {exc}", EXIT_INTERNAL)
        except Exception as exc:
            code = _fail(exc, f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL)
        sys.exit(code or EXIT_OK)


def _fail(exc: BaseException, message: str, code: int) -> int:
    if os.environ.get("ONNXFUSE_DEBUG") == "1":
        raise exc
    click.echo("error: " + " ".join(message.split()), err=True)
    return code


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="onnxfuse")
def cli() -> None:
    """Merge trained ONNX models into one verified, portable ONNX file."""


@cli.command()
@click.argument("models", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="The fused .onnx file to write.")
@click.option("--data", type=click.Path(path_type=Path), help="Rows (.csv, .parquet, .npz) to verify (and train) on.")
@click.option("--target", help="The label column in --data.")
@click.option("--features", "features", multiple=True, help="Columns of one model's input, 'f1,f2'; once per model.")
@click.option("--fusion", type=click.Choice(FUSIONS), default="stack", show_default=True)
@click.option("--meta", type=click.Choice(METAS), default="linear", show_default=True)
@click.option("--task", type=click.Choice(TASKS), default="auto", show_default=True)
@click.option("--passthrough", is_flag=True, help="The fusion head also sees the raw features.")
@click.option("--holdout", type=click.FloatRange(0.0, 0.9), default=0.2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--target-opset", type=click.IntRange(1), help="ai.onnx opset of the output.")
@click.option("--max-ir-version", type=click.IntRange(3), help="Refuse to write a higher IR version.")
@click.option("--keep-model-outputs", is_flag=True, help="Also output each model's own outputs as m{i}/<name>.")
@click.option("--no-optimize", is_flag=True, help="Keep the plain splice.")
@click.option("--ort", is_flag=True, help="Also write OUT.ort for mobile runtimes.")
@click.option("--report", type=click.Path(path_type=Path), help="Write the hold-out report as JSON.")
@click.option("--spec", "spec_file", type=click.Path(path_type=Path), help="Read the options from a TOML file.")
def merge(
    models: tuple[Path, ...], output: Path | None, features: tuple[str, ...], spec_file: Path | None, **options
) -> None:
    """Merge MODELS into one ONNX file (-o OUT.onnx)."""
    from onnxfuse.pipeline import merge as run_merge

    if spec_file is not None:
        raise OnnxfuseError("--spec is not available yet; give the options as flags")
    if output is None:
        raise OnnxfuseError("missing -o/--output OUT.onnx")
    if features and len(features) != len(models):
        raise OnnxfuseError(
            f"--features is given {len(features)} times for {len(models)} models; give it once per model"
        )
    specs = tuple(
        ModelSpec(path=path, features=_columns(features[i]) if features else None) for i, path in enumerate(models)
    )
    optimize = not options.pop("no_optimize")
    with _Progress() as progress:
        result = run_merge(FuseSpec(models=specs, output=output, optimize=optimize, **options), progress=progress)
    classes = f", {len(result.classes)} classes" if result.classes is not None else ""
    if result.fusion.get("holdout", {}).get("metrics"):
        from onnxfuse.report import format_table

        click.echo(format_table(result.fusion["holdout"]))
    click.echo(
        f"wrote {result.output}: {len(result.features)} features, {result.task}{classes}, "
        f"ai.onnx {result.versions.opset}, ai.onnx.ml {result.versions.ml_opset}, IR {result.versions.ir_version}"
    )


@cli.command()
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def inspect(model: Path, as_json: bool) -> None:
    """Show MODEL's inputs, outputs, opsets, IR version and size."""
    from onnxfuse.describe import describe, format_text

    info = describe(model)
    click.echo(json.dumps(info, indent=2, sort_keys=True) if as_json else format_text(info))


class _Progress:
    """A progress bar on stderr for scoring long data (over PROGRESS_ROWS rows), nothing for short."""

    PROGRESS_ROWS = 200_000

    def __init__(self) -> None:
        self._bar = None

    def __call__(self, done: int, total: int) -> None:
        if total < self.PROGRESS_ROWS:
            return
        if self._bar is None:
            self._bar = click.progressbar(length=total, label="scoring sources", file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(done)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc_info)


def _columns(text: str) -> tuple[str, ...]:
    columns = tuple(c.strip() for c in text.split(","))
    if not all(columns):
        raise OnnxfuseError(f"--features '{text}': empty column name")
    return columns


def main() -> None:
    cli()
