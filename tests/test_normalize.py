"""normalize: ZipMap cut to plain tensors, one opset per domain, safe ML upgrades, relaxed batch dims."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightgbm
import numpy as np
import onnx
import onnxmltools
import pytest
from conftest import assert_checker_and_portable, assert_runtimes_agree, ort_outputs, run_cli, save, write_csv
from onnx import helper
from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestClassifier

from onnxfuse.errors import OnnxfuseError, OnnxfuseWarning
from onnxfuse.load import load_model
from onnxfuse.normalize import _lowering_problem, decide_versions, normalize
from onnxfuse.roles import output_role
from onnxfuse.spec import ModelSpec


def load(path: Path, index: int = 1):
    return load_model(ModelSpec(path), index)


@pytest.fixture(scope="module")
def forest(rows):
    x, y = rows["x"], rows["y3"]
    return RandomForestClassifier(n_estimators=4, max_depth=4, random_state=0).fit(x[:, :3], y), x[:, :3]


def test_normalize_strips_zipmap_bit_identical_to_a_plain_export(forest, tmp_path):
    model, x = forest
    zipmap = save(to_onnx(model, x[:1]), tmp_path / "zipmap.onnx")
    plain = save(to_onnx(model, x[:1], options={"zipmap": False}), tmp_path / "plain.onnx")
    (normalized,), _ = normalize([load(zipmap)])
    assert normalized.zipmap_classes == {"output_probability": (0, 1, 2)}
    assert all(o.type.HasField("tensor_type") for o in normalized.proto.graph.output)
    assert not any(n.op_type == "ZipMap" for n in normalized.proto.graph.node)
    stripped = ort_outputs(normalized.proto, {"X": x[:300]})["output_probability"]
    expected = ort_outputs(plain, {"X": x[:300]})["probabilities"]
    np.testing.assert_array_equal(stripped, expected)
    role = output_role(normalized)
    assert (role.task, role.label, role.probabilities, role.classes) == (
        "classification",
        "output_label",
        "output_probability",
        (0, 1, 2),
    )


def test_normalize_writes_one_opset_import_per_domain_when_the_exporter_repeats_them(forest, tmp_path):
    model, x = forest
    proto = to_onnx(model, x[:1], options={"zipmap": False}, target_opset=18)
    domains = [o.domain for o in proto.opset_import]
    assert len(domains) > len(set(domains)), "skl2onnx is expected to repeat ai.onnx here"
    (normalized,), versions = normalize([load(save(proto, tmp_path / "m.onnx"))])
    assert [(o.domain, o.version) for o in normalized.proto.opset_import] == [("", 21), ("ai.onnx.ml", 3)]
    assert normalized.proto.ir_version == versions.ir_version == 10
    onnx.checker.check_model(normalized.proto, full_check=True)


def test_normalize_relaxes_lightgbm_static_label_shape(rows, tmp_path):
    x, y = rows["x"], rows["y"]
    booster = lightgbm.LGBMClassifier(n_estimators=3, verbose=-1).fit(x[:, :2], y)
    proto = onnxmltools.convert_lightgbm(booster, initial_types=[("input", MLFloat([None, 2]))])
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_value == 1
    (normalized,), _ = normalize([load(save(proto, tmp_path / "lgbm.onnx"))])
    label = normalized.proto.graph.output[0].type.tensor_type.shape.dim[0]
    assert label.dim_param == "N" and not label.HasField("dim_value")
    assert (normalized.proto.ir_version, normalized.proto.opset_import[0].version) == (10, 21)


def label_encoder_model(ml_opset: int) -> onnx.ModelProto:
    node = helper.make_node(
        "LabelEncoder", ["x"], ["y"], domain="ai.onnx.ml", classes_strings=["a", "b"], default_int64=-1
    )
    graph = helper.make_graph(
        [node],
        "enc",
        [helper.make_tensor_value_info("x", onnx.TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.INT64, ["N"])],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", ml_opset)], ir_version=8
    )


def test_normalize_refuses_an_ml_op_whose_meaning_changes(tmp_path):
    path = save(label_encoder_model(1), tmp_path / "encoder.onnx")
    with pytest.raises(OnnxfuseError, match=r"model 1 \(encoder.onnx\).*LabelEncoder.*ai.onnx.ml 1 to 3"):
        normalize([load(path)])


def test_decide_versions_follows_target_opset_and_refuses_ir_above_the_limit(forest, tmp_path):
    model, x = forest
    source = load(save(to_onnx(model, x[:1], target_opset=15), tmp_path / "m.onnx"))
    assert decide_versions([source]).opset == 21
    assert decide_versions([source], target_opset=17).ir_version == 8
    with pytest.raises(OnnxfuseError, match="--max-ir-version 9.*IR version 10"):
        decide_versions([source], max_ir_version=9)
    with pytest.raises(OnnxfuseError, match="--target-opset 99"):
        decide_versions([source], target_opset=99)


def test_normalize_converts_down_to_a_lower_target_opset(forest, tmp_path):
    model, x = forest
    path = save(to_onnx(model, x[:1], options={"zipmap": False}, target_opset=18), tmp_path / "m.onnx")
    (normalized,), versions = normalize([load(path)], target_opset=15)
    assert (versions.opset, versions.ir_version) == (15, 8)
    np.testing.assert_array_equal(
        ort_outputs(normalized.proto, {"X": x[:100]})["probabilities"],
        ort_outputs(path, {"X": x[:100]})["probabilities"],
    )


def test_normalize_refuses_ops_from_other_domains(tmp_path):
    node = helper.make_node("FusedGemm", ["x", "x"], ["y"], domain="com.microsoft")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])],
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], ir_version=8
    )
    with pytest.raises(OnnxfuseError, match="com.microsoft:FusedGemm"):
        normalize([load(save(proto, tmp_path / "ms.onnx"))])


def test_normalize_turns_sparse_initializers_into_constants(tmp_path):
    values = helper.make_tensor("W", onnx.TensorProto.FLOAT, [2], [2.0, 3.0])
    indices = helper.make_tensor("W_indices", onnx.TensorProto.INT64, [2], [0, 3])
    sparse = helper.make_sparse_tensor(values, indices, [2, 2])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])],
        sparse_initializer=[sparse],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = save(proto, tmp_path / "sparse.onnx")
    (normalized,), _ = normalize([load(path)])
    assert not normalized.proto.graph.sparse_initializer
    x = np.array([[1.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(ort_outputs(normalized.proto, {"x": x})["y"], [[2.0, 3.0]])


# --- versions: the contract's ai.onnx 21 unless a source cannot go down -------------------------------------------

RMS_NORM_REGRESSOR = """
<ir_version: 11, opset_import: ["" : 23]>
rms (float[N, 3] x) => (float[N, 1] y) {
  scale = Constant <value = float[3] {1.0, 2.0, 0.5}> ()
  normed = RMSNormalization <axis = -1> (x, scale)
  axes = Constant <value = int64[1] {1}> ()
  y = ReduceSum <keepdims = 1> (normed, axes)
}"""


def test_normalize_converts_skl2onnx_opset22_exports_down_to_21(forest, tmp_path):
    model, x = forest
    plain = to_onnx(model, x[:1], options={"zipmap": False})
    assert max(o.version for o in plain.opset_import if o.domain == "") == 22, "skl2onnx 1.20 declares 22"
    path = save(plain, tmp_path / "plain22.onnx")

    (normalized,), versions = normalize([load(path)])

    assert (versions.opset, versions.ml_opset, versions.ir_version) == (21, 3, 10)
    assert {o.domain: o.version for o in normalized.proto.opset_import} == {"": 21, "ai.onnx.ml": 3}
    feeds = {"X": x[:50]}
    expected = ort_outputs(path, feeds)
    actual = ort_outputs(normalized.proto, feeds)
    np.testing.assert_array_equal(actual["label"], expected["label"])
    np.testing.assert_allclose(actual["probabilities"], expected["probabilities"], rtol=1e-6)


def test_decide_versions_keeps_the_opset_a_source_needs_and_warns_naming_it(forest, tmp_path):
    model, x = forest
    regular = load(save(to_onnx(model, x[:1], options={"zipmap": False}), tmp_path / "forest.onnx"), 1)
    rms = load(save(onnx.parser.parse_model(RMS_NORM_REGRESSOR), tmp_path / "rms.onnx"), 2)

    with pytest.warns(OnnxfuseWarning, match=r"model 2 \(rms.onnx\): its ai.onnx 23 does not convert down to 21"):
        versions = decide_versions([regular, rms])

    assert versions.opset == 23
    assert versions.ir_version == helper.find_min_ir_version_for([helper.make_opsetid("", 23)])


def test_decide_versions_stays_at_21_without_a_warning_when_every_source_goes_down(forest, tmp_path):
    model, x = forest
    plain = load(save(to_onnx(model, x[:1], options={"zipmap": False}), tmp_path / "plain.onnx"))

    with warnings.catch_warnings():
        warnings.simplefilter("error", OnnxfuseWarning)
        assert decide_versions([plain]).opset == 21


def test_lowering_problem_names_the_output_when_the_converter_changes_it(tmp_path):
    """Softmax before opset 13 flattens from `axis` on: converting a 3-D softmax down changes its numbers."""
    softmax = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        soft (float[N, 3, 2] x) => (float[N, 3, 2] y) { y = Softmax <axis = 1> (x) }""")
    source = load(save(softmax, tmp_path / "softmax.onnx"))

    assert _lowering_problem(source, 12) == "output 'y' changes"
    assert _lowering_problem(source, 13) is None


