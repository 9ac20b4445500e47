"""emit: self-contained below 2 GB, OUT.data above, streamed from external data; atomic replace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_checker_and_portable, assert_runtimes_agree, ort_outputs, run_cli
from onnx import external_data_helper, helper, numpy_helper

from onnxfuse import emit


def mlp_with_external_data(folder: Path, name: str, seed: int, hidden: int = 256) -> Path:
    """A small regressor `X[N,3] -> MatMul -> Relu -> MatMul -> [N,1]` whose weights live in `name.data`."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(size=(3, hidden)).astype(np.float32) * 0.1, "W1")
    w2 = numpy_helper.from_array(rng.normal(size=(hidden, 1)).astype(np.float32) * 0.1, "W2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "W2"], ["variable"])],
        "mlp", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("variable", onnx.TensorProto.FLOAT, ["N", 1])], [w1, w2],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location=f"{name}.data", size_threshold=0)
    return path


@pytest.fixture
def external_sources(tmp_path: Path) -> list[Path]:
    return [mlp_with_external_data(tmp_path / "one", "one", 1), mlp_with_external_data(tmp_path / "two", "two", 2)]


def merge(sources: list[Path], out: Path):
    return run_cli(
        "merge",
        *sources,
        "--features",
        "a,b,c",
        "--features",
        "c,d,e",
        "--fusion",
        "mean",
        "--keep-model-outputs",
        "-o",
        out,
    )


def expected_prediction(sources: list[Path], x: np.ndarray) -> np.ndarray:
    one = ort_outputs(sources[0], {"X": x[:, :3]})["variable"].ravel()
    two = ort_outputs(sources[1], {"X": x[:, 2:]})["variable"].ravel()
    return (one + two) / 2


def test_emit_writes_one_self_contained_file_from_external_data_sources(external_sources, tmp_path):
    out = tmp_path / "fused.onnx"
    assert merge(external_sources, out).exit_code == 0
    model = assert_checker_and_portable(out)
    assert not any(external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fused.onnx", "one", "two"]
    x = np.random.default_rng(0).normal(size=(32, 5)).astype(np.float32)
    fused = assert_runtimes_agree(out, {"features": x})
    np.testing.assert_allclose(fused["prediction"], expected_prediction(external_sources, x), rtol=1e-6)


def test_emit_streams_bytes_that_protobuf_reads_back_equal(external_sources, tmp_path):
    out = tmp_path / "fused.onnx"
    assert merge(external_sources, out).exit_code == 0
    model = onnx.load(str(out))
    assert (
        model.SerializeToString(deterministic=True) == out.read_bytes()
        or onnx.load_from_string(out.read_bytes()) == model
    )
    by_name = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    source = onnx.load(str(external_sources[0]))
    np.testing.assert_array_equal(by_name["m1/W1"], numpy_helper.to_array(source.graph.initializer[0]))


def test_emit_puts_weights_in_out_data_above_the_protobuf_limit(external_sources, tmp_path, monkeypatch):
    monkeypatch.setattr(emit, "PROTOBUF_LIMIT", emit._MARGIN)  # any model counts as "over 2 GB"
    out = tmp_path / "fused.onnx"
    assert merge(external_sources, out).exit_code == 0
    assert (tmp_path / "fused.data").is_file()
    model = onnx.load(str(out), load_external_data=False)
    locations = {
        external_data_helper.ExternalDataInfo(t).location
        for t in model.graph.initializer
        if external_data_helper.uses_external_data(t)
    }
    assert locations == {"fused.data"}
    x = np.random.default_rng(1).normal(size=(8, 5)).astype(np.float32)
    np.testing.assert_allclose(
        ort_outputs(out, {"features": x})["prediction"], expected_prediction(external_sources, x), rtol=1e-6
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_emit_replaces_an_existing_out_only_after_success(external_sources, tmp_path):
    out = tmp_path / "fused.onnx"
    out.write_bytes(b"old")
    assert merge(external_sources, out).exit_code == 0
    assert out.read_bytes() != b"old"
    onnx.checker.check_model(str(out))


def test_data_name_is_out_with_the_data_suffix():
    assert emit.data_name(Path("dir/fused.onnx")) == "fused.data"
    assert emit.data_name(Path("fused")) == "fused.data"


def test_metadata_json_sorts_keys_compactly():
    assert emit.metadata_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


def test_emit_aligns_streamed_weights_to_64_bytes_and_keeps_doc_strings(external_sources, tmp_path):
    model = onnx.load(str(external_sources[0]), load_external_data=False)
    model.graph.initializer[0].doc_string = "first layer"
    model.opset_import[0].version, model.ir_version = 21, 10  # onnx.version_converter drops tensor doc strings
    onnx.save(model, str(external_sources[0]))
    out = tmp_path / "fused.onnx"
    assert merge(external_sources, out).exit_code == 0
    raw = out.read_bytes()
    fused = onnx.load(str(out))
    streamed = [t for t in fused.graph.initializer if len(t.raw_data) > 1024]
    assert len(streamed) == 2  # the two W1; the 1 KB W2 stay inline
    for tensor in streamed:
        assert raw.count(tensor.raw_data) == 1 and raw.find(tensor.raw_data) % 64 == 0, tensor.name
    docs = {t.name: t.doc_string for t in fused.graph.initializer}
    assert docs["m1/W1"] == "first layer" and docs["m2/W1"] == "" and docs["m1/W2"] == ""
