"""End to end: real exporters in, one fused file out, equal to its sources on two runtimes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightgbm
import numpy as np
import onnx
import onnxmltools
import pandas as pd
import pytest
import xgboost
from conftest import (
    as_matrix,
    assert_checker_and_portable,
    assert_runtimes_agree,
    columns_of,
    ort_outputs,
    run_cli,
    save,
    write_csv,
)
from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier


@pytest.fixture(scope="module")
def mixed_sources(rows, model_dir: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """Four exporters/versions: skl2onnx with and without ZipMap, LightGBM (IR 4), XGBoost (no ai.onnx)."""
    x, y = rows["x"], rows["y"]
    specs = []

    def add(name: str, model: onnx.ModelProto, cols: str) -> None:
        specs.append((save(model, model_dir / f"{name}.onnx"), tuple(cols.split(","))))

    lr = LogisticRegression().fit(x[:, columns_of("ab")], y)
    add("lr_zipmap", to_onnx(lr, x[:1, :2], target_opset=13), "a,b")
    rf = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x[:, columns_of("bc")], y)
    add("rf_plain", to_onnx(rf, x[:1, :2], options={"zipmap": False}, target_opset=18), "b,c")
    lgbm = lightgbm.LGBMClassifier(n_estimators=8, verbose=-1).fit(x[:, columns_of("cd")], y)
    add("lgbm", onnxmltools.convert_lightgbm(lgbm, initial_types=[("input", MLFloat([None, 2]))]), "c,d")
    xgb = xgboost.XGBClassifier(n_estimators=8, max_depth=3).fit(x[:, columns_of("ade")], y)
    add("xgb", onnxmltools.convert_xgboost(xgb, initial_types=[("input", MLFloat([None, 3]))]), "a,d,e")
    return specs


def merge_args(specs, out: Path, *extra: object) -> list[object]:
    args: list[object] = ["merge", *[p for p, _ in specs]]
    for _, cols in specs:
        args += ["--features", ",".join(cols)]
    return [*args, "-o", out, *extra]


def source_outputs(path: Path, cols: tuple[str, ...], x: np.ndarray) -> dict[str, object]:
    model = onnx.load(str(path))
    name = model.graph.input[0].name
    return ort_outputs(path, {name: x[:, columns_of(cols)]})


def test_merge_matches_every_source_when_exporters_and_versions_differ(mixed_sources, rows, tmp_path):
    versions = [
        (onnx.load(str(p)).ir_version, {o.domain: o.version for o in onnx.load(str(p)).opset_import})
        for p, _ in mixed_sources
    ]
    assert len({v[0] for v in versions}) > 1 and any("" not in v[1] for v in versions)
    out = tmp_path / "fused.onnx"
    result = run_cli(*merge_args(mixed_sources, out, "--fusion", "mean", "--keep-model-outputs"))
    assert result.exit_code == 0, result.stderr
    model = assert_checker_and_portable(out)
    assert model.ir_version == 10
    assert {o.domain: o.version for o in model.opset_import} == {"": 21, "ai.onnx.ml": 3}
    assert [i.name for i in model.graph.input] == ["features"]
    x = rows["x"][:200]
    fused = assert_runtimes_agree(out, {"features": x})
    probabilities = []
    for index, (path, cols) in enumerate(mixed_sources, start=1):
        expected = source_outputs(path, cols, x)
        label_name, proba_name = list(expected)
        np.testing.assert_array_equal(fused[f"m{index}/{label_name}"].ravel(), np.asarray(expected[label_name]).ravel())
        source_proba = as_matrix(expected[proba_name], [0, 1])
        np.testing.assert_allclose(fused[f"m{index}/{proba_name}"], source_proba, rtol=1e-6, atol=1e-7)
        probabilities.append(source_proba)
    mean = np.mean(probabilities, axis=0)
    np.testing.assert_allclose(fused["probabilities"], mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(fused["label"], np.argmax(fused["probabilities"], axis=1))


def test_merge_outputs_only_the_contract_by_default(mixed_sources, rows, tmp_path):
    out = tmp_path / "fused.onnx"
    assert run_cli(*merge_args(mixed_sources[:2], out, "--fusion", "mean")).exit_code == 0
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert model.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    props = {p.key: p.value for p in model.metadata_props}
    assert sorted(props) == sorted(
        ["onnxfuse.features", "onnxfuse.classes", "onnxfuse.sources", "onnxfuse.fusion", "onnxfuse.version"]
    )
    assert props["onnxfuse.features"] == '["a","b","c"]'
    assert props["onnxfuse.classes"] == "[0,1]"
    assert '"sha256":' in props["onnxfuse.sources"] and '"opset":{"ai.onnx":13' in props["onnxfuse.sources"]


def test_merge_vote_counts_source_labels(mixed_sources, rows, tmp_path):
    out = tmp_path / "vote.onnx"
    assert run_cli(*merge_args(mixed_sources, out, "--fusion", "vote")).exit_code == 0
    x = rows["x"][:300]
    fused = assert_runtimes_agree(out, {"features": x})
    labels = [np.asarray(next(iter(source_outputs(p, c, x).values()))).ravel() for p, c in mixed_sources]
    share_of_ones = np.mean([label == 1 for label in labels], axis=0)
    np.testing.assert_allclose(fused["probabilities"][:, 1], share_of_ones, rtol=1e-6)
    np.testing.assert_array_equal(fused["label"], np.argmax(fused["probabilities"], axis=1))


def test_merge_averages_regressors(rows, tmp_path):
    x, y = rows["x"], rows["yr"]
    linear = LinearRegression().fit(x[:, :2], y)
    forest = RandomForestRegressor(n_estimators=4, max_depth=4, random_state=0).fit(x[:, 2:5], y)
    lgbm = lightgbm.LGBMRegressor(n_estimators=6, verbose=-1).fit(x[:, [0, 4]], y)
    specs = [
        (save(to_onnx(linear, x[:1, :2]), tmp_path / "lin.onnx"), ("a", "b")),
        (save(to_onnx(forest, x[:1, 2:5], target_opset=18), tmp_path / "rf.onnx"), ("c", "d", "e")),
        (
            save(onnxmltools.convert_lightgbm(lgbm, initial_types=[("X", MLFloat([None, 2]))]), tmp_path / "lgbm.onnx"),
            ("a", "e"),
        ),
    ]
    out = tmp_path / "fused.onnx"
    result = run_cli(*merge_args(specs, out, "--fusion", "mean"))
    assert result.exit_code == 0, result.stderr
    model = assert_checker_and_portable(out)
    assert [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output] == [
        ("prediction", onnx.TensorProto.FLOAT)
    ]
    feeds = {"features": x[:200]}
    fused = assert_runtimes_agree(out, feeds)
    predictions = [next(iter(source_outputs(p, c, x[:200]).values())) for p, c in specs]
    expected = np.mean([np.asarray(p).ravel() for p in predictions], axis=0)
    np.testing.assert_allclose(fused["prediction"], expected, rtol=1e-5, atol=1e-5)


def test_merge_keeps_sources_apart_when_every_name_is_identical(rows, tmp_path):
    x, y = rows["x"], rows["y"]
    first = to_onnx(LogisticRegression(C=0.01).fit(x[:, :2], y), x[:1, :2], options={"zipmap": False})
    second = to_onnx(LogisticRegression(C=10.0).fit(x[:, 2:4], 1 - y), x[:1, :2], options={"zipmap": False})
    names = lambda m: (  # noqa: E731 - a short local probe
        [i.name for i in m.graph.input],
        [o.name for o in m.graph.output],
        [n.name for n in m.graph.node],
        [t.name for t in m.graph.initializer],
    )
    assert names(first) == names(second)
    specs = [(save(first, tmp_path / "one.onnx"), ("a", "b")), (save(second, tmp_path / "two.onnx"), ("c", "d"))]
    out = tmp_path / "fused.onnx"
    assert run_cli(*merge_args(specs, out, "--fusion", "mean", "--keep-model-outputs")).exit_code == 0
    fused = assert_runtimes_agree(out, {"features": x[:100, :4]})
    for index, (path, cols) in enumerate(specs, start=1):
        expected = source_outputs(path, cols, x[:100])
        np.testing.assert_allclose(fused[f"m{index}/probabilities"], expected["probabilities"], rtol=1e-6)
        np.testing.assert_array_equal(fused[f"m{index}/label"], expected["label"])
    assert not np.allclose(fused["m1/probabilities"], fused["m2/probabilities"])


def test_merge_routes_overlapping_columns_in_first_appearance_order(rows, tmp_path):
    x, y = rows["x"], rows["y"]
    first = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x[:, [0, 1, 2]], y)
    second = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x[:, [1, 2, 3]], y)
    specs = [
        (save(to_onnx(first, x[:1, :3]), tmp_path / "abc.onnx"), ("a", "b", "c")),
        (save(to_onnx(second, x[:1, :3]), tmp_path / "bcd.onnx"), ("b", "c", "d")),
    ]
    out = tmp_path / "fused.onnx"
    assert run_cli(*merge_args(specs, out, "--fusion", "mean", "--keep-model-outputs")).exit_code == 0
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 4
    assert {p.key: p.value for p in model.metadata_props}["onnxfuse.features"] == '["a","b","c","d"]'
    fused = assert_runtimes_agree(out, {"features": x[:100, :4]})
    for index, (path, cols) in enumerate(specs, start=1):
        expected = source_outputs(path, cols, x[:100])
        np.testing.assert_allclose(
            fused[f"m{index}/output_probability"], as_matrix(expected["output_probability"], [0, 1])
        )


def test_merge_binds_per_column_inputs_by_name(rows, tmp_path):
    x, y = rows["x"], rows["y"]
    data = write_csv(tmp_path / "train.csv", rows)
    per_column = [("b", FloatTensorType([None, 1])), ("e", FloatTensorType([None, 1]))]
    frame = pd.DataFrame(x, columns=list("abcde"))
    pipe = Pipeline([("pick", ColumnTransformer([("keep", "passthrough", ["b", "e"])])), ("lr", LogisticRegression())])
    pipe.fit(frame[["b", "e"]], y)
    by_name = save(to_onnx(pipe, initial_types=per_column, options={"zipmap": False}), tmp_path / "by_name.onnx")
    tensor = save(to_onnx(LogisticRegression().fit(x[:, :2], y), x[:1, :2]), tmp_path / "ab.onnx")
    out = tmp_path / "fused.onnx"
    result = run_cli(
        "merge",
        tensor,
        by_name,
        "--features",
        "a,b",
        "--features",
        "b,e",
        "--data",
        data,
        "--target",
        "y",
        "--fusion",
        "mean",
        "-o",
        out,
        "--keep-model-outputs",
    )
    assert result.exit_code == 0, result.stderr
    fused = assert_runtimes_agree(out, {"features": x[:50, [0, 1, 4]]})
    expected = ort_outputs(by_name, {"b": x[:50, 1:2], "e": x[:50, 4:5]})
    np.testing.assert_allclose(fused["m2/probabilities"], expected["probabilities"], rtol=1e-6)


def test_merge_unions_string_classes(rows, tmp_path):
    x, ys = rows["x"], rows["ys"]
    low_mid = ys != "high"
    mid_high = ys != "low"
    first = LogisticRegression().fit(x[low_mid][:, :2], ys[low_mid])
    second = DecisionTreeClassifier(max_depth=3).fit(x[mid_high][:, 3:5], ys[mid_high])
    specs = [
        (save(to_onnx(first, x[:1, :2]), tmp_path / "lm.onnx"), ("a", "b")),
        (save(to_onnx(second, x[:1, :2]), tmp_path / "mh.onnx"), ("d", "e")),
    ]
    out = tmp_path / "fused.onnx"
    assert run_cli(*merge_args(specs, out, "--fusion", "mean")).exit_code == 0
    model = onnx.load(str(out))
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.STRING
    assert {p.key: p.value for p in model.metadata_props}["onnxfuse.classes"] == '["high","low","mid"]'
    x_rows = x[:200][:, [0, 1, 3, 4]]
    fused = assert_runtimes_agree(out, {"features": x_rows})
    p1 = as_matrix(source_outputs(specs[0][0], specs[0][1], x[:200])["output_probability"], ["low", "mid"])
    p2 = as_matrix(source_outputs(specs[1][0], specs[1][1], x[:200])["output_probability"], ["high", "mid"])
    expected = np.stack([p2[:, 0], p1[:, 0], p1[:, 1] + p2[:, 1]], axis=1) / 2
    np.testing.assert_allclose(fused["probabilities"], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(fused["label"], np.array(["high", "low", "mid"])[np.argmax(expected, axis=1)])


def test_merge_writes_identical_bytes_in_two_processes(mixed_sources, tmp_path):
    outputs = []
    for name in ("one", "two"):
        out = tmp_path / f"{name}.onnx"
        args = [str(a) for a in merge_args(mixed_sources, out, "--fusion", "mean")]
        code = "import sys; from onnxfuse.cli import main; sys.argv = ['onnxfuse', *sys.argv[1:]]; main()"
        subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
