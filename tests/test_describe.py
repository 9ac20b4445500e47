"""Tests of `onnxfuse inspect` and the oldest onnxruntime a file's versions allow, incl. `--target-opset` merges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import Result
from conftest import (
    assert_checker_and_portable,
    assert_runtimes_agree,
    columns_of,
    ort_outputs,
    run_cli,
    save,
)
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LinearRegression

from onnxfuse.describe import describe, oldest_onnxruntime

EXAMPLE = Path(__file__).resolve().parents[1] / "models"
ROWS = 400


@pytest.fixture(autouse=True)
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONNXFUSE_DEBUG", raising=False)


def merged(result: Result) -> None:
    assert result.exit_code == 0, f"stdout: {result.stdout!r}\nstderr: {result.stderr!r}"


def example_merge(out: Path, *extra: str) -> Result:
    return run_cli("merge", "--spec", EXAMPLE / "fuse.toml", *extra, "-o", out)


def example_feeds(count: int = ROWS) -> dict[str, np.ndarray]:
    table = np.loadtxt(EXAMPLE / "train.csv", delimiter=",", skiprows=1, max_rows=count, dtype=np.float64)
    return {"features": table[:, :4].astype(np.float32)}


@pytest.mark.parametrize(
    ("ir_version", "opset", "ml_opset", "expected"),
    [
        pytest.param(10, 21, 3, "1.18", id="onnxfuse_default"),
        pytest.param(9, 20, 4, "1.17", id="ir9_opset20"),
        pytest.param(8, 18, 3, "1.14 or older", id="ir8_opset18"),
        pytest.param(3, 7, 1, "1.14 or older", id="ancient"),
        pytest.param(15, 21, 3, "newer than 1.32", id="ir_beyond_table"),
        pytest.param(10, 29, 3, "newer than 1.32", id="opset_beyond_table"),
        pytest.param(10, 21, 6, "newer than 1.32", id="ml_beyond_table"),
    ],
)
def test_oldest_onnxruntime_names_release_when_versions_given(
    ir_version: int, opset: int, ml_opset: int, expected: str
) -> None:
    result = oldest_onnxruntime(ir_version, {"ai.onnx": opset, "ai.onnx.ml": ml_opset})

    assert result == expected


@pytest.mark.parametrize(
    ("ir_version", "opset", "ml_opset", "expected"),
    [
        pytest.param(10, 22, 3, "1.21", id="skl2onnx_opset22"),
        pytest.param(10, 21, 5, "1.21", id="ml5_alone"),
        pytest.param(11, 23, 5, "1.23", id="ir11_opset23_ml5"),
        pytest.param(13, 26, 5, "1.25", id="ir13_opset26"),
        pytest.param(14, 28, 5, "1.32", id="ir14_opset28"),
    ],
)
def test_oldest_onnxruntime_names_measured_release_when_versions_need_one_after_1_20(
    ir_version: int, opset: int, ml_opset: int, expected: str
) -> None:
    assert oldest_onnxruntime(ir_version, {"ai.onnx": opset, "ai.onnx.ml": ml_opset}) == expected


def test_oldest_onnxruntime_ignores_ml_when_model_has_no_ml_opset() -> None:
    assert oldest_onnxruntime(10, {"ai.onnx": 21}) == "1.18"


@pytest.fixture(scope="module")
def fused_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example merged with the default versions and with `--target-opset 17 --max-ir-version 8`."""
    folder = tmp_path_factory.mktemp("describe")
    merged(example_merge(folder / "default.onnx"))
    merged(example_merge(folder / "opset17.onnx", "--target-opset", "17", "--max-ir-version", "8"))
    return folder


@pytest.mark.parametrize(
    ("name", "ir_version", "opsets", "expected"),
    [
        pytest.param("default.onnx", 10, {"ai.onnx": 21, "ai.onnx.ml": 3}, "1.18", id="default"),
        pytest.param("opset17.onnx", 8, {"ai.onnx": 17, "ai.onnx.ml": 3}, "1.14 or older", id="opset17_ir8"),
    ],
)
def test_inspect_json_reports_oldest_onnxruntime_when_fused_file(
    fused_files: Path, name: str, ir_version: int, opsets: dict[str, int], expected: str
) -> None:
    result = run_cli("inspect", "--json", fused_files / name)

    merged(result)
    info = json.loads(result.stdout)
    assert info["ir_version"] == ir_version
    assert info["opsets"] == opsets
    assert info["oldest_onnxruntime"] == expected
    assert describe(fused_files / name)["oldest_onnxruntime"] == expected


def test_inspect_prints_oldest_onnxruntime_line_when_text(fused_files: Path) -> None:
    result = run_cli("inspect", fused_files / "default.onnx")

    merged(result)
    assert "oldest onnxruntime: 1.18" in result.stdout.splitlines(), result.stdout


