"""Binding rules: string columns, the dtype of `features`, and the errors that name model, input and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import save, string_pipeline, string_table
from skl2onnx import convert_sklearn, to_onnx
from skl2onnx.common.data_types import DoubleTensorType
from sklearn.linear_model import LogisticRegression

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
