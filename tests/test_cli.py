"""Tests of the `onnxfuse` command line: user mistakes end in exit 2 and one `error:` line, and touch nothing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import COLUMNS, assert_one_error_line, columns_of, run_cli, save, write_csv
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from onnxfuse.cli import cli
from onnxfuse.errors import OnnxfuseError

CUSTOM_TEXT = """
<ir_version: 8, opset_import: ["" : 18, "com.microsoft" : 1]>
custom (float[N, 2] cd_input) => (float[N, 2] activated) {
    activated = com.microsoft.Gelu(cd_input)
}
"""
ROWS = 400


def fitted_onnx(estimator: Any, rows: dict[str, np.ndarray], columns: str, label: str) -> onnx.ModelProto:
    """An skl2onnx model of `estimator` fitted on `columns` ("ab"), its input named `<columns>_input`."""
    x = rows["x"][:ROWS, columns_of(columns)]
    estimator.fit(x, rows[label][:ROWS])
    initial = [(f"{columns}_input", FloatTensorType([None, len(columns)]))]
    return to_onnx(estimator, initial_types=initial, target_opset=18)


def sequence_model() -> onnx.ModelProto:
    """A regressor with a numeric input and a second input `items` of type seq(tensor(float))."""
    nodes = [
        helper.make_node("Constant", [], ["position"], value=helper.make_tensor("p", TensorProto.INT64, [], [0])),
        helper.make_node("SequenceAt", ["items", "position"], ["first"]),
        helper.make_node("Add", ["cd_input", "first"], ["total"]),
        helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("a", TensorProto.INT64, [1], [1])),
        helper.make_node("ReduceSum", ["total", "axes"], ["prediction_sum"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "sequence_input",
        [
            helper.make_tensor_value_info("cd_input", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_sequence_value_info("items", TensorProto.FLOAT, ["N", 2]),
        ],
        [helper.make_tensor_value_info("prediction_sum", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def label_encoder_model() -> onnx.ModelProto:
    """ai.onnx.ml 1 LabelEncoder with `classes_strings`: that attribute is gone from ai.onnx.ml 2 on."""
    nodes = [
        helper.make_node("Cast", ["cd_input"], ["codes"], to=TensorProto.INT64),
        helper.make_node(
            "LabelEncoder", ["codes"], ["names"], domain="ai.onnx.ml", classes_strings=["low", "high"], default_int64=-1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "label_encoder",
        [helper.make_tensor_value_info("cd_input", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("names", TensorProto.STRING, ["N", 2])],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("ai.onnx.ml", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def write_string_csv(path: Path, rows: dict[str, np.ndarray]) -> Path:
    """Columns a..e, a string column `colour`, and the label `y`."""
    x, y = rows["x"][:ROWS], rows["y"][:ROWS]
    colours = np.array(["red", "green", "blue"])[np.arange(ROWS) % 3]
    lines = [",".join((*COLUMNS, "colour", "y"))]
    lines += [",".join(f"{v:.6f}" for v in row) + f",{c},{t}" for row, c, t in zip(x, colours, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_precision_sources(folder: Path, rows: dict[str, np.ndarray]) -> None:
    """`ints.onnx` (int64 input `n`), `double.onnx` (double input `t`), and data whose `n` passes 2^24, whose `t`
    needs float64 (1.7e9 + k), and whose `n` has empty cells."""
    k = np.arange(ROWS)
    n, t, y = 2**24 + 3 * k, 1.7e9 + 7 * k, rows["y"][:ROWS]
    ints = LogisticRegression().fit((k % 7).reshape(-1, 1), y)
    save(to_onnx(ints, initial_types=[("n", Int64TensorType([None, 1]))], options={"zipmap": False}),
         folder / "ints.onnx")  # fmt: skip
    double = make_pipeline(StandardScaler(), LogisticRegression()).fit(t.reshape(-1, 1), (k % 200 > 100) ^ y)
    save(to_onnx(double, initial_types=[("t", DoubleTensorType([None, 1]))], options={"zipmap": False}),
         folder / "double.onnx")  # fmt: skip
    a, b = rows["x"][:ROWS, 0], rows["x"][:ROWS, 1]
    lines = ["a,b,t,n,m,y"] + [
        f"{va:.6f},{vb:.6f},{vt:.1f},{vn},{'' if i % 9 == 0 else i % 7},{vy}"
        for i, (va, vb, vt, vn, vy) in enumerate(zip(a, b, t, n, y))
    ]
    (folder / "precision.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, rows: dict[str, np.ndarray]) -> Path:
    """Every input file the cases use, written once per module (tests work on copies)."""
    folder = tmp_path_factory.mktemp("cli_sources")
    save(fitted_onnx(LogisticRegression(), rows, "ab", "y"), folder / "lr.onnx")
    save(fitted_onnx(DecisionTreeClassifier(max_depth=3, random_state=0), rows, "cd", "y"), folder / "tree.onnx")
    save(fitted_onnx(LinearRegression(), rows, "ab", "yr"), folder / "reg_ab.onnx")
    save(fitted_onnx(DecisionTreeRegressor(max_depth=3, random_state=0), rows, "cd", "yr"), folder / "reg_cd.onnx")
    save(onnx.parser.parse_model(CUSTOM_TEXT), folder / "custom.onnx")
    save(sequence_model(), folder / "sequence.onnx")
    fixed_batch = fitted_onnx(DecisionTreeClassifier(max_depth=3, random_state=0), rows, "cd", "y")
    fixed_batch.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    save(fixed_batch, folder / "fixed_batch.onnx")
    save(label_encoder_model(), folder / "label_encoder.onnx")
    payload = (folder / "tree.onnx").read_bytes()
    (folder / "truncated.onnx").write_bytes(payload[: len(payload) // 2])
    (folder / "notes.onnx").write_text("These are notes, not a model.\n")
    data = write_csv(folder / "data.csv", {k: v[:ROWS] for k, v in rows.items()})
    (folder / "data.txt").write_bytes(data.read_bytes())
    (folder / "empty.csv").write_bytes(b"")
    write_string_csv(folder / "strings.csv", rows)
    write_precision_sources(folder, rows)
    return folder


@pytest.fixture(autouse=True)
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONNXFUSE_DEBUG", raising=False)


@pytest.fixture
def workdir(tmp_path: Path, sources: Path) -> Path:
    """`in/` holds copies of the sources, `out/` is an empty folder for OUT."""
    shutil.copytree(sources, tmp_path / "in")
    (tmp_path / "out").mkdir()
    return tmp_path


def merge_args(
    *models: str,
    features: Sequence[str] = ("a,b", "c,d"),
    data: str | None = "data.csv",
    target: str | None = "y",
    fusion: str = "mean",
    out: str | None = "{out}/fused.onnx",
    extra: Sequence[str] = (),
) -> tuple[str, ...]:
    """A `merge` command line; `{in}`, `{out}` and `{tmp}` are filled in by `expand`."""
    args = ["merge", *(f"{{in}}/{m}" for m in models or ("lr.onnx", "tree.onnx"))]
    for columns in features:
        args += ["--features", columns]
    if data is not None:
        args += ["--data", f"{{in}}/{data}"]
    if target is not None:
        args += ["--target", target]
    args += ["--fusion", fusion, *extra]
    if out is not None:
        args += ["-o", out]
    return tuple(args)


def expand(args: Sequence[str], root: Path) -> list[str]:
    return [a.format(**{"in": root / "in", "out": root / "out", "tmp": root}) for a in args]


def output_of(args: Sequence[str], root: Path) -> Path | None:
    expanded = expand(args, root)
    return Path(expanded[expanded.index("-o") + 1]) if "-o" in expanded else None


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder under root, hidden ones included."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def leftovers(folder: Path) -> list[str]:
    """Temp files or folders a merge left in OUT's folder (emit.workspace makes `.OUT.*.tmp`)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


