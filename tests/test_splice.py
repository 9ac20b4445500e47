"""Splicing keeps every scope apart: If branches reading outer values, and same-named local functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
from conftest import assert_checker_and_portable, assert_runtimes_agree, ort_outputs, run_cli, save

IF_MODEL = """
<ir_version: 8, opset_import: ["" : 15]>
branchy (float[N, 2] X) => (float[N] y) {
    scale = Constant <value = float[1] {%s}> ()
    total = ReduceSum <keepdims = 0> (X, axes)
    positive = Greater (first, zero)
    y = If (positive) <
        then_branch = g1 () => (float[N] out1) { out1 = Mul (total, W) },
        else_branch = g2 () => (float[N] out2) { shifted = Add (total, W)
                                                 out2 = Mul (shifted, scale) }
    >
}
"""


def if_model(weight: float, scale: float) -> onnx.ModelProto:
    """A regressor whose If branches read the outer value `total` and outer initializers `W`."""
    model = onnx.parser.parse_model(IF_MODEL % scale)
    graph = model.graph
    graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(np.array([weight], dtype=np.float32), "W"),
            onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
            onnx.numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ]
    )
    # the branch condition: the first element of X's first column, via outer-scope-free nodes
    graph.node.insert(0, onnx.helper.make_node("ReduceMax", ["X"], ["first"], keepdims=0))
    onnx.checker.check_model(model, full_check=True)
    return model


FUNCTION_MODEL = """
<ir_version: 8, opset_import: ["" : 18, "local" : 1]>
uses_function (float[N, 1] X) => (float[N, 1] y) {
    y = local.transform (X)
}
<domain: "local", opset_import: ["" : 18]>
transform (x) => (out) {
    %s
}
"""


def function_model(body: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(FUNCTION_MODEL % body)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_splice_keeps_outer_scope_references_apart_when_if_branches_collide(tmp_path: Path):
    first = save(if_model(2.0, 0.5), tmp_path / "one.onnx")
    second = save(if_model(-3.0, 4.0), tmp_path / "two.onnx")
    out = tmp_path / "fused.onnx"
    result = run_cli(
        "merge",
        first,
        second,
        "--features",
        "a,b",
        "--features",
        "c,d",
        "--fusion",
        "mean",
        "--keep-model-outputs",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.stderr
    assert_checker_and_portable(out)
    rng = np.random.default_rng(1)
    for sign in (1.0, -1.0):  # both branches of both models
        x = rng.normal(size=(16, 4)).astype(np.float32)
        x[:, [0, 2]] = sign * np.abs(x[:, [0, 2]])
        fused = assert_runtimes_agree(out, {"features": x})
        one = ort_outputs(first, {"X": x[:, :2]})["y"]
        two = ort_outputs(second, {"X": x[:, 2:]})["y"]
        np.testing.assert_allclose(fused["m1/y"], one, rtol=1e-6)
        np.testing.assert_allclose(fused["m2/y"], two, rtol=1e-6)
        np.testing.assert_allclose(fused["prediction"], (one + two) / 2, rtol=1e-6)


@pytest.mark.parametrize("target_opset", [18, 21], ids=["renamed_in_splice", "inlined_before_conversion"])
def test_splice_keeps_both_bodies_when_local_functions_share_a_name(tmp_path: Path, target_opset: int):
    first = save(function_model("two = Constant <value_float = 2.0> ()\n out = Mul (x, two)"), tmp_path / "f1.onnx")
    second = save(
        function_model("three = Constant <value_float = 3.0> ()\n out = Add (x, three)"), tmp_path / "f2.onnx"
    )
    out = tmp_path / "fused.onnx"
    result = run_cli(
        "merge",
        first,
        second,
        "--features",
        "a",
        "--features",
        "b",
        "--fusion",
        "mean",
        "--keep-model-outputs",
        "--target-opset",
        target_opset,
        "-o",
        out,
    )
    assert result.exit_code == 0, result.stderr
    model = assert_checker_and_portable(out)
    assert {o.domain: o.version for o in model.opset_import}[""] == target_opset
    assert "local" not in {o.domain for o in model.opset_import}
    x = np.array([[1.0, 10.0], [2.0, 20.0]], dtype=np.float32)
    fused = assert_runtimes_agree(out, {"features": x})
    np.testing.assert_allclose(fused["m1/y"].ravel(), [2.0, 4.0])
    np.testing.assert_allclose(fused["m2/y"].ravel(), [13.0, 23.0])
    np.testing.assert_allclose(fused["prediction"], [7.5, 13.5])


def test_splice_prefixes_every_name_and_leaves_sources_untouched(tmp_path: Path):
    from onnxfuse.bind import bind
    from onnxfuse.load import load_model
    from onnxfuse.normalize import normalize
    from onnxfuse.spec import ModelSpec
    from onnxfuse.splice import splice

    paths = [save(if_model(1.0, 1.0), tmp_path / "one.onnx"), save(if_model(1.0, 1.0), tmp_path / "two.onnx")]
    sources = [load_model(ModelSpec(p, (f"a{i}", f"b{i}")), i) for i, p in enumerate(paths, start=1)]
    before = [s.proto.SerializeToString() for s in sources]
    models, versions = normalize(sources)
    normalized_before = [m.proto.SerializeToString() for m in models]
    spliced = splice(models, bind(models), versions)
    assert [s.proto.SerializeToString() for s in sources] == before
    assert [m.proto.SerializeToString() for m in models] == normalized_before
    graph = spliced.model.graph
    names = [v.name for v in graph.initializers.values()]
    for graph_or_sub in spliced.model.graphs():
        for node in graph_or_sub:
            names += [v.name for v in node.outputs if v.name]
    assert len(names) == len(set(names))
    assert all(name.startswith(("m1/", "m2/")) for name in names)
    assert {v.name for v in spliced.outputs[0].values()} == {"m1/y"}
