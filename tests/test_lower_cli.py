"""`onnxfuse lower` and `merge --ops core`: files with no ai.onnx.ml op, equal to the standard ones."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from conftest import ort_outputs, reference_outputs, run_cli
from onnx import helper

from onnxfuse.support import iter_model_nodes

EXAMPLE = Path(__file__).resolve().parents[1] / "models"
FEATURES = ("--features", "a,b", "--features", "c,d")


def _domains(path: Path) -> set[str]:
    model = onnx.load(str(path))
    return {o.domain for o in model.opset_import} | {n.domain for n in iter_model_nodes(model)}


def _rows(columns: list[str], *, missing: bool) -> np.ndarray:
    """The example's real rows (float32), with a NaN cell in every fifth row when `missing`."""
    block = pd.read_csv(EXAMPLE / "train.csv")[columns].to_numpy(np.float32)
    if missing:
        block[::5, 0] = np.nan
    return block


@pytest.mark.parametrize("missing", [False, True], ids=["complete", "nan_cells"])
def test_lower_writes_a_file_without_the_ml_domain_that_gives_the_same_probabilities(
    tmp_path: Path, missing: bool
) -> None:
    source = EXAMPLE / "a.onnx"
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    run = run_cli("lower", source, "-o", tmp_path / "a.core.onnx")
    assert run.exit_code == 0, run.output
    assert "ZipMap output 'output_probability' becomes a plain float [N, 2] tensor" in run.stderr
    assert _domains(tmp_path / "a.core.onnx") <= {"", "ai.onnx"}
    onnx.checker.check_model(str(tmp_path / "a.core.onnx"), full_check=True)
    feeds = {"X": _rows(["a", "b"], missing=missing)}
    original = ort_outputs(source, feeds)
    expected = np.array([[row[c] for c in (0, 1)] for row in original["output_probability"]], dtype=np.float32)
    for lowered in (ort_outputs(tmp_path / "a.core.onnx", feeds), reference_outputs(tmp_path / "a.core.onnx", feeds)):
        np.testing.assert_allclose(lowered["output_probability"], expected, rtol=1e-5, atol=1e-5)
        near_tie = np.abs(expected[:, 1] - expected[:, 0]) <= 1e-5
        assert np.array_equal(lowered["output_label"][~near_tie], original["output_label"][~near_tie])
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before


def test_lower_refuses_an_op_it_cannot_rewrite_naming_node_and_op(tmp_path: Path) -> None:
    node = helper.make_node("CategoryMapper", ["x"], ["y"], name="to_ids", domain="ai.onnx.ml",
                            cats_strings=["a", "b"], cats_int64s=[0, 1], default_int64=-1)  # fmt: skip
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.STRING, ["N"])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.INT64, ["N"])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "m.onnx"))
    run = run_cli("lower", tmp_path / "m.onnx", "-o", tmp_path / "out.onnx")
    assert run.exit_code == 2
    assert run.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'm.onnx'}: node 'to_ids' (CategoryMapper): no rewrite of this ai.onnx.ml op into "
        "ai.onnx; use --ops standard"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_lower_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    copy = tmp_path / "a.onnx"
    copy.write_bytes((EXAMPLE / "a.onnx").read_bytes())
    run = run_cli("lower", copy, "-o", copy)
    assert run.exit_code == 2 and "is an input file" in run.stderr
    assert copy.read_bytes() == (EXAMPLE / "a.onnx").read_bytes()


@pytest.mark.parametrize("fusion", ["stack", "mean"])
def test_merge_ops_core_gives_the_standard_file_s_outputs_without_the_ml_domain(tmp_path: Path, fusion: str) -> None:
    common = (EXAMPLE / "a.onnx", EXAMPLE / "b.onnx", *FEATURES, "--data", EXAMPLE / "train.csv", "--target", "y",
              "--fusion", fusion, "-q")  # fmt: skip
    assert run_cli("merge", *common, "-o", tmp_path / "standard.onnx").exit_code == 0
    run = run_cli("merge", *common, "--ops", "core", "-o", tmp_path / "core.onnx")
    assert run.exit_code == 0, run.output
    assert "ai.onnx.ml" in _domains(tmp_path / "standard.onnx")  # the standard file does hold ml ops
    assert _domains(tmp_path / "core.onnx") <= {"", "ai.onnx"}
    feeds = {"features": _rows(["a", "b", "c", "d"], missing=True)}
    standard = ort_outputs(tmp_path / "standard.onnx", feeds)
    for core in (ort_outputs(tmp_path / "core.onnx", feeds), reference_outputs(tmp_path / "core.onnx", feeds)):
        np.testing.assert_allclose(core["probabilities"], standard["probabilities"], rtol=1e-5, atol=1e-5)
        probabilities = np.sort(standard["probabilities"], axis=1)
        clear = probabilities[:, -1] - probabilities[:, -2] > 1e-5
        assert np.array_equal(core["label"][clear], standard["label"][clear])
    assert run_cli("verify", tmp_path / "core.onnx", EXAMPLE / "a.onnx", EXAMPLE / "b.onnx").exit_code == 0


def test_ops_core_is_a_spec_key(tmp_path: Path) -> None:
    spec = tmp_path / "fuse.toml"
    spec.write_text(f'output = "core.onnx"\nfusion = "mean"\nops = "core"\n'
                    f'[[model]]\npath = "{EXAMPLE / "a.onnx"}"\nfeatures = ["a", "b"]\n'
                    f'[[model]]\npath = "{EXAMPLE / "b.onnx"}"\nfeatures = ["c", "d"]\n')  # fmt: skip
    run = run_cli("merge", "--spec", spec, "-q")
    assert run.exit_code == 0, run.output
    assert _domains(tmp_path / "core.onnx") <= {"", "ai.onnx"}


def test_merge_ops_core_names_the_source_whose_op_has_no_rewrite(tmp_path: Path) -> None:
    """An SVR whose post_transform onnxruntime ignores and the spec applies: refused, naming model 1."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression
    from sklearn.svm import SVR

    x, y = load_diabetes(return_X_y=True)
    x = x.astype(np.float32)
    svr = to_onnx(SVR().fit(x[:, :2], y), x[:1, :2], target_opset=17)
    node = next(n for n in svr.graph.node if n.op_type == "SVMRegressor")
    transform = next(a for a in node.attribute if a.name == "post_transform")
    transform.s = b"LOGISTIC"
    onnx.save(svr, str(tmp_path / "svr.onnx"))
    onnx.save(to_onnx(LinearRegression().fit(x[:, 2:4], y), x[:1, 2:4], target_opset=17), str(tmp_path / "lr.onnx"))
    run = run_cli("merge", tmp_path / "svr.onnx", tmp_path / "lr.onnx", "--features", "a,b", "--features", "c,d",
                  "--fusion", "mean", "--ops", "core", "-o", tmp_path / "fused.onnx")  # fmt: skip
    assert run.exit_code == 2, run.output
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("error: model 1 (svr.onnx): node 'm1/") and "(SVMRegressor): a post_transform" in line
    assert line.endswith("use --ops standard")
    assert not (tmp_path / "fused.onnx").exists()
