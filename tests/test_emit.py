"""emit: self-contained below 2 GB, a content-named OUT-stem.<hash>.data above, sealed; one atomic switch."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import assert_checker_and_portable, assert_runtimes_agree, canonical, ort_outputs, run_cli
from onnx import external_data_helper, helper, numpy_helper

from onnxfuse import digest, emit, pipeline
from onnxfuse.errors import OnnxfuseError, VerificationError


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


def merge(sources: list[Path], out: Path, features: tuple[str, str] = ("a,b,c", "c,d,e")):
    flags = ("--features", features[0], "--features", features[1], "--fusion", "mean", "--keep-model-outputs")
    return run_cli("merge", *sources, *flags, "-o", out)


def lower_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every merge counts as over 2 GB: the same code path as `tests/test_large.py`, in seconds."""
    monkeypatch.setattr(pipeline, "stage", functools.partial(emit.stage, limit=0))


@pytest.fixture
def over_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    lower_limit(monkeypatch)


@pytest.fixture(params=[emit.PROTOBUF_LIMIT, 0], ids=["one_file", "out_data"])
def limit(request: pytest.FixtureRequest) -> int:
    return request.param


def data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".data"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def inline_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as onnx-ir serializes it, every external tensor's bytes read into `raw_data`."""
    proto = ir.to_proto(model)
    tensors = {v.name: v.const_value for v in model.graph.initializers.values()}
    for tensor in proto.graph.initializer:
        if external_data_helper.uses_external_data(tensor):
            del tensor.external_data[:]
            tensor.ClearField("data_location")
            tensor.raw_data = tensors[tensor.name].tobytes()
    return proto


def test_emit_streams_bytes_that_protobuf_reads_back_as_the_staged_model(external_sources, tmp_path, monkeypatch):
    """The streamed file (weights copied from the sources' files, alignment padding) parses to the very model
    stage was given: every field and weight, tensor doc strings not padded, only the digest filled in."""
    staged = []

    def capturing_stage(model: ir.Model, folder: Path, **options) -> emit.Staged:
        result = emit.stage(model, folder, **options)
        staged.append(inline_proto(model))
        return result

    monkeypatch.setattr(pipeline, "stage", capturing_stage)
    out = tmp_path / "fused.onnx"
    assert merge(external_sources, out).exit_code == 0
    (expected,) = staged
    written = onnx.load_from_string(out.read_bytes())
    sealed = digest.read_metadata(out)[digest.DIGEST_KEY]
    for entry in expected.metadata_props:
        if entry.key == digest.DIGEST_KEY:
            assert entry.value == digest.PLACEHOLDER
            entry.value = sealed
    assert any(len(t.raw_data) > 1024 for t in written.graph.initializer), "some weights were streamed"
    assert canonical(written) == canonical(expected)
    by_name = {t.name: numpy_helper.to_array(t) for t in written.graph.initializer}
    source = onnx.load(str(external_sources[0]))
    np.testing.assert_array_equal(by_name["m1/W1"], numpy_helper.to_array(source.graph.initializer[0]))