MISTAKES = [
    pytest.param(merge_args("lr.onnx", features=("a,b",)), ("two models",), id="only_one_model"),
    pytest.param(merge_args(out=None), ("-o",), id="missing_output"),
    pytest.param(merge_args(out="{tmp}/nowhere/fused.onnx"), ("nowhere",), id="output_folder_missing"),
    pytest.param(merge_args(out="{in}/tree.onnx"), ("tree.onnx",), id="output_is_an_input_model"),
    pytest.param(merge_args("lr.onnx", "ghost.onnx"), ("model 2", "ghost.onnx"), id="model_missing"),
    pytest.param(merge_args("lr.onnx", "truncated.onnx"), ("model 2", "truncated.onnx"), id="model_truncated"),
    pytest.param(merge_args("lr.onnx", "notes.onnx"), ("model 2", "notes.onnx"), id="model_not_onnx"),
    pytest.param(merge_args(features=("a,b", "c,d", "e")), ("--features",), id="features_count_differs"),
    pytest.param(merge_args(features=("a,b,e", "c,d")), ("model 1", "ab_input", "a,b,e"), id="features_width"),
    pytest.param(merge_args(features=("a,zzz", "c,d")), ("model 1", "zzz"), id="features_unknown_column"),
    pytest.param(merge_args(data="ghost.csv"), ("ghost.csv",), id="data_missing"),
    pytest.param(merge_args(data="empty.csv"), ("empty.csv",), id="data_empty"),
    pytest.param(merge_args(data="data.txt"), ("data.txt",), id="data_unknown_suffix"),
    pytest.param(merge_args(target="nope"), ("nope",), id="target_missing_column"),
    pytest.param(merge_args(data=None), ("--target", "--data"), id="target_without_data"),
    pytest.param(
        merge_args(data="strings.csv", features=("a,colour", "c,d")), ("colour",), id="string_column_as_feature"
    ),
    pytest.param(
        merge_args("lr.onnx", "custom.onnx"), ("model 2", "custom.onnx", "com.microsoft"), id="custom_domain_op"
    ),
    pytest.param(
        merge_args("reg_ab.onnx", "sequence.onnx"), ("model 2", "sequence.onnx", "items"), id="sequence_input"
    ),
    pytest.param(
        merge_args("lr.onnx", "fixed_batch.onnx"), ("model 2", "fixed_batch.onnx", "batch"), id="fixed_batch_input"
    ),
    pytest.param(merge_args(fusion="stack", data=None, target=None), ("stack", "--data"), id="stack_without_data"),
    pytest.param(merge_args(fusion="gate", target=None), ("gate", "--target"), id="gate_without_target"),
    pytest.param(
        merge_args(fusion="stack", target="colour", data="strings.csv"),
        ("model 1", "lr.onnx", "class 0"),
        id="source_class_not_in_target",
    ),
    pytest.param(merge_args(extra=("--target-opset", "99")), ("--target-opset", "99"), id="target_opset_too_high"),
    pytest.param(merge_args(extra=("--max-ir-version", "8")), ("--max-ir-version", "10"), id="max_ir_version_too_low"),
    pytest.param(
        merge_args("lr.onnx", "label_encoder.onnx"),
        ("model 2", "label_encoder.onnx", "LabelEncoder"),
        id="ml_op_not_raisable",
    ),
    pytest.param(merge_args("lr.onnx", "reg_cd.onnx"), ("model 2", "regressor"), id="classifier_and_regressor"),
    pytest.param(
        merge_args("reg_ab.onnx", "reg_cd.onnx", fusion="vote"), ("vote", "regressor"), id="vote_on_regressors"
    ),
    pytest.param(merge_args(features=("3:a,b",)), ("--features", "no model 3"), id="features_index_out_of_range"),
    pytest.param(merge_args(features=("a,b", "2:c,d")), ("--features", "model order"), id="features_forms_mixed"),
    pytest.param(merge_args(features=("1:a,b", "1:c,d")), ("--features", "model 1", "twice"), id="features_twice"),
    pytest.param(
        merge_args(
            "lr.onnx", "double.onnx", features=("a,b", "-"), data="precision.csv", extra=("--features-dtype", "float32")
        ),
        ("model 2 (double.onnx)", "'t'", "--features-dtype float64"),
        id="double_input_fed_float32",
    ),
    pytest.param(
        merge_args("lr.onnx", "ints.onnx", features=("a,b", "-"), data="precision.csv"),
        ("column 'n'", "model 2 (ints.onnx)", "2^24", "--features-dtype float64"),
        id="int_input_beyond_2_24",
    ),
    pytest.param(
        merge_args("lr.onnx", "ints.onnx", features=("a,b", "m"), data="precision.csv"),
        ("column 'm'", "model 2 (ints.onnx)", "NaN"),
        id="nan_into_int_input",
    ),
]