def test_merge_writes_the_forced_opset_and_one_warning_line_when_a_source_cannot_go_down(forest, rows, tmp_path):
    model, x = forest
    first = save(to_onnx(model, x[:1], options={"zipmap": False}), tmp_path / "forest.onnx")
    second = save(onnx.parser.parse_model(RMS_NORM_REGRESSOR), tmp_path / "rms.onnx")
    data = write_csv(tmp_path / "rows.csv", rows, label="y3")
    out = tmp_path / "fused.onnx"

    result = run_cli("merge", first, second, "--features", "a,b,c", "--features", "c,d,e", "--data", data,
                     "--target", "y", "-o", out)  # fmt: skip

    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line]
    assert all(line.startswith("warning: ") for line in lines), result.stderr  # and the hold-out's caveats, if any
    warnings_shown = [line for line in lines if "ai.onnx 23" in line]
    assert len(warnings_shown) == 1 and warnings_shown[0].startswith("warning: model 2 (rms.onnx)"), result.stderr
    fused = assert_checker_and_portable(out)
    assert {o.domain: o.version for o in fused.opset_import}[""] == 23
    assert_runtimes_agree(out, {"features": rows["x"][:100]})
    assert run_cli("inspect", out).stdout.count("oldest onnxruntime: 1.23") == 1