def test_emit_puts_weights_in_a_content_named_data_file_when_over_the_limit(external_sources, tmp_path, over_limit):
    out = tmp_path / "fused.onnx"
    assert merge(external_sources, out).exit_code == 0
    (data,) = data_files(tmp_path)
    assert data.name == f"fused.{sha256(data)[:16]}.data"
    assert digest.external_locations(out) == [data.name]
    model = onnx.load(str(out), load_external_data=False)
    locations = {
        external_data_helper.ExternalDataInfo(t).location
        for t in model.graph.initializer
        if external_data_helper.uses_external_data(t)
    }
    assert locations == {data.name}
    assert_checker_and_portable(out)
    x = np.random.default_rng(1).normal(size=(8, 5)).astype(np.float32)
    fused = assert_runtimes_agree(out, {"features": x})
    np.testing.assert_allclose(fused["prediction"], expected_prediction(external_sources, x), rtol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    digest.check_digest(out)


def test_emit_writes_identical_files_when_merged_twice_over_the_limit(external_sources, tmp_path, over_limit):
    first, second = tmp_path / "first" / "fused.onnx", tmp_path / "second" / "fused.onnx"
    for out in (first, second):
        out.parent.mkdir()
        assert merge(external_sources, out).exit_code == 0
    assert first.read_bytes() == second.read_bytes()
    assert [p.name for p in data_files(first.parent)] == [p.name for p in data_files(second.parent)]
    assert data_files(first.parent)[0].read_bytes() == data_files(second.parent)[0].read_bytes()


@pytest.mark.parametrize("second_over_limit", [True, False], ids=["to_out_data", "to_one_file"])
def test_emit_removes_the_previous_data_file_after_the_switch(
    external_sources, tmp_path, monkeypatch, second_over_limit
):
    out = tmp_path / "fused.onnx"
    lower_limit(monkeypatch)
    assert merge(external_sources, out).exit_code == 0
    (previous,) = data_files(tmp_path)
    if not second_over_limit:
        monkeypatch.undo()
    assert merge(list(reversed(external_sources)), out, features=("c,d,e", "a,b,c")).exit_code == 0
    assert not previous.exists()
    kept = data_files(tmp_path)
    assert digest.external_locations(out) == [p.name for p in kept]
    assert len(kept) == (1 if second_over_limit else 0)
    x = np.random.default_rng(2).normal(size=(8, 5)).astype(np.float32)
    fused = assert_runtimes_agree(out, {"features": x[:, [2, 3, 4, 0, 1]]})  # columns c,d,e,a,b now
    np.testing.assert_allclose(fused["prediction"], expected_prediction(external_sources, x), rtol=1e-6)
    digest.check_digest(out)


def test_emit_keeps_the_previous_out_with_its_own_data_when_the_switch_fails(external_sources, tmp_path, monkeypatch):
    """The rename of OUT fails after the new weights' file was moved in (as a kill between the two steps)."""
    out = tmp_path / "fused.onnx"
    lower_limit(monkeypatch)
    assert merge(external_sources, out).exit_code == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    x = np.random.default_rng(3).normal(size=(8, 5)).astype(np.float32)
    expected = ort_outputs(out, {"features": x})["prediction"]
    real_replace, moved = os.replace, []

    def replace_failing_at_out(source, destination):
        if Path(destination) == out:
            moved.extend(p.name for p in data_files(tmp_path))
            raise OSError(28, "No space left on device")
        real_replace(source, destination)

    model = ir.load(str(external_sources[1]))  # another model: its weights' file gets another name
    with emit.workspace(out, []) as folder:
        staged = emit.stage(model, folder, out=out, metadata={}, limit=0)
        monkeypatch.setattr(os, "replace", replace_failing_at_out)
        with pytest.raises(OSError, match="No space left"):
            emit.emit(staged)
        monkeypatch.setattr(os, "replace", real_replace)
    assert len(moved) == 2, "the new weights' file was in place beside the old one when OUT's rename failed"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert_checker_and_portable(out)
    fused = assert_runtimes_agree(out, {"features": x})
    np.testing.assert_array_equal(fused["prediction"], expected)
    digest.check_digest(out)


def test_emit_leaves_data_files_of_other_names_when_replacing_out(tmp_path):
    """Only onnxfuse's names for this OUT are removed: a user's own weights file stays."""
    out = tmp_path / "fused.onnx"
    mlp_with_external_data(tmp_path / "old", "fused", 4)
    (tmp_path / "old" / "fused.data").rename(tmp_path / "weights.bin")
    proto = onnx.load(str(tmp_path / "old" / "fused.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        tensor.external_data[0].value = "weights.bin"  # the OUT being replaced names a user's weights.bin
    onnx.save(proto, str(out))
    model = ir.load(str(mlp_with_external_data(tmp_path / "new", "model", 5)))
    with emit.workspace(out, []) as folder:
        emit.emit(emit.stage(model, folder, out=out, metadata={}))
    assert (tmp_path / "weights.bin").is_file()
    assert digest.external_locations(out) == []
    onnx.checker.check_model(str(out), full_check=True)


def test_check_output_refuses_when_the_data_file_to_be_removed_is_an_input(external_sources, tmp_path, over_limit):
    out = tmp_path / "fused.onnx"
    assert merge(external_sources, out).exit_code == 0
    (data,) = data_files(tmp_path)
    with pytest.raises(OnnxfuseError, match=f"output {data}: is an input file"):
        emit.check_output(out, [external_sources[0], data])


def test_check_output_refuses_when_the_data_file_to_be_removed_holds_an_input_models_weights(
    external_sources, tmp_path, over_limit
):
    """A copy of the previous OUT used as a source reads the weights' file the switch would remove."""
    out = tmp_path / "fused.onnx"
    assert merge(external_sources, out).exit_code == 0
    (data,) = data_files(tmp_path)
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(out.read_bytes())
    with pytest.raises(OnnxfuseError, match=f"output {data}: is the weights of input {copy}"):
        emit.check_output(out, [copy, external_sources[1]])
    emit.check_output(tmp_path / "other.onnx", [copy, external_sources[1]])


def test_stage_seals_the_sha256_of_the_bytes_with_the_digest_zeroed(external_sources, tmp_path, limit):
    out = tmp_path / "fused.onnx"
    metadata = {"onnxfuse.version": '"0"'}
    with emit.workspace(out, []) as folder:
        staged = emit.stage(ir.load(str(external_sources[0])), folder, out=out, metadata=metadata, limit=limit)
        written = staged.moves[-1][0].read_bytes()
        emit.check_sealed(staged)
    entries = {p.key: p.value for p in onnx.load_from_string(written).metadata_props}
    assert sorted(entries) == [digest.DIGEST_KEY, "onnxfuse.version"]
    recorded = json.loads(entries[digest.DIGEST_KEY])
    assert written.count(recorded.encode()) == 1
    zeroed = written.replace(recorded.encode(), b"sha256:" + b"0" * 64)
    assert recorded == "sha256:" + hashlib.sha256(zeroed).hexdigest() == "sha256:" + staged.digest


def test_check_sealed_raises_when_the_staged_file_records_another_digest(external_sources, tmp_path, limit):
    """Merge's verify stage: the staged OUT must record the digest emit computed (one hex digit changed here)."""
    out = tmp_path / "fused.onnx"
    with emit.workspace(out, []) as folder:
        staged = emit.stage(ir.load(str(external_sources[0])), folder, out=out, metadata={}, limit=limit)
        written = staged.moves[-1][0]
        payload = written.read_bytes()
        changed = "0" if staged.digest[0] != "0" else "1"
        written.write_bytes(payload.replace(staged.digest.encode(), (changed + staged.digest[1:]).encode()))
        with pytest.raises(VerificationError, match="onnxfuse.digest is"):
            emit.check_sealed(staged)
        with pytest.raises(VerificationError, match="its bytes are not those onnxfuse merge wrote"):
            digest.check_digest(written)


def test_data_name_is_out_stem_with_16_hex_of_the_content_hash():
    assert digest.data_name(Path("dir/fused.onnx"), "0123456789abcdef" * 4) == "fused.0123456789abcdef.data"
    assert digest.data_name(Path("fused"), "f" * 64) == "fused.ffffffffffffffff.data"
    assert digest.is_data_name("fused.0123456789abcdef.data", Path("fused.onnx"))
    assert digest.is_data_name("fused.data", Path("fused.onnx"))  # what onnxfuse wrote before content names
    assert not digest.is_data_name("other.0123456789abcdef.data", Path("fused.onnx"))
    assert not digest.is_data_name("fused.0123.data", Path("fused.onnx"))


def test_emit_replaces_an_existing_out_only_after_success(external_sources, tmp_path):
    out = tmp_path / "fused.onnx"
    out.write_bytes(b"old")
    assert merge(external_sources, out).exit_code == 0
    assert out.read_bytes() != b"old"
    onnx.checker.check_model(str(out))


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
