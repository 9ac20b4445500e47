"""Binding rules: string columns, the dtype of `features`, and the errors that name model, input and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from conftest import save, string_pipeline, string_table
from skl2onnx import convert_sklearn, to_onnx
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from onnxfuse.bind import Binding, bind
from onnxfuse.errors import OnnxfuseError
from onnxfuse.load import load_model
from onnxfuse.normalize import normalize
from onnxfuse.spec import ModelSpec


@pytest.fixture(scope="module")
def table() -> dict[str, np.ndarray]:
    return string_table()


@pytest.fixture(scope="module")
def paths(table, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """skl2onnx exports: two string pipelines reading `color`, a float model on x2,x3, a double model on x3."""
    folder = tmp_path_factory.mktemp("bind")
    x23 = np.stack([table["x2"], table["x3"]], axis=1)
    double = LogisticRegression().fit(x23[:, 1:].astype(np.float64), table["y"])
    return {
        "strings": save(string_pipeline(table, ["x1", "x2"]), folder / "strings.onnx"),
        "strings_x3": save(string_pipeline(table, ["x3"]), folder / "strings_x3.onnx"),
        "numeric": save(to_onnx(LogisticRegression().fit(x23, table["y"]), x23[:1]), folder / "numeric.onnx"),
        "double": save(
            convert_sklearn(double, initial_types=[("x3", DoubleTensorType([None, 1]))], options={"zipmap": False}),
            folder / "double.onnx",
        ),
    }


def bound(paths: dict[str, Path], *models: tuple[str, tuple[str, ...] | None], **options) -> Binding:
    sources = [load_model(ModelSpec(paths[name], features), i) for i, (name, features) in enumerate(models, start=1)]
    normalized, _ = normalize(sources)
    return bind(normalized, **options)


def test_bind_gives_one_string_input_beside_features_when_source_reads_a_string_column(paths, table) -> None:
    binding = bound(paths, ("strings", None), ("numeric", ("x2", "x3")), data_columns=list(table))
    assert binding.features == ("x1", "x2", "x3")
    assert binding.strings == ("color",)
    assert binding.shared == ()
    color = next(b for b in binding.models[0] if b.name == "color")
    assert color.is_string and color.columns == ("color",) and color.rank == 2
    assert binding.metadata() == {"onnxfuse.string_inputs": ["color"]}


def test_bind_takes_string_column_in_features_order_when_features_are_given(paths, table) -> None:
    binding = bound(paths, ("strings", ("colour", "b", "c")), ("numeric", ("c", "d")))
    assert binding.strings == ("colour",)
    assert binding.features == ("b", "c", "d")
    assert [b.columns for b in binding.models[0]] == [("colour",), ("b",), ("c",)]


def test_bind_shares_one_string_input_when_two_sources_read_the_column(paths, table) -> None:
    binding = bound(paths, ("strings", None), ("strings_x3", None), data_columns=list(table))
    assert binding.strings == ("color",)
    assert binding.features == ("x1", "x2", "x3")


@pytest.mark.parametrize("name", ["features", "label", "probabilities", "prediction"])
def test_bind_raises_naming_column_when_string_column_takes_a_contract_name(paths, name: str) -> None:
    with pytest.raises(OnnxfuseError, match=f"model 1 \\(strings.onnx\\)'s input 'color' reads string column '{name}'"):
        bound(paths, ("strings", (name, "x1", "x2")), ("numeric", ("x2", "x3")))


def test_bind_raises_naming_column_when_it_is_read_as_strings_and_as_numbers(paths) -> None:
    with pytest.raises(OnnxfuseError, match="column 'x3' is read as strings by model 1 .*numbers by model 2"):
        bound(paths, ("strings", ("x3", "x1", "x2")), ("numeric", ("x2", "x3")))


def test_bind_gives_float64_features_when_a_source_reads_a_column_as_double(paths, table) -> None:
    binding = bound(paths, ("numeric", ("x2", "x3")), ("double", None), data_columns=list(table))
    assert binding.dtype == onnx.TensorProto.DOUBLE
    assert binding.metadata() == {"onnxfuse.features_dtype": "float64"}


@pytest.mark.parametrize(
    ("models", "dtype", "expected"),
    [
        ((("numeric", ("x2", "x3")), ("strings", None)), "auto", onnx.TensorProto.FLOAT),
        ((("numeric", ("x2", "x3")), ("double", None)), "float32", onnx.TensorProto.FLOAT),
        ((("numeric", ("x2", "x3")), ("strings", None)), "float64", onnx.TensorProto.DOUBLE),
    ],
    ids=["auto_float", "forced_float32", "forced_float64"],
)
def test_bind_gives_the_chosen_dtype_when_features_dtype_is_given(paths, table, models, dtype, expected) -> None:
    binding = bound(paths, *models, data_columns=list(table), features_dtype=dtype)
    assert binding.dtype == expected


FLAT_STRINGS = """
<ir_version: 8, opset_import: ["" : 18, "ai.onnx.ml" : 3]>
flat (string[N] color) => (float[N] variable) {
    variable = ai.onnx.ml.LabelEncoder <keys_strings = ["red", "green", "blue"], values_floats = [1.0, 2.0, 3.0],
                                        default_float = -1.0> (color)
}
"""  # no exporter writes a rank-1 string input for a column; skl2onnx writes [N, 1]


def test_splice_feeds_one_string_input_to_rank_1_and_rank_2_readers_when_they_share_a_column(
    paths, table, tmp_path: Path
) -> None:
    import onnx_ir as ir
    from conftest import assert_checker_and_portable, assert_runtimes_agree, ort_outputs

    from onnxfuse.splice import splice

    flat = save(onnx.parser.parse_model(FLAT_STRINGS), tmp_path / "flat.onnx")
    sources = [load_model(ModelSpec(p), i) for i, p in enumerate((paths["strings"], flat), start=1)]
    normalized, versions = normalize(sources)
    binding = bind(normalized, data_columns=list(table))
    assert binding.strings == ("color",) and [b.rank for b in binding.models[1]] == [1]
    spliced = splice(normalized, binding, versions)
    spliced.model.graph.outputs.extend([spliced.outputs[0]["output_label"], spliced.outputs[1]["variable"]])
    out = tmp_path / "spliced.onnx"
    ir.save(spliced.model, out)
    assert_checker_and_portable(out)
    color = np.array([["red"], [""], ["blue"], ["green"], ["mauve"]], dtype=object)
    features = np.array([[0.1, -0.2], [1.0, 0.5], [0.0, 0.0], [-1.0, 2.0], [0.3, 0.3]], dtype=np.float32)
    fused = assert_runtimes_agree(out, {"features": features, "color": color})
    np.testing.assert_array_equal(fused["m2/variable"], ort_outputs(flat, {"color": color.ravel()})["variable"])
    first = ort_outputs(paths["strings"], {"color": color, "x1": features[:, :1], "x2": features[:, 1:]})
    np.testing.assert_array_equal(fused["m1/output_label"], first["output_label"])


# --- the rules of `bind`'s docstring, on small hand-written graphs (ONNX text syntax) -----------------------------

WIDE_AND_NARROW = """
<ir_version: 10, opset_import: ["" : 21]>
wide_and_narrow (float[N, 2] wide, float[N] narrow) => (float[N, 1] y) {
    axes = Constant <value = int64[1] {1}> ()
    total = ReduceSum <keepdims = 1> (wide, axes)
    column = Unsqueeze (narrow, axes)
    y = Add (total, column)
}
"""
FIRST_AND_REST = """
<ir_version: 10, opset_import: ["" : 21]>
first_and_rest (float[N, 1] first, float[N, K] rest) => (float[N, 1] y) {
    axes = Constant <value = int64[1] {1}> ()
    total = ReduceSum <keepdims = 1> (rest, axes)
    y = Add (first, total)
}
"""
REST_FIRST = """
<ir_version: 10, opset_import: ["" : 21]>
rest_first (float[N, K] rest, float[N, 1] last) => (float[N, 1] y) {
    axes = Constant <value = int64[1] {1}> ()
    total = ReduceSum <keepdims = 1> (rest, axes)
    y = Add (last, total)
}
"""
WITH_IMAGE = """
<ir_version: 10, opset_import: ["" : 21]>
with_image (float[N, 3, %d, 4] %s, float[N, 2] X) => (float[N, 1] y) {
    axes = Constant <value = int64[3] {1, 2, 3}> ()
    brightness = ReduceMean <keepdims = 0> (%s, axes)
    one = Constant <value = int64[1] {1}> ()
    column = Unsqueeze (brightness, one)
    x_total = ReduceSum <keepdims = 1> (X, one)
    y = Add (column, x_total)
}
"""
WIDE_STRINGS = """
<ir_version: 10, opset_import: ["" : 21, "ai.onnx.ml" : 3]>
wide_strings (string[N, 2] pair, float[N, 1] x) => (float[N, 1] y) {
    codes = ai.onnx.ml.LabelEncoder <keys_strings = ["a", "b"], values_floats = [1.0, 2.0], default_float = 0.0> (pair)
    one = Constant <value = int64[1] {1}> ()
    total = ReduceSum <keepdims = 1> (codes, one)
    y = Add (total, x)
}
"""
IMAGE_ONLY = """
<ir_version: 10, opset_import: ["" : 21]>
image_only (float[N, 3, 4, 4] image) => (float[N] y) {
    axes = Constant <value = int64[3] {1, 2, 3}> ()
    y = ReduceMean <keepdims = 0> (image, axes)
}
"""
FIXED_BATCH = """
<ir_version: 10, opset_import: ["" : 21]>
fixed (float[1, 2] X) => (float[1, 2] y) {
    y = Relu (X)
}
"""


def with_image(name: str = "image", height: int = 4) -> str:
    return WITH_IMAGE % (height, name, name)


def text_model(folder: Path, name: str, text: str) -> Path:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return save(model, folder / f"{name}.onnx")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory, table) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bind_graphs")
    texts = {
        "wide_and_narrow": WIDE_AND_NARROW, "first_and_rest": FIRST_AND_REST, "rest_first": REST_FIRST,
        "image": with_image(), "image_taller": with_image(height=8), "features_image": with_image("features"),
        "color_image": with_image("color"), "wide_strings": WIDE_STRINGS, "image_only": IMAGE_ONLY,
        "fixed": FIXED_BATCH,
    }  # fmt: skip
    paths = {name: text_model(folder, name, text) for name, text in texts.items()}
    x12 = np.stack([table["x1"], table["x2"]], axis=1)
    frame = pd.DataFrame({"x1": table["x1"], "x2": table["x2"]})
    scaled = ColumnTransformer([("num", StandardScaler(), ["x1", "x2"])])
    fitted = Pipeline([("pre", scaled), ("lr", LogisticRegression())]).fit(frame, table["y"])
    initial = [("x1", FloatTensorType([None, 1])), ("x2", FloatTensorType([None, 1]))]
    # skl2onnx with several initial types: one `[N, 1]` input per feature, named like the columns
    paths["by_name"] = save(convert_sklearn(fitted, initial_types=initial), folder / "by_name.onnx")
    paths["numeric"] = save(to_onnx(LogisticRegression().fit(x12, table["y"]), x12[:1]), folder / "numeric.onnx")
    return paths


def columns_of(binding: Binding, model: int) -> dict[str, tuple[str, ...] | None]:
    return {b.name: b.columns for b in binding.models[model]}


def test_bind_splits_features_across_inputs_by_their_widths_when_features_are_given(graphs) -> None:
    binding = bound(graphs, ("wide_and_narrow", ("a", "b", "c")))
    assert columns_of(binding, 0) == {"wide": ("a", "b"), "narrow": ("c",)}
    assert [b.rank for b in binding.models[0]] == [2, 1]  # a rank-1 numeric input reads one column


def test_bind_gives_the_last_input_of_dynamic_width_the_remaining_columns(graphs) -> None:
    binding = bound(graphs, ("first_and_rest", ("a", "b", "c", "d")))
    assert columns_of(binding, 0) == {"first": ("a",), "rest": ("b", "c", "d")}


def test_bind_raises_naming_the_input_when_one_of_dynamic_width_is_not_last(graphs) -> None:
    message = (
        r"model 1 \(rest_first.onnx\): input 'rest' has a dynamic width and is "
        "not the last input"
    )
    with pytest.raises(OnnxfuseError, match=message):
        bound(graphs, ("rest_first", ("a", "b", "c")))


@pytest.mark.parametrize("columns", [("a", "b"), ("a", "b", "c", "d")], ids=["too_few", "too_many"])
def test_bind_raises_naming_each_input_s_width_when_the_column_count_differs(graphs, columns) -> None:
    given = ",".join(columns)
    message = (
        rf"model 1 \(wide_and_narrow.onnx\): input 'wide' takes 2, 'narrow' "
        rf"takes 1 column\(s\) but --features gives {len(columns)} \({given}\)"
    )
    with pytest.raises(OnnxfuseError, match=message):
        bound(graphs, ("wide_and_narrow", columns))


def test_bind_binds_one_column_inputs_by_name_without_features(graphs, table) -> None:
    for data_columns in (list(table), None):
        binding = bound(graphs, ("by_name", None), data_columns=data_columns)
        assert columns_of(binding, 0) == {"x1": ("x1",), "x2": ("x2",)}
        assert binding.features == ("x1", "x2")


def test_bind_raises_saying_to_use_features_when_an_input_is_wider_than_one_column(graphs, table) -> None:
    message = (
        r"model 1 \(numeric.onnx\): input 'X' takes 2 columns; say which with "
        "--features"
    )
    with pytest.raises(OnnxfuseError, match=message):
        bound(graphs, ("numeric", None), data_columns=list(table))
    with pytest.raises(OnnxfuseError, match="input 'rest' takes any number of columns; say which with --features"):
        bound(graphs, ("first_and_rest", None), data_columns=["first", "rest"])


def test_bind_raises_naming_the_input_when_it_is_not_a_column_of_the_data(graphs) -> None:
    message = (
        r"model 1 \(by_name.onnx\): input 'x2' is not a column of the data; "
        "bind it with --features"
    )
    with pytest.raises(OnnxfuseError, match=message):
        bound(graphs, ("by_name", None), data_columns=["x1", "y"])


def test_bind_raises_naming_the_column_the_data_lacks(graphs) -> None:
    message = (
        r"model 1 \(numeric.onnx\): input 'X' needs column 'x9', which the data "
        "lacks"
    )
    with pytest.raises(OnnxfuseError, match=message):
        bound(graphs, ("numeric", ("x1", "x9")), data_columns=["x1", "x2"])


def test_bind_packs_numeric_columns_in_first_appearance_order(graphs) -> None:
    binding = bound(graphs, ("numeric", ("b", "a")), ("wide_and_narrow", ("a", "c", "b")), ("numeric", ("d", "c")))
    assert binding.features == ("b", "a", "c", "d")
    assert binding.column_index("c") == 2
    assert [label for label, _ in binding.readers("a")] == ["model 1 (numeric.onnx)", "model 2 (wide_and_narrow.onnx)"]


def test_bind_shares_an_image_input_across_models_when_name_type_and_shape_agree(graphs) -> None:
    binding = bound(graphs, ("image", ("a", "b")), ("image", ("b", "c")))
    assert columns_of(binding, 0) == {"image": None, "X": ("a", "b")}
    assert columns_of(binding, 1) == {"image": None, "X": ("b", "c")}
    assert [value.name for value in binding.shared] == ["image"]
    assert binding.features == ("a", "b", "c")


def test_bind_keeps_a_string_input_wider_than_one_column_as_a_graph_input(graphs) -> None:
    binding = bound(graphs, ("wide_strings", ("x",)))
    assert columns_of(binding, 0) == {"pair": None, "x": ("x",)}
    assert [value.name for value in binding.shared] == ["pair"] and binding.strings == ()


def test_bind_raises_naming_both_models_when_a_shared_input_s_shape_differs(graphs) -> None:
    message = (
        r"model 2 \(image_taller.onnx\): input 'image' has another type or "
        r"shape than in model 1 \(image.onnx\)"
    )
    with pytest.raises(OnnxfuseError, match=message):
        bound(graphs, ("image", ("a", "b")), ("image_taller", ("c", "d")))


def test_bind_raises_when_an_unbound_input_is_named_features(graphs) -> None:
    message = (
        r"model 1 \(features_image.onnx\): input 'features' is not bound to "
        "columns but its name is the fused model's packed input"
    )
    with pytest.raises(OnnxfuseError, match=message):
        bound(graphs, ("features_image", ("a", "b")))


def test_bind_raises_when_an_unbound_input_takes_a_string_column_s_name(graphs, paths, table) -> None:
    models = [load_model(ModelSpec(paths["strings"]), 1), load_model(ModelSpec(graphs["color_image"], ("x1", "x2")), 2)]
    normalized, _ = normalize(models)
    message = (
        r"model 2 \(color_image.onnx\): input 'color' is not bound to columns "
        r"but its name is that of the string column model 1 "
    )
    with pytest.raises(OnnxfuseError, match=message):
        bind(normalized, data_columns=list(table))


def test_bind_raises_when_features_repeat_a_column(graphs) -> None:
    with pytest.raises(OnnxfuseError, match=r"model 1 \(numeric.onnx\): --features repeats a column \(a,a\)"):
        bound(graphs, ("numeric", ("a", "a")))


def test_bind_raises_when_features_are_given_for_a_model_without_column_inputs(graphs) -> None:
    message = (
        r"model 1 \(image_only.onnx\): --features given but the model has no "
        "numeric rank-1 or rank-2 input"
    )
    with pytest.raises(OnnxfuseError, match=message):
        bound(graphs, ("image_only", ("a",)), ("numeric", ("a", "b")))


def test_bind_raises_naming_the_input_with_a_fixed_batch_size(graphs) -> None:
    with pytest.raises(OnnxfuseError, match=r"model 1 \(fixed.onnx\): input 'X' has a fixed batch size 1; re-export"):
        bound(graphs, ("fixed", ("a", "b")))


def test_bind_raises_naming_the_choices_when_features_dtype_is_unknown(paths, table) -> None:
    with pytest.raises(OnnxfuseError, match="--features-dtype float16: give auto, float32 or float64"):
        bound(paths, ("numeric", ("x2", "x3")), data_columns=list(table), features_dtype="float16")


SEQUENCE_INPUT = """
<ir_version: 10, opset_import: ["" : 21]>
sequence_input (seq(float[N, 2]) items) => (float[N, 2] y) {
    zero = Constant <value = int64 {0}> ()
    y = SequenceAt (items, zero)
}
"""


def test_bind_raises_naming_an_input_that_is_not_a_tensor(tmp_path: Path) -> None:
    path = text_model(tmp_path, "sequence_input", SEQUENCE_INPUT)
    normalized, _ = normalize([load_model(ModelSpec(path, ("a", "b")), 1)])
    message = r"model 1 \(sequence_input.onnx\): input 'items' is a sequence, not a tensor; only tensor inputs"
    with pytest.raises(OnnxfuseError, match=message):
        bind(normalized)