@pytest.mark.parametrize(("args", "culprits"), MISTAKES)
def test_merge_exits_2_with_one_error_line_when_user_makes_a_mistake(
    workdir: Path, args: tuple[str, ...], culprits: tuple[str, ...]
) -> None:
    before = snapshot(workdir)
    out = output_of(args, workdir)
    existed = out is not None and out.exists()

    result = run_cli(*expand(args, workdir))

    assert_one_error_line(result, *culprits)
    if out is not None and not existed:
        assert not out.exists()
    if out is not None and out.parent.is_dir():
        assert leftovers(out.parent) == []
    assert snapshot(workdir) == before, "a failed merge changed, left or removed files"


def test_merge_leaves_existing_out_unchanged_when_run_fails(workdir: Path) -> None:
    out = workdir / "out" / "fused.onnx"
    out.write_bytes(b"the previous, good fused model")
    before = snapshot(workdir)

    result = run_cli(*expand(merge_args(fusion="stack", data=None, target=None), workdir))

    assert_one_error_line(result, "stack")
    assert out.read_bytes() == b"the previous, good fused model"
    assert leftovers(out.parent) == []
    assert snapshot(workdir) == before


def test_merge_writes_out_when_two_classifiers(workdir: Path) -> None:
    before = snapshot(workdir / "in")
    out = workdir / "out" / "fused.onnx"

    result = run_cli(*expand(merge_args(), workdir))

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"wrote {out}"), result.stdout
    assert "fused" in result.stdout and "baseline" in result.stdout, "the hold-out table is printed"
    # nothing on stderr but the hold-out's caveats, one line each (the toy sources' mean is below a model
    # trained from scratch on these rows: legal, and said)
    assert all(line.startswith("warning: the fused model") for line in result.stderr.splitlines()), result.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["fused.onnx"]
    assert snapshot(workdir / "in") == before
    onnx.checker.check_model(str(out), full_check=True)


