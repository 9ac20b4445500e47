"""End to end: real exporters in, one fused file out, equal to its sources on two runtimes."""

from __future__ import annotations

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
    string_pipeline,
    string_table,
    write_csv,
)
from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat
from skl2onnx import convert_sklearn, to_onnx
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
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
        [
            "onnxfuse.features",
            "onnxfuse.classes",
            "onnxfuse.sources",
            "onnxfuse.fusion",
            "onnxfuse.version",
            "onnxfuse.digest",
        ]
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


# --- the inputs users have: string columns, mixed binding, double inputs ----------------------------------------------


@pytest.fixture(scope="module")
def string_sources(model_dir: Path) -> dict[str, object]:
    """skl2onnx tutorial pipelines reading `color` (+ x1,x2 / + x3), a float model on x2,x3, and the data
    with a few `color` cells missing, as CSV and as Parquet."""
    table = string_table()
    x23 = np.stack([table["x2"], table["x3"]], axis=1)
    paths = {
        "strings": save(string_pipeline(table, ["x1", "x2"]), model_dir / "color_x1_x2.onnx"),
        "strings_x3": save(string_pipeline(table, ["x3"]), model_dir / "color_x3.onnx"),
        "numeric": save(to_onnx(LogisticRegression().fit(x23, table["y"]), x23[:1]), model_dir / "num_x2_x3.onnx"),
    }
    color = table["color"].copy()
    color[::50] = None  # missing: "" in the CSV, null in the Parquet file
    frame = pd.DataFrame({**table, "color": color})
    frame.to_csv(model_dir / "colors.csv", index=False)
    frame.to_parquet(model_dir / "colors.parquet")
    expected_color = np.array(["" if c is None else c for c in color], dtype=object).reshape(-1, 1)
    return {"paths": paths, "table": {**table, "color": expected_color}}


def assert_copies_match_sources(out: Path, feeds: dict[str, np.ndarray], sources: list[dict[str, np.ndarray]]):
    """Both backends agree on the fused file, and each `m{i}/` copy gives its source's outputs."""
    fused = assert_runtimes_agree(out, feeds)
    for index, (path, source_feeds) in enumerate(sources, start=1):
        expected = ort_outputs(path, source_feeds)
        for name, value in expected.items():
            value = as_matrix(value, [0, 1])  # ZipMap's maps in class order
            if value.dtype.kind == "f":
                np.testing.assert_allclose(fused[f"m{index}/{name}"], value, rtol=1e-6, atol=1e-7, err_msg=name)
            else:
                np.testing.assert_array_equal(fused[f"m{index}/{name}"].ravel(), np.asarray(value).ravel())
    return fused


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_merge_matches_every_source_when_a_string_column_comes_from_csv_or_parquet(string_sources, tmp_path, suffix):
    paths, table = string_sources["paths"], string_sources["table"]
    out = tmp_path / "fused.onnx"
    data = paths["strings"].parent / f"colors{suffix}"
    args = [paths["strings"], paths["numeric"], "--features", "-", "--features", "x2,x3"]
    result = run_cli("merge", *args, "--data", data, "--target", "y", "--keep-model-outputs", "-o", out)
    assert result.exit_code == 0, result.stderr
    model = assert_checker_and_portable(out)
    inputs = {i.name: (i.type.tensor_type.elem_type, len(i.type.tensor_type.shape.dim)) for i in model.graph.input}
    assert inputs == {"features": (onnx.TensorProto.FLOAT, 2), "color": (onnx.TensorProto.STRING, 2)}
    props = {p.key: p.value for p in model.metadata_props}
    assert props["onnxfuse.features"] == '["x1","x2","x3"]' and props["onnxfuse.string_inputs"] == '["color"]'
    rows = slice(0, 300)
    column = {n: table[n][rows].reshape(-1, 1) for n in ("x1", "x2", "x3")}
    feeds = {"features": np.hstack([column["x1"], column["x2"], column["x3"]]), "color": table["color"][rows]}
    assert "" in feeds["color"]
    sources = [
        (paths["strings"], {"color": feeds["color"], "x1": column["x1"], "x2": column["x2"]}),
        (paths["numeric"], {"X": np.hstack([column["x2"], column["x3"]])}),
    ]
    assert_copies_match_sources(out, feeds, sources)
    assert run_cli("verify", out, paths["strings"], paths["numeric"], "--data", data).exit_code == 0


