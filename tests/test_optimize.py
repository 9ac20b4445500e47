"""optimize: fewer nodes, the same numbers, the same contract, only standard domains."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from conftest import assert_checker_and_portable, assert_runtimes_agree, ort_outputs, run_cli, save
from onnx import helper
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def merged(tmp_path: Path, sources, features, *extra: object, name: str = "fused.onnx") -> Path:
    args: list[object] = ["merge", *sources]
    for columns in features:
        args += ["--features", columns]
    out = tmp_path / name
    result = run_cli(*args, "--fusion", "mean", "-o", out, *extra)
    assert result.exit_code == 0, result.stderr
    return out


def op_counts(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_optimize_merges_a_shared_scaler_and_the_gathers_of_the_same_columns(rows, tmp_path):
    x, y = rows["x"], rows["y"]
    scaler = StandardScaler().fit(x[:, :2])
    one = make_pipeline(scaler, LogisticRegression(C=0.1)).fit(x[:, :2], y)
    two = make_pipeline(scaler, LogisticRegression(C=10.0)).fit(x[:, :2], 1 - y)
    sources = [save(to_onnx(m, x[:1, :2]), tmp_path / f"{n}.onnx") for n, m in (("one", one), ("two", two))]
    plain = merged(tmp_path, sources, ["a,b", "a,b"], "--no-optimize", name="plain.onnx")
    optimized = merged(tmp_path, sources, ["a,b", "a,b"])
    assert op_counts(plain)["Gather"] == 3 and op_counts(plain)["Scaler"] == 2
    assert op_counts(optimized)["Gather"] == 2 and op_counts(optimized)["Scaler"] == 1  # + the label lookup
    assert_checker_and_portable(optimized)
    feeds = {"features": x[:200, :2]}
    fast, slow = assert_runtimes_agree(optimized, feeds), assert_runtimes_agree(plain, feeds)
    np.testing.assert_array_equal(fast["probabilities"], slow["probabilities"])
    np.testing.assert_array_equal(fast["label"], slow["label"])


def test_optimize_drops_label_branches_the_head_does_not_read(rows, tmp_path):
    x, y = rows["x"], rows["y"]
    mlp = MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, random_state=0).fit(x[:, :2], y)
    sources = [
        save(to_onnx(mlp, x[:1, :2], options={"zipmap": False}), tmp_path / "mlp.onnx"),
        save(to_onnx(LogisticRegression().fit(x[:, 2:4], y), x[:1, :2]), tmp_path / "lr.onnx"),
    ]
    plain = merged(tmp_path, sources, ["a,b", "c,d"], "--no-optimize", name="plain.onnx")
    optimized = merged(tmp_path, sources, ["a,b", "c,d"])
    assert op_counts(plain)["ArrayFeatureExtractor"] == 1, "the MLP's label is gathered from its classes"
    assert op_counts(optimized)["ArrayFeatureExtractor"] == 0
    assert sum(op_counts(optimized).values()) < sum(op_counts(plain).values())
    model = onnx.load(str(optimized))
    assert [i.name for i in model.graph.input] == ["features"]
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    feeds = {"features": x[:200, :4]}
    np.testing.assert_allclose(
        assert_runtimes_agree(optimized, feeds)["probabilities"], ort_outputs(plain, feeds)["probabilities"], rtol=1e-7
    )


def test_optimize_removes_identity_and_no_op_cast(tmp_path):
    nodes = [
        helper.make_node("Identity", ["X"], ["same"]),
        helper.make_node("Cast", ["same"], ["still_float"], to=onnx.TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["still_float", "axes"], ["y"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "noops", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 1])],
        [onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )  # fmt: skip
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    paths = [save(source, tmp_path / "one.onnx"), save(source, tmp_path / "two.onnx")]
    optimized = merged(tmp_path, paths, ["a,b", "c,d"])
    counts = op_counts(optimized)
    assert counts["Identity"] == 0
    nodes = onnx.load(str(optimized)).graph.node
    sources_casts = [n.name for n in nodes if n.op_type == "Cast" and not n.name.startswith("fusion/")]
    assert sources_casts == []  # the head's own casts (availability, bool to float) are no-ops of no kind
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    fused = assert_runtimes_agree(optimized, {"features": x})
    np.testing.assert_allclose(fused["prediction"], (x[:, :2].sum(1) + x[:, 2:].sum(1)) / 2)


def test_optimize_keeps_the_example_portable_and_smaller(tmp_path):
    models = Path(__file__).resolve().parent.parent / "models"
    sources = [models / "a.onnx", models / "b.onnx"]
    common = ("--data", models / "train.csv", "--target", "y")
    plain = merged(tmp_path, sources, ["a,b", "c,d"], *common, "--fusion", "stack", "--no-optimize", name="p.onnx")
    optimized = merged(tmp_path, sources, ["a,b", "c,d"], *common, "--fusion", "stack")
    assert sum(op_counts(optimized).values()) < sum(op_counts(plain).values())
    model = assert_checker_and_portable(optimized)
    assert {o.domain: o.version for o in model.opset_import} == {"": 21, "ai.onnx.ml": 3}
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    np.testing.assert_allclose(
        assert_runtimes_agree(optimized, {"features": x})["probabilities"],
        ort_outputs(plain, {"features": x})["probabilities"],
        rtol=1e-6,
        atol=1e-7,
    )


def test_optimize_keeps_an_output_that_copies_another_when_model_outputs_are_kept(tmp_path):
    """A source whose output `copy` is an Identity of its output `probabilities`: with --keep-model-outputs
    both are outputs of the fused file, and Identity elimination must not rename one to the other."""
    nodes = [helper.make_node("Softmax", ["X"], ["probabilities"], axis=1),
             helper.make_node("Identity", ["probabilities"], ["copy"]),
             helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0)]  # fmt: skip
    outputs = [helper.make_tensor_value_info("label", onnx.TensorProto.INT64, ["N"]),
               helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["N", 2]),
               helper.make_tensor_value_info("copy", onnx.TensorProto.FLOAT, ["N", 2])]  # fmt: skip
    x_input = helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph(nodes, "copies", [x_input], outputs)
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    sources = [save(source, tmp_path / "one.onnx"), save(source, tmp_path / "two.onnx")]
    out = tmp_path / "fused.onnx"

    result = run_cli("merge", *sources, "--features", "a,b", "--features", "c,d", "--fusion", "mean",
                     "--keep-model-outputs", "-o", out)  # fmt: skip

    assert result.exit_code == 0, result.stderr
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    fused = assert_runtimes_agree(out, {"features": x})
    for index, columns in ((1, slice(0, 2)), (2, slice(2, 4))):
        expected = ort_outputs(sources[index - 1], {"X": x[:, columns]})
        np.testing.assert_array_equal(fused[f"m{index}/probabilities"], expected["probabilities"])
        np.testing.assert_array_equal(fused[f"m{index}/copy"], expected["copy"])