def _dim_params(model: onnx.ModelProto) -> set[str]:
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    return {d.dim_param for v in values if v.type.HasField("tensor_type") for d in v.type.tensor_type.shape.dim}


@pytest.mark.slow  # the tox 'slow' environment (CI runs it): a torch.onnx export and a --meta auto merge
def test_merge_names_the_batch_dim_n_everywhere_when_a_torch_source_calls_it_otherwise(forest, rows, tmp_path):
    torch = pytest.importorskip("torch")
    model, x = forest
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    program = torch.onnx.export(
        net, (torch.zeros(4, 2),), dynamo=True, dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
        input_names=["x"], output_names=["score"],
    )  # fmt: skip
    exported = program.model_proto
    symbols = _dim_params(exported) - {""}
    assert symbols and "N" not in symbols, f"torch names its batch itself: {symbols}"
    first = save(to_onnx(model, x[:1], options={"zipmap": False}), tmp_path / "forest.onnx")
    second = save(exported, tmp_path / "net.onnx")
    data = write_csv(tmp_path / "rows.csv", rows, label="y3")
    out = tmp_path / "fused.onnx"

    result = run_cli("merge", first, second, "--features", "a,b,c", "--features", "d,e", "--data", data,
                     "--target", "y", "-o", out, "--keep-model-outputs")  # fmt: skip

    assert result.exit_code == 0, result.stderr
    fused = assert_checker_and_portable(out)
    assert _dim_params(fused) - {""} == {"N"}, _dim_params(fused)
    assert_runtimes_agree(out, {"features": rows["x"][:100]})


def test_decide_versions_probes_zipmap_outputs_when_a_zipmap_source_goes_down(rows, tmp_path):
    """skl2onnx's KNN export keeps its ZipMap and declares ai.onnx 22: the probe compares lists of maps."""
    from sklearn.neighbors import KNeighborsClassifier

    x, y = rows["x"][:, :3], rows["y"]
    exported = to_onnx(KNeighborsClassifier().fit(x, y), x[:1])
    assert max(o.version for o in exported.opset_import if o.domain == "") > 21
    assert any(n.op_type == "ZipMap" for n in exported.graph.node)
    source = load(save(exported, tmp_path / "knn.onnx"))

    assert _lowering_problem(source, 21) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", OnnxfuseWarning)
        assert decide_versions([source]).opset == 21
