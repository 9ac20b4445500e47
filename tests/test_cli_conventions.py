"""The command line's conventions (issue 14): help for every command and option, `-h`, usage mistakes as one
`error:` line and click's hint, `-o` a file not a folder, `.tsv` data, and hints for the likely typo."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import onnx
import pytest
from conftest import assert_one_error_line, columns_of, run_cli, save, write_csv
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

from onnxfuse.cli import cli
from onnxfuse.data import columns_found, read_table, require_column
from onnxfuse.emit import output_path
from onnxfuse.errors import OnnxfuseError, OnnxfuseWarning
from onnxfuse.spec import FuseSpec

ROWS = 300
EXAMPLE = "onnxfuse merge a.onnx b.onnx --data joint.csv --target y -o fused.onnx"


@pytest.fixture(autouse=True)
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONNXFUSE_DEBUG", raising=False)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, rows: dict[str, np.ndarray]) -> Path:
    """a.onnx on columns a,b and b.onnx on c,d (logistic regressions), and the same rows as .csv, .tsv and
    a `;`-separated .csv."""
    folder = tmp_path_factory.mktemp("conventions")
    for name, columns in (("a", "ab"), ("b", "cd")):
        model = LogisticRegression().fit(rows["x"][:ROWS, columns_of(columns)], rows["y"][:ROWS])
        initial = [(f"{columns}_input", FloatTensorType([None, 2]))]
        save(to_onnx(model, initial_types=initial, target_opset=18), folder / f"{name}.onnx")
    csv = write_csv(folder / "data.csv", {k: v[:ROWS] for k, v in rows.items()})
    (folder / "data.tsv").write_text(csv.read_text().replace(",", "\t"))
    (folder / "semicolons.csv").write_text(csv.read_text().replace(",", ";"))
    return folder


def merge_args(sources: Path, out: str, data: Path | None = None) -> list[object]:
    """Merge a.onnx and b.onnx with the mean of their answers on `data` (default: the sources' data.csv)."""
    return ["merge", sources / "a.onnx", sources / "b.onnx", "--features", "a,b", "--features", "c,d",
            "--data", data or sources / "data.csv", "--target", "y", "--fusion", "mean", "-o", out]  # fmt: skip


@pytest.fixture(scope="module")
def fused_from_tsv(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fused") / "fused.onnx"
    result = run_cli(*merge_args(sources, str(out), sources / "data.tsv"))
    assert result.exit_code == 0, result.stderr
    return out


def one_line(text: str) -> str:
    return " ".join(text.split())


# --- help -------------------------------------------------------------------------------------------------------------


def test_cli_prints_the_group_help_when_run_bare() -> None:
    result = run_cli()

    assert result.exit_code in (0, 2), result.output
    assert "error:" not in result.output
    assert "Usage: onnxfuse [OPTIONS] COMMAND" in result.output
    assert "Commands:" in result.output
    for name in cli.commands:
        assert f"  {name} " in result.output, name


@pytest.mark.parametrize("command", [(), *((name,) for name in sorted(cli.commands))])
def test_help_option_h_shows_the_same_help_as_long_help(command: tuple[str, ...]) -> None:
    short, long = run_cli(*command, "-h"), run_cli(*command, "--help")

    assert short.exit_code == long.exit_code == 0, short.output
    assert short.stdout == long.stdout
    assert "Usage: onnxfuse" in short.stdout and "-h, --help" in short.stdout


def test_group_help_shows_every_command_summary_whole() -> None:
    """Click cuts a summary longer than the terminal at `...`; each command's first paragraph shows in full."""
    result = run_cli("--help")

    assert result.exit_code == 0
    assert "..." not in result.stdout.split("Commands:")[1]
    for name, command in cli.commands.items():
        summary = one_line(command.short_help or command.help.split("\n\n")[0])
        assert f"{name} {summary}" in one_line(result.stdout), name


def test_every_option_has_help_text_and_every_argument_is_named_in_its_command_help() -> None:
    """Options carry `help`; click arguments take none, so the command's docstring names each (MODELS, FUSED)."""
    for param in cli.params:
        assert isinstance(param, click.Option) and param.help, param.opts
    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help and len(param.help) > 10, f"{name} {param.opts} has no help text"
            else:
                assert param.human_readable_name in command.help, f"{name}: {param.human_readable_name} undescribed"


def test_merge_help_shows_an_example_on_one_line() -> None:
    result = run_cli("merge", "-h")

    assert result.exit_code == 0
    assert any(line.strip() == EXAMPLE for line in result.stdout.splitlines()), result.stdout


def test_option_help_names_tsv_data_and_the_html_report() -> None:
    result = run_cli("merge", "-h")
    fields = {field.name: field.metadata for field in FuseSpec.__dataclass_fields__.values()}

    assert ".tsv" in fields["data"]["help"]
    assert fields["report"]["help"] == (
        "Write the hold-out report: .json, or .html with plots (pip install 'onnxfuse[report]')."
    )
    assert ".tsv" in one_line(result.stdout)


# --- usage mistakes ---------------------------------------------------------------------------------------------------

USAGE_MISTAKES = [
    pytest.param(("merge", "--bogus"), "No such option", "onnxfuse merge", id="unknown_option"),
    pytest.param(("verify",), "Missing argument 'FUSED'", "onnxfuse verify", id="missing_argument"),
    pytest.param(
        ("merge", "a.onnx", "b.onnx", "--fusion", "magic"), "'magic' is not one of", "onnxfuse merge", id="bad_choice"
    ),
    pytest.param(("merge", "--holdout", "1.5"), "--holdout", "onnxfuse merge", id="out_of_range"),
    pytest.param(("fuse",), "No such command 'fuse'", "onnxfuse", id="unknown_command"),
]


@pytest.mark.parametrize(("args", "message", "command"), USAGE_MISTAKES)
def test_cli_usage_error_is_one_error_line_and_the_help_hint(args: tuple[str, ...], message: str, command: str) -> None:
    result = run_cli(*args)

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "Usage:" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert lines[1] == f"Try '{command} -h' for help."


def test_cli_bad_input_stays_one_error_line(sources: Path, tmp_path: Path) -> None:
    result = run_cli("merge", sources / "a.onnx", "-o", tmp_path / "fused.onnx")

    assert_one_error_line(result, "two models")
    assert list(tmp_path.iterdir()) == []


# --- -o ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["existing", "new/", "existing/"])
def test_merge_refuses_an_output_folder(sources: Path, tmp_path: Path, name: str) -> None:
    (tmp_path / "existing").mkdir()
    result = run_cli(*merge_args(sources, f"{tmp_path}/{name}"))

    assert_one_error_line(result, f"output {tmp_path}/{name}: is a folder; give a file name like fused.onnx")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["existing"]


@pytest.mark.parametrize("output", ["'out/'", "'existing'"])
def test_merge_refuses_an_output_folder_when_the_spec_names_it(sources: Path, tmp_path: Path, output: str) -> None:
    (tmp_path / "existing").mkdir()
    spec = tmp_path / "fuse.toml"
    spec.write_text(f'output = {output}\n[[model]]\npath = "{sources}/a.onnx"\n[[model]]\npath = "{sources}/b.onnx"\n')
    result = run_cli("merge", "--spec", spec)

    assert_one_error_line(result, "is a folder; give a file name like fused.onnx", output.strip("'"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "fuse.toml"]


def test_merge_warns_and_writes_when_the_output_does_not_end_in_onnx(sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "fused.model"
    result = run_cli(*merge_args(sources, str(out)))

    assert result.exit_code == 0, result.stderr
    warning = f"warning: output {out} does not end in .onnx; it is written under that name, but tools look for .onnx"
    assert result.stderr.splitlines()[0] == warning  # before the merge runs (it may warn of the data, too)
    onnx.checker.check_model(str(out), full_check=True)


def test_output_path_is_the_given_file_and_refuses_folders(tmp_path: Path) -> None:
    """The check the Python API's `save(path)` shares with `-o`."""
    assert output_path(str(tmp_path / "fused.onnx")) == tmp_path / "fused.onnx"
    with pytest.raises(OnnxfuseError, match="is a folder; give a file name like fused.onnx"):
        output_path(tmp_path)
    with pytest.raises(OnnxfuseError, match=r"^save new/: is a folder"):
        output_path("new/", "save")
    with pytest.warns(OnnxfuseWarning, match=r"output fused\.ONNX\.bak does not end in \.onnx"):
        assert output_path("fused.ONNX.bak") == Path("fused.ONNX.bak")


# --- data -------------------------------------------------------------------------------------------------------------


def test_merge_reads_tsv_data_as_tab_separated(sources: Path, fused_from_tsv: Path) -> None:
    result = run_cli("verify", fused_from_tsv, sources / "a.onnx", sources / "b.onnx", "--data", sources / "data.tsv")

    assert result.exit_code == 0, result.stderr
    assert list(read_table(sources / "data.tsv")) == ["a", "b", "c", "d", "e", "y"]
    np.testing.assert_array_equal(read_table(sources / "data.tsv")["y"], read_table(sources / "data.csv")["y"])


def test_evaluate_hints_at_the_delimiter_when_a_csv_reads_as_one_column(sources: Path, fused_from_tsv: Path) -> None:
    result = run_cli("evaluate", fused_from_tsv, "--data", sources / "semicolons.csv", "--target", "y")

    assert_one_error_line(
        result, "no column 'y' (columns: a;b;c;d;e;y)", "(the file has one column 'a;b;c;d;e;y': is it separated "
        "by ';'? onnxfuse reads .csv as comma-separated and .tsv as tab-separated)",
    )  # fmt: skip


def test_merge_names_tsv_among_the_known_formats(sources: Path, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text((sources / "data.csv").read_text())
    result = run_cli(*merge_args(sources, str(tmp_path / "fused.onnx"), tmp_path / "data.txt"))

    assert_one_error_line(result, "data.txt", "unknown format '.txt'; use .csv, .tsv, .parquet or .npz")
    assert not (tmp_path / "fused.onnx").exists()


@pytest.mark.parametrize(
    ("name", "columns", "hint"),
    [
        pytest.param("x.csv", ["a;b;c"], "is it separated by ';'?", id="semicolons"),
        pytest.param("x.csv", ["a|b|c"], "is it separated by '|'?", id="pipes"),
        pytest.param("x.csv", ["a\tb"], "is it separated by tabs?", id="tabs"),
        pytest.param("x.tsv", ["a,b,c"], "is it separated by ','?", id="commas_in_a_tsv"),
        pytest.param("x.csv", ["abc"], "is it separated by something other than ','?", id="one_csv_column"),
        pytest.param("x.tsv", ["abc"], None, id="one_tsv_column"),
        pytest.param("x.parquet", ["a;b"], None, id="parquet"),
        pytest.param("x.csv", ["a;b", "c"], None, id="two_columns"),
    ],
)  # fmt: skip
def test_columns_found_hints_at_a_delimiter_when_the_file_reads_as_one_column(
    name: str, columns: list[str], hint: str | None
) -> None:
    text = columns_found(columns, Path(name))

    assert text.startswith(f" (columns: {', '.join(columns)})")
    if hint is None:
        assert "separated" not in text
    else:
        assert hint in text and "onnxfuse reads .csv as comma-separated and .tsv as tab-separated" in text


def test_require_column_lists_twenty_columns_and_the_delimiter_hint(sources: Path) -> None:
    table = {f"c{i}": np.zeros(2) for i in range(25)}
    with pytest.raises(OnnxfuseError, match=r"no column 'y' \(columns: c0, c1, .*, c19, \.\.\.\)$"):
        require_column(table, "y", Path("wide.csv"))
    with pytest.raises(OnnxfuseError, match="is it separated by ';'"):
        require_column(read_table(sources / "semicolons.csv"), "a", sources / "semicolons.csv")


# --- spec keys --------------------------------------------------------------------------------------------------------


def write_spec(folder: Path, sources: Path, top: str = "", model: str = "") -> Path:
    spec = folder / "fuse.toml"
    spec.write_text(f'output = "fused.onnx"\n{top}\n[[model]]\npath = "{sources}/a.onnx"\n{model}\n'
                    f'[[model]]\npath = "{sources}/b.onnx"\n')  # fmt: skip
    return spec


SPEC_TYPOS = [
    pytest.param(
        'fusoin = "mean"', "", "unknown key 'fusoin'; did you mean 'fusion'? known keys: output, data,", id="top_level"
    ),
    pytest.param(
        "",
        'feautres = ["a", "b"]',
        "model 1: unknown key 'feautres'; did you mean 'features'? known keys: path, features",
        id="model",
    ),
    pytest.param("colour = 1", "", "unknown key 'colour'; known keys: output", id="no_close_key"),
    pytest.param(
        "taget = 'y'\nseeds = 1\nzzz = 0",
        "",
        "unknown keys 'seeds' (did you mean 'seed'?), 'taget' (did you mean 'target'?), 'zzz'; known keys: output",
        id="several",
    ),
]


@pytest.mark.parametrize(("top", "model", "message"), SPEC_TYPOS)
def test_merge_suggests_the_closest_spec_key(sources: Path, tmp_path: Path, top: str, model: str, message: str) -> None:
    result = run_cli("merge", "--spec", write_spec(tmp_path, sources, top, model))

    assert_one_error_line(result, f"spec {tmp_path / 'fuse.toml'}: ", message)
    assert not (tmp_path / "fused.onnx").exists()
