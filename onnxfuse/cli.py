"""The `onnxfuse` command: parse flags into a FuseSpec, run the pipeline, map errors to exit codes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from click.core import ParameterSource

from onnxfuse import __version__
from onnxfuse.errors import OnnxfuseError, OnnxfuseWarning, VerificationError
from onnxfuse.spec import (
    PATHS,
    FuseSpec,
    ModelSpec,
    declare,
    long_flag,
    option_types,
    options,
    read_spec,
    spec_key,
)

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Group(click.Group):
    """Every failure ends in one `error: ...` line; a traceback only with ONNXFUSE_DEBUG=1."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        try:
            with _quiet_libraries():
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `onnxfuse`: the help, as click shows it
            exc.show()
            code = exc.exit_code
        except click.UsageError as exc:
            code = _fail(exc, exc.format_message(), EXIT_USAGE, hint=_help_hint(exc.ctx))
        except click.ClickException as exc:
            code = _fail(exc, exc.format_message(), EXIT_USAGE)
        except (click.Abort, KeyboardInterrupt) as exc:
            code = _fail(exc, "interrupted; nothing written", EXIT_INTERRUPTED)
        except OnnxfuseError as exc:
            code = _fail(exc, str(exc), EXIT_USAGE)
        except VerificationError as exc:
            code = _fail(exc, f"verification failed, nothing written: {exc}", EXIT_INTERNAL)
        except _Differs as exc:
            code = _fail(exc, str(exc), EXIT_INTERNAL)
        except Exception as exc:
            code = _fail(exc, f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL)
        sys.exit(code or EXIT_OK)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command's whole summary: click cuts one longer than the terminal at `...`; here it wraps."""
        commands = [(name, self.get_command(ctx, name)) for name in self.list_commands(ctx)]
        rows = [(name, command.get_short_help_str(limit=10_000)) for name, command in commands
                if command is not None and not command.hidden]  # fmt: skip
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Library warnings (scikit-learn convergence, onnxscript's folder) are noise on a console
    that promises one line per failure; ONNXFUSE_DEBUG=1 shows them. Our own warnings
    (OnnxfuseWarning) are each one `warning: ...` line on stderr."""
    if os.environ.get("ONNXFUSE_DEBUG") == "1":
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", OnnxfuseWarning)
        warnings.showwarning = _show_warning
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, OnnxfuseWarning):
        click.echo("warning: " + " ".join(str(message).split()), err=True)


def _fail(exc: BaseException, message: str, code: int, *, hint: str | None = None) -> int:
    if os.environ.get("ONNXFUSE_DEBUG") == "1":
        raise exc
    click.echo("error: " + " ".join(message.split()), err=True)
    if hint:
        click.echo(hint, err=True)
    return code


def _help_hint(ctx: click.Context | None) -> str:
    """A usage mistake's second line: where the command's help is (click's own hint, with `-h`)."""
    command = ctx.command_path if ctx is not None else "onnxfuse"
    option = ctx.help_option_names[0] if ctx is not None and ctx.help_option_names else "-h"
    return f"Try '{command} {option}' for help."


@click.group(name="onnxfuse", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxfuse")
def cli() -> None:
    """Merge trained ONNX models into one verified, portable ONNX file.

    Run 'onnxfuse COMMAND -h' for a command's options.
    """


def spec_options(command: Callable) -> Callable:
    """The FuseSpec options as click options (see `spec.option`): declared once, in spec.py."""
    for field in reversed(options()):
        command = click.option(*(field.metadata["flags"] or (long_flag(field),)), spec_key(field),
                               help=field.metadata["help"], **_click_kind(field))(command)  # fmt: skip
    return command


def _click_kind(field: dataclasses.Field) -> dict:
    """The click type and default of an option, from the field's type, default and rules."""
    rules, default = field.metadata, None if field.default is dataclasses.MISSING else field.default
    if isinstance(default, bool):
        return {"is_flag": True}
    kind = option_types(field)
    if "choices" in rules:
        kind = click.Choice(rules["choices"])
    elif field.name == "output":  # the raw text: click.Path drops a trailing '/', which says "a folder"
        return {"type": str, "default": None, "callback": _output_file, "metavar": "PATH"}
    elif PATHS in kind:  # repeatable: `--data a.parquet --data b.parquet`
        return {"type": click.Path(path_type=Path), "multiple": True, "default": None}
    elif Path in kind:
        kind = click.Path(path_type=Path)
    elif float in kind:
        kind = click.FloatRange(rules.get("minimum"), rules.get("maximum"), max_open=rules.get("maximum_open", False))
    elif int in kind:
        kind = click.IntRange(rules.get("minimum"), rules.get("maximum")) if "minimum" in rules else int
    else:
        kind = str
    return {"type": kind, "default": default, "show_default": default is not None}


def _output_file(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """`-o`: a file name, not a folder (refused before anything runs); one not ending in .onnx is warned of."""
    from onnxfuse.emit import output_path

    return None if value is None else output_path(value)


MERGE_EXAMPLE = """\b
Examples:
  onnxfuse merge a.onnx b.onnx --data joint.csv --target y -o fused.onnx
  onnxfuse merge a.onnx b.onnx --features a,b --features c,d --data joint.csv --target y -o fused.onnx
  onnxfuse merge --spec fuse.toml
"""


@cli.command(epilog=MERGE_EXAMPLE)
@click.argument("models", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@spec_options
@click.option(
    "--features", "features", multiple=True,
    help="Columns of one model's inputs, 'f1,f2': once per model in order ('-' binds that model by name), "
    "or 'M:f1,f2' for model M (1-based) only.",
)  # fmt: skip
@click.option(
    "--declare", "declarations", multiple=True, metavar="M:KEY=VALUE",
    help="What model M (1-based) outputs: probabilities|logits|log_probabilities|label|prediction=OUTPUT, "
    "or classes=A,B,...; repeatable.",
)  # fmt: skip
@click.option("--spec", "spec_file", type=click.Path(path_type=Path), help="Read the options from a TOML file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines or bars (they go to stderr on a terminal only).")
@click.pass_context
def merge(ctx: click.Context, spec_file: Path | None, quiet: bool, **flags) -> None:
    """Merge MODELS into one ONNX file (-o OUT.onnx), or as a --spec file says."""
    from onnxfuse.pipeline import merge as run_merge

    with _Progress(enabled=not quiet and sys.stderr.isatty()) as progress:
        result = run_merge(_fuse_spec(ctx, spec_file, flags), progress=progress)
    classes = f", {len(result.classes)} classes" if result.classes is not None else ""
    if result.fusion.get("holdout", {}).get("metrics"):
        from onnxfuse.report import format_table

        click.echo(format_table(result.fusion["holdout"], result.fusion))
    also = f" (and {result.output.with_suffix('.ort').name} for mobile)" if result.ort else ""
    click.echo(
        f"wrote {result.output}{also}: {len(result.features)} features, {result.task} ({result.why}){classes}, "
        f"ai.onnx {result.versions.opset}, ai.onnx.ml {result.versions.ml_opset}, IR {result.versions.ir_version}"
    )


@cli.command(name="verify")
@click.argument("fused", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--data", type=click.Path(path_type=Path), help="Rows (.csv, .tsv, .parquet, .npz) to compare on.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of generated rows without --data.")
def verify_command(fused: Path, models: tuple[Path, ...], data: Path | None, seed: int) -> None:
    """Re-check FUSED against its source MODELS: exit 0 equal, 1 differs, 2 bad input."""
    from onnxfuse.reverify import reverify

    try:
        count = reverify(fused, models, data=data, seed=seed)
    except VerificationError as exc:
        raise _Differs(f"{fused} does not reproduce its sources: {exc}") from exc
    click.echo(f"ok: {fused} reproduces its {count} sources")


class _Differs(Exception):
    """`verify` found a difference: exit 1 with one line, not an internal error."""


@cli.command()
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def inspect(model: Path, as_json: bool) -> None:
    """Show MODEL's inputs, outputs, opsets, IR version and size."""
    from onnxfuse.describe import describe, format_text

    info = describe(model)
    click.echo(json.dumps(info, indent=2, sort_keys=True) if as_json else format_text(info))


@cli.command()
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), callback=_output_file,
              help="The lowered .onnx file to write (ai.onnx ops only).")  # fmt: skip
def lower(model: Path, output: Path) -> None:
    """Rewrite MODEL's ai.onnx.ml ops into plain ai.onnx, for OpenVINO, tract and other runtimes."""
    from onnxfuse.lower.file import lower_file

    done = lower_file(model, output)
    nodes = "node" if done.rewritten == 1 else "nodes"
    click.echo(f"wrote {done.output}: {done.rewritten} ai.onnx.ml {nodes} rewritten ({done.nodes} ai.onnx nodes), "
               f"equal to {model.name} in onnxruntime on {done.rows} rows")  # fmt: skip


@cli.command()
@click.argument("fused", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("data", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The answers to write: .csv or .parquet.")  # fmt: skip
@click.option("--keep", multiple=True, metavar="COLUMN",
              help="Copy this DATA column (an id, say) into the output first; repeatable.")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (it goes to stderr on a terminal only).")
def predict(fused: Path, data: Path, output: Path, keep: tuple[str, ...], quiet: bool) -> None:
    """Score FUSED on DATA (columns by name): label and probabilities, or prediction."""
    from onnxfuse.predict import write_predictions

    with _Progress(enabled=not quiet and sys.stderr.isatty()) as progress:
        rows = write_predictions(fused, data, output, keep=keep, progress=progress.rows)
    click.echo(f"wrote {output}: {rows} rows")


@cli.command(name="evaluate")
@click.argument("fused", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("models", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Labelled rows (.csv, .parquet, .npz).")
@click.option("--target", required=True, help="The label column in --data.")
@click.option("--report", type=click.Path(path_type=Path),
              help="Also write the report: .json, or .html with plots (pip install 'onnxfuse[report]').")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (it goes to stderr on a terminal only).")
def evaluate_command(fused: Path, models: tuple[Path, ...], data: Path, target: str, report: Path | None,
                     quiet: bool) -> None:  # fmt: skip
    """Score FUSED (and its source MODELS, matched by sha256) on new labelled rows."""
    from onnxfuse.evaluate import evaluate
    from onnxfuse.report import check_html, format_evaluation, write_report

    if report is not None:
        check_html(report, [fused, data, *models])
    with _Progress(enabled=not quiet and sys.stderr.isatty()) as progress:
        evaluation = evaluate(fused, data, target, sources=models, progress=progress.rows)
    click.echo(format_evaluation(evaluation.summary))
    if report is not None:
        write_report(report, evaluation.summary, evaluation, title=f"onnxfuse evaluate: {fused.name} on {data.name}")
        click.echo(f"wrote {report}")


def _fuse_spec(ctx: click.Context, spec_file: Path | None, flags: dict) -> FuseSpec:
    """Flags, over the spec file's settings where a flag is given on the command line."""
    settings = read_spec(spec_file) if spec_file is not None else {}
    models, features, declarations = flags.pop("models"), flags.pop("features"), flags.pop("declarations")
    chosen = {}
    for field in options():
        key, value = spec_key(field), flags[spec_key(field)]
        value = not value if field.metadata.get("negated") else value
        if isinstance(value, tuple):  # a repeatable option: one value is that value, none is unset
            value = (value[0] if len(value) == 1 else value) if value else None
        if ctx.get_parameter_source(key) == ParameterSource.COMMANDLINE or field.name not in settings:
            if value is not None:
                chosen[field.name] = value
        else:
            chosen[field.name] = settings[field.name]
    specs = settings.get("models", ()) if not models else tuple(ModelSpec(path) for path in models)
    if features:
        specs = _bound_features(specs, features)
    specs = _declared(specs, declarations)
    if chosen.get("output") is None:
        raise OnnxfuseError("missing -o/--output OUT.onnx" + (" (or 'output' in the spec)" if spec_file else ""))
    if ctx.get_parameter_source("output") != ParameterSource.COMMANDLINE:
        from onnxfuse.emit import output_path

        output_path(chosen["output"])  # the spec's output, checked as -o is
    return FuseSpec(models=specs, **chosen)


class _Progress:
    """A `progress.Reporter` on stderr: a line per stage, and a bar for scoring long data (over PROGRESS_ROWS
    rows); silent when not `enabled` (not a terminal, or --quiet)."""

    PROGRESS_ROWS = 200_000

    def __init__(self, *, enabled: bool = True) -> None:
        self._bar = None
        self._enabled = enabled

    def stage(self, text: str) -> None:
        if self._enabled:
            self._close_bar()
            click.echo(f"... {text}", err=True)

    def rows(self, done: int, total: int) -> None:
        if not self._enabled or total < self.PROGRESS_ROWS:
            return
        if self._bar is None:
            self._bar = click.progressbar(length=total, label="scoring sources", file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(done)

    def _close_bar(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*(exc_info or (None, None, None)))
            self._bar = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._close_bar(*exc_info)


def _declared(specs: tuple[ModelSpec, ...], declarations: tuple[str, ...]) -> tuple[ModelSpec, ...]:
    """`--declare M:KEY=VALUE` onto model M's spec (`classes` comma-separated; all integers read as ints)."""
    specs = list(specs)
    for text in declarations:
        index, _, rest = text.partition(":")
        key, equals, value = rest.partition("=")
        if not index.strip().isdigit() or not equals or not 1 <= int(index) <= len(specs):
            raise OnnxfuseError(
                f"--declare '{text}': give M:KEY=VALUE with M a model number 1..{len(specs)}, e.g. 1:logits=output_0"
            )
        key, value = key.strip(), value.strip()
        if key == "classes":
            items = [c.strip() for c in value.split(",")]
            ints = all(c.lstrip("-").isdigit() for c in items)
            value = [int(c) for c in items] if ints else items
        specs[int(index) - 1] = declare(specs[int(index) - 1], {key: value}, f"--declare '{text}'")
    return tuple(specs)


def _bound_features(specs: tuple[ModelSpec, ...], features: tuple[str, ...]) -> tuple[ModelSpec, ...]:
    """`--features` once per model in order (`-`: bind by name), or indexed `M:cols` for some models."""
    indexed = [re.match(r"(\d+):(.*)", text, re.DOTALL) for text in features]
    if not any(indexed):
        if len(features) != len(specs):
            raise OnnxfuseError(
                f"--features is given {len(features)} times for {len(specs)} models; give it once per model "
                "('-' binds a model by name), or as M:f1,f2 for model M only"
            )
        return tuple(
            dataclasses.replace(s, features=None if f.strip() == "-" else _columns(f)) for s, f in zip(specs, features)
        )
    if not all(indexed):
        positional = next(text for text, match in zip(features, indexed) if match is None)
        raise OnnxfuseError(
            f"--features '{positional}' has no model index while others have one; "
            "give every --features as M:f1,f2, or all of them in model order"
        )
    chosen: dict[int, tuple[str, ...]] = {}
    for text, match in zip(features, indexed):
        index = int(match.group(1))
        if not 1 <= index <= len(specs):
            raise OnnxfuseError(f"--features '{text}': there is no model {index}; models are 1 to {len(specs)}")
        if index in chosen:
            raise OnnxfuseError(f"--features '{text}': model {index} is given twice; give each model once")
        chosen[index] = _columns(match.group(2))
    return tuple(dataclasses.replace(s, features=chosen.get(i, s.features)) for i, s in enumerate(specs, start=1))


def _columns(text: str) -> tuple[str, ...]:
    columns = tuple(c.strip() for c in text.split(","))
    if not all(columns):
        raise OnnxfuseError(f"--features '{text}': empty column name")
    return columns


def main() -> None:
    """The console script: SIGTERM unwinds like Ctrl-C, so temporary files are removed on the way out."""
    signal.signal(signal.SIGTERM, _interrupt)
    cli()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