def test_merge_raises_when_onnxfuse_debug_is_set(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONNXFUSE_DEBUG", "1")

    result = CliRunner().invoke(cli, expand(merge_args("lr.onnx", "ghost.onnx"), workdir), catch_exceptions=True)

    assert isinstance(result.exception, OnnxfuseError), repr(result.exception)
    assert "ghost.onnx" in str(result.exception)
    assert not (workdir / "out" / "fused.onnx").exists()


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory, sources: Path) -> Path:
    """One fused file of the two classifiers, for `inspect`."""
    root = tmp_path_factory.mktemp("cli_fused")
    shutil.copytree(sources, root / "in")
    (root / "out").mkdir()
    result = run_cli(*expand(merge_args(), root))
    assert result.exit_code == 0, result.stderr
    return root / "out" / "fused.onnx"


def test_inspect_prints_inputs_outputs_and_opsets_when_fused_file(fused: Path) -> None:
    result = run_cli("inspect", fused)

    assert result.exit_code == 0, result.stderr
    text = result.stdout
    for expected in ("inputs:", "features", "outputs:", "label", "probabilities", "opsets:", "ai.onnx 21"):
        assert expected in text, f"{expected!r} not in {text!r}"
    assert "ai.onnx.ml 3" in text
    assert "IR version: 10" in text


def test_inspect_prints_json_when_json_flag(fused: Path) -> None:
    result = run_cli("inspect", "--json", fused)

    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert {"ir_version", "opsets", "inputs", "outputs", "nodes", "weight_bytes", "external_data"} <= set(info)
    assert info["ir_version"] == 10
    assert info["opsets"] == {"ai.onnx": 21, "ai.onnx.ml": 3}
    assert [i["name"] for i in info["inputs"]] == ["features"]
    assert [o["name"] for o in info["outputs"]] == ["label", "probabilities"]
    assert isinstance(info["nodes"], dict) and info["nodes"]
    assert isinstance(info["weight_bytes"], int) and info["weight_bytes"] > 0
    assert info["external_data"] == []


@pytest.mark.parametrize("name", ["truncated.onnx", "notes.onnx", "empty.csv", "ghost.onnx"])
def test_inspect_exits_2_with_one_error_line_when_file_is_bad(workdir: Path, name: str) -> None:
    before = snapshot(workdir)

    result = run_cli("inspect", workdir / "in" / name)

    assert_one_error_line(result, name)
    assert snapshot(workdir) == before