def test_merge_shares_one_string_input_when_two_sources_read_the_column_and_a_third_is_indexed(
    string_sources, tmp_path
):
    paths, table = string_sources["paths"], string_sources["table"]
    out = tmp_path / "fused.onnx"
    data = paths["strings"].parent / "colors.csv"
    models = [paths["strings"], paths["strings_x3"], paths["numeric"]]
    result = run_cli("merge", *models, "--features", "3:x2,x3", "--data", data, "--target", "y", "-o", out,
                     "--keep-model-outputs")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    model = assert_checker_and_portable(out)
    assert [i.name for i in model.graph.input] == ["features", "color"]
    column = {n: table[n][:300].reshape(-1, 1) for n in ("x1", "x2", "x3")}
    color = table["color"][:300]
    feeds = {"features": np.hstack([column["x1"], column["x2"], column["x3"]]), "color": color}
    sources = [
        (paths["strings"], {"color": color, "x1": column["x1"], "x2": column["x2"]}),
        (paths["strings_x3"], {"color": color, "x3": column["x3"]}),
        (paths["numeric"], {"X": np.hstack([column["x2"], column["x3"]])}),
    ]
    assert_copies_match_sources(out, feeds, sources)


def test_merge_gives_float64_features_equal_to_the_source_when_a_source_reads_double(model_dir, tmp_path):
    rng = np.random.default_rng(1)
    t = 1.7e9 + rng.integers(0, 2000, 500).astype(np.float64)
    x3 = rng.normal(size=500)
    y = ((t - 1.7e9 > 1000) ^ (rng.random(500) < 0.1)).astype(np.int64)
    double = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression())]).fit(t.reshape(-1, 1), y)
    initial = [("t", DoubleTensorType([None, 1]))]
    double_path = save(convert_sklearn(double, initial_types=initial, options={"zipmap": False}), tmp_path / "t.onnx")
    floats = LogisticRegression().fit(x3.reshape(-1, 1).astype(np.float32), y)
    float_path = save(to_onnx(floats, x3[:1].reshape(1, 1).astype(np.float32)), tmp_path / "x3.onnx")
    data = tmp_path / "big.csv"
    pd.DataFrame({"t": t, "x3": x3, "y": y}).to_csv(data, index=False)
    out = tmp_path / "fused.onnx"
    result = run_cli("merge", double_path, "--features", "1:t", float_path, "--features", "2:x3", "--data", data,
                     "--target", "y", "--keep-model-outputs", "--passthrough", "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    model = assert_checker_and_portable(out)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert {p.key: p.value for p in model.metadata_props}["onnxfuse.features_dtype"] == '"float64"'
    features = np.stack([t, x3], axis=1)
    fused = assert_copies_match_sources(
        out, {"features": features},
        [(double_path, {"t": t.reshape(-1, 1)}), (float_path, {"X": x3.reshape(-1, 1).astype(np.float32)})],
    )  # fmt: skip
    source = ort_outputs(double_path, {"t": t.reshape(-1, 1)})
    np.testing.assert_array_equal(fused["m1/probabilities"], source["probabilities"])  # every digit of t reached it
    rounded = ort_outputs(double_path, {"t": t.astype(np.float32).astype(np.float64).reshape(-1, 1)})
    assert not np.allclose(rounded["probabilities"], source["probabilities"], rtol=1e-5, atol=1e-6)