def test_merge_writes_opset_17_file_that_agrees_with_default_when_target_opset_17(fused_files: Path) -> None:
    feeds = example_feeds()
    assert_checker_and_portable(fused_files / "opset17.onnx")
    lowered = assert_runtimes_agree(fused_files / "opset17.onnx", feeds)
    default = ort_outputs(fused_files / "default.onnx", feeds)

    np.testing.assert_array_equal(lowered["label"], default["label"])
    np.testing.assert_allclose(lowered["probabilities"], default["probabilities"], rtol=1e-5, atol=1e-6)


def test_merge_writes_opset_15_ir_8_file_when_target_opset_15(tmp_path: Path) -> None:
    out = tmp_path / "opset15.onnx"

    merged(example_merge(out, "--target-opset", "15"))

    model = assert_checker_and_portable(out)
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import} == {"ai.onnx": 15, "ai.onnx.ml": 3}
    assert model.ir_version == 8
    assert_runtimes_agree(out, example_feeds())
    info = json.loads(run_cli("inspect", "--json", out).stdout)
    assert info["oldest_onnxruntime"] == "1.14 or older"


def op_model(op_type: str) -> onnx.ModelProto:
    """An ai.onnx 21 regressor on `cd_input` [N, 2] whose first op has no adapter down to opset 12."""
    ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
    extra: dict[str, object] = {"num_groups": 2} if op_type == "GroupNormalization" else {}
    inputs = ["cd_input"] if op_type == "Gelu" else ["cd_input", "scale", "bias"]
    nodes = [
        helper.make_node(op_type, inputs, ["activated"], **extra),
        helper.make_node("ReduceSum", ["activated", "axes"], ["variable"], keepdims=0),
    ]
    initializers = [numpy_helper.from_array(np.array([1], np.int64), "axes")]
    if op_type != "Gelu":
        initializers += [numpy_helper.from_array(ones, "scale"), numpy_helper.from_array(zeros, "bias")]
    graph = helper.make_graph(
        nodes,
        op_type.lower(),
        [helper.make_tensor_value_info("cd_input", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, ["N"])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("op_type", ["Gelu", "LayerNormalization", "GroupNormalization"])
def test_merge_exits_2_naming_the_op_when_target_opset_12_has_no_adapter(
    tmp_path: Path, rows: dict[str, np.ndarray], op_type: str
) -> None:
    x = rows["x"][:ROWS, columns_of("ab")]
    linear = LinearRegression().fit(x, rows["yr"][:ROWS])
    save(
        to_onnx(linear, initial_types=[("ab_input", FloatTensorType([None, 2]))], target_opset=12), tmp_path / "a.onnx"
    )
    source = save(op_model(op_type), tmp_path / f"{op_type.lower()}.onnx")
    out = tmp_path / "out" / "fused.onnx"
    out.parent.mkdir()

    result = run_cli(
        "merge", tmp_path / "a.onnx", source, "--features", "a,b", "--features", "c,d",
        "--fusion", "mean", "--target-opset", "12", "-o", out,
    )  # fmt: skip

    shown = f"exit {result.exit_code}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.exit_code == 2, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for culprit in ("model 2", source.name, op_type, "12"):
        assert culprit in lines[0], f"{culprit!r} not named: {lines[0]!r}"
    assert "Traceback" not in result.stdout + result.stderr
    assert list(out.parent.iterdir()) == []


def softmax_model() -> onnx.ModelProto:
    """ai.onnx 21: Softmax over axis 1 of `[N, 1, 2]`, all ones; onnx.version_converter keeps the node at opset 12,
    where Softmax flattens to `[N, 2]` first, so the converted model silently computes something else."""
    nodes = [
        helper.make_node("Unsqueeze", ["cd_input", "axes"], ["unsqueezed"]),
        helper.make_node("Softmax", ["unsqueezed"], ["softmax"], axis=1),
        helper.make_node("Squeeze", ["softmax", "axes"], ["squeezed"]),
        helper.make_node("TopK", ["squeezed", "k"], ["variable", "index"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "softmax",
        [helper.make_tensor_value_info("cd_input", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, ["N", 1])],
        initializer=[
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(np.array([1], np.int64), "k"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_merge_exits_2_naming_model_when_target_opset_conversion_changes_its_outputs(
    tmp_path: Path, rows: dict[str, np.ndarray]
) -> None:
    """The converter raises no error here; asking for an opset the model cannot keep its meaning at is bad input."""
    x = rows["x"][:ROWS, columns_of("ab")]
    linear = LinearRegression().fit(x, rows["yr"][:ROWS])
    save(
        to_onnx(linear, initial_types=[("ab_input", FloatTensorType([None, 2]))], target_opset=12), tmp_path / "a.onnx"
    )
    source = save(softmax_model(), tmp_path / "softmax.onnx")
    out = tmp_path / "out" / "fused.onnx"
    out.parent.mkdir()

    result = run_cli(
        "merge", tmp_path / "a.onnx", source, "--features", "a,b", "--features", "c,d",
        "--fusion", "mean", "--target-opset", "12", "-o", out,
    )  # fmt: skip

    shown = f"exit {result.exit_code}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.exit_code == 2, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for culprit in ("model 2", source.name, "12"):
        assert culprit in lines[0], f"{culprit!r} not named: {lines[0]!r}"
    assert list(out.parent.iterdir()) == []
