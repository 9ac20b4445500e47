"""pack: one self-contained file streamed from the sources' weights, 64-byte aligned, parsing to the model itself."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import assert_checker_and_portable, assert_runtimes_agree, canonical, ort_outputs
from onnx import external_data_helper, helper, numpy_helper

from onnxfuse import pack

HIDDEN = 256  # a [HIDDEN] float32 bias is exactly INLINE_LIMIT bytes
LABELS = [f"label-{i:04d}".encode() for i in range(200)]  # a 2.2 KB string table, which ONNX keeps inline


def branch(name: str, weights: np.ndarray) -> onnx.GraphProto:
    """An If branch `r @ w` with a 2 KB initializer of its own (subgraph weights are never streamed)."""
    initializer = numpy_helper.from_array(weights, f"{name}_w")
    node = helper.make_node("MatMul", ["r", f"{name}_w"], [f"{name}_out"])
    output = helper.make_tensor_value_info(f"{name}_out", onnx.TensorProto.FLOAT, ["N", 2])
    return helper.make_graph([node], name, [], [output], [initializer])


def layered_model(seed: int = 0) -> onnx.ModelProto:
    """`X[N,4]` through a ReLU layer `r` to `y[N,1]` and `z[N,2]` (plus an If whose branches hold 2 KB of
    weights each), a byte sum `total` and a constant string table `names`: tensors below, at and above 1 KB."""
    rng = np.random.default_rng(seed)
    tensors = {
        "A": rng.normal(size=(4, HIDDEN)).astype(np.float32),  # 4 KB: streamed
        "bias": rng.normal(size=HIDDEN).astype(np.float32),  # 1024 B: inline
        "B": rng.normal(size=(HIDDEN, 1)).astype(np.float32),  # 1024 B: inline
        "C": rng.normal(size=(HIDDEN, 2)).astype(np.float32),  # 2 KB: streamed
        "odd": rng.integers(0, 255, size=1025).astype(np.uint8),  # 1025 B: streamed, an odd length
        "zero": np.array(0.0, dtype=np.float32),
    }
    initializers = [numpy_helper.from_array(v, k) for k, v in tensors.items()]
    initializers[0].doc_string = "first layer"
    initializers[1].doc_string = "its bias"
    initializers.append(helper.make_tensor("labels", onnx.TensorProto.STRING, [len(LABELS)], LABELS))
    initializers[-1].doc_string = "class names"
    positive = branch("then", rng.normal(size=(HIDDEN, 2)).astype(np.float32))
    negative = branch("else", rng.normal(size=(HIDDEN, 2)).astype(np.float32) - 1)
    nodes = [
        helper.make_node("MatMul", ["X", "A"], ["h"]),
        helper.make_node("Add", ["h", "bias"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["r"]),
        helper.make_node("MatMul", ["r", "B"], ["y"]),
        helper.make_node("ReduceSum", ["X"], ["sum"], keepdims=0),
        helper.make_node("Greater", ["sum", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["branched"], then_branch=positive, else_branch=negative),
        helper.make_node("MatMul", ["r", "C"], ["direct"]),
        helper.make_node("Add", ["branched", "direct"], ["z"]),
        helper.make_node("Cast", ["odd"], ["odd_float"], to=onnx.TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["odd_float"], ["total"], keepdims=0),
        helper.make_node("Identity", ["labels"], ["names"]),
    ]
    outputs = [
        helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 1]),
        helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 2]),
        helper.make_tensor_value_info("total", onnx.TensorProto.FLOAT, []),
        helper.make_tensor_value_info("names", onnx.TensorProto.STRING, [len(LABELS)]),
    ]
    inputs = [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["N", 4])]
    graph = helper.make_graph(nodes, "layered", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    model.metadata_props.add(key="onnxfuse.version", value='"0"')
    onnx.checker.check_model(model, full_check=True)
    return model


STREAMED = {"A", "C", "odd"}  # non-string main-graph tensors over INLINE_LIMIT bytes


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """`layered_model` with every tensor but the strings in one external-data file (at growing offsets)."""
    folder = tmp_path / "source"
    folder.mkdir()
    path = folder / "layered.onnx"
    onnx.save(layered_model(), str(path), save_as_external_data=True, location="layered.data", size_threshold=0)
    return path


def x_rows(count: int = 16) -> np.ndarray:
    rows = np.random.default_rng(5).normal(size=(count, 4)).astype(np.float32)
    rows[: count // 2] += 2  # both If branches run
    rows[count // 2 :] -= 2
    return rows


def inline_proto(path: Path) -> onnx.ModelProto:
    """The model at `path` as onnx-ir serializes it, every external tensor's bytes read into `raw_data`."""
    proto = ir.to_proto(ir.load(str(path)))
    weights = {t.name: numpy_helper.to_array(t).tobytes() for t in graph_tensors(onnx.load(str(path)).graph)}
    for tensor in graph_tensors(proto.graph):
        if external_data_helper.uses_external_data(tensor):
            del tensor.external_data[:]
            tensor.ClearField("data_location")
            tensor.raw_data = weights[tensor.name]
    return proto


def graph_tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """The initializers of a graph and of its If branches."""
    subgraphs = [a.g for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    return [*graph.initializer, *(t for g in subgraphs for t in g.initializer)]


def all_tensors(path: Path) -> list[onnx.TensorProto]:
    """Every initializer as written (external data not read)."""
    return graph_tensors(onnx.load(str(path), load_external_data=False).graph)


def offset_of(path: Path, name: str) -> int:
    """Where tensor `name` starts in the external-data file of the model at `path`."""
    tensor = next(t for t in all_tensors(path) if t.name == name)
    return external_data_helper.ExternalDataInfo(tensor).offset


def packed(source: Path, path: Path) -> pack.Packed:
    return pack.write_packed(pack.serialize(ir.load(str(source))), path)


def test_serialize_defers_only_main_graph_tensors_over_the_inline_limit(source):
    model = ir.load(str(source))

    serialized = pack.serialize(model)

    assert set(serialized.tensors) == STREAMED
    tensors = graph_tensors(serialized.proto.graph)
    deferred = [t for t in tensors if external_data_helper.uses_external_data(t)]
    assert {t.name for t in deferred} == STREAMED  # subgraph and small weights read in, strings inline
    assert "layered.data" not in {external_data_helper.ExternalDataInfo(t).location for t in deferred}
    expected = {t.name: numpy_helper.to_array(t) for t in graph_tensors(onnx.load(str(source)).graph)}
    for tensor in tensors:
        if tensor.name not in STREAMED:
            np.testing.assert_array_equal(numpy_helper.to_array(tensor), expected[tensor.name], err_msg=tensor.name)
    assert {"then_w", "else_w", "labels", "bias"} <= {t.name for t in tensors}


def test_serialize_leaves_the_model_as_it_was(source):
    model = ir.load(str(source))
    tensors = {v.name: v.const_value for g in model.graphs() for v in g.initializers.values()}
    before = ir.to_proto(model).SerializeToString(deterministic=True)

    pack.serialize(model)

    assert {v.name: v.const_value for g in model.graphs() for v in g.initializers.values()} == tensors
    assert all(tensors[v.name] is v.const_value for g in model.graphs() for v in g.initializers.values())
    assert ir.to_proto(model).SerializeToString(deterministic=True) == before


def test_write_packed_parses_to_the_model_with_its_weights_inline(source, tmp_path):
    path = tmp_path / "packed.onnx"

    packed(source, path)

    assert not any(external_data_helper.uses_external_data(t) for t in all_tensors(path))
    assert canonical(onnx.load_from_string(path.read_bytes())) == canonical(inline_proto(source))
    assert_checker_and_portable(path)
    fused = assert_runtimes_agree(path, {"X": x_rows()})
    expected = ort_outputs(source, {"X": x_rows()})
    for name, value in expected.items():
        np.testing.assert_array_equal(np.asarray(fused[name]), np.asarray(value), err_msg=name)


def test_write_packed_writes_the_same_bytes_for_the_same_model(source, tmp_path):
    first, second = tmp_path / "first.onnx", tmp_path / "second.onnx"
    packed(source, first)

    packed(source, second)

    assert second.read_bytes() == first.read_bytes()


def test_write_packed_aligns_each_streamed_payload_to_64_bytes_at_the_offsets_it_returns(source, tmp_path):
    path = tmp_path / "packed.onnx"

    result = packed(source, path)

    raw = path.read_bytes()
    expected = {t.name: numpy_helper.to_array(t).tobytes() for t in onnx.load(str(source)).graph.initializer}
    assert set(result.offsets) == STREAMED
    for name, (offset, length) in result.offsets.items():
        assert offset % pack.ALIGNMENT == 0, name
        assert raw[offset : offset + length] == expected[name], name


def test_write_packed_keeps_tensor_doc_strings(source, tmp_path):
    path = tmp_path / "packed.onnx"

    packed(source, path)

    docs = {t.name: t.doc_string for t in onnx.load(str(path)).graph.initializer}
    assert {name: doc for name, doc in docs.items() if doc} == {
        "A": "first layer",
        "bias": "its bias",
        "labels": "class names",
    }  # streamed, read in from external data, and string tensors keep theirs; the padding leaves none behind


def test_packed_view_reads_the_streamed_tensors_from_the_packed_file_itself(source, tmp_path):
    path = tmp_path / "packed.onnx"
    result = packed(source, path)

    view = result.view()

    for tensor in view.graph.initializer:
        if tensor.name in STREAMED:
            info = external_data_helper.ExternalDataInfo(tensor)
            assert (info.location, info.offset, info.length) == (path.name, *result.offsets[tensor.name])
    view_path = tmp_path / "view.onnx"
    onnx.save(view, str(view_path))
    viewed = assert_runtimes_agree(view_path, {"X": x_rows()})
    for name, value in ort_outputs(path, {"X": x_rows()}).items():
        np.testing.assert_array_equal(np.asarray(viewed[name]), np.asarray(value), err_msg=name)


def test_write_packed_streams_weights_from_the_source_file_at_write_time(source, tmp_path):
    """No copy of a streamed weight is held between serialize and write: the file is read when written."""
    serialized = pack.serialize(ir.load(str(source)))
    changed = np.arange(4 * HIDDEN, dtype=np.float32)
    with open(source.parent / "layered.data", "r+b") as handle:
        handle.seek(offset_of(source, "A"))
        handle.write(changed.tobytes())

    pack.write_packed(serialized, tmp_path / "packed.onnx")

    tensors = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "packed.onnx")).graph.initializer}
    np.testing.assert_array_equal(tensors["A"].ravel(), changed)


@pytest.mark.parametrize("kernel", ["refuses", "absent"])
def test_write_packed_copies_in_chunks_when_copy_file_range_is_unavailable(source, tmp_path, monkeypatch, kernel):
    expected = packed(source, tmp_path / "kernel.onnx").path.read_bytes()
    if kernel == "refuses":

        def refuse(*args: object) -> int:
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    else:
        monkeypatch.delattr(os, "copy_file_range")

    assert packed(source, tmp_path / "chunks.onnx").path.read_bytes() == expected


def test_write_packed_raises_when_a_source_file_ends_before_its_weights(source, tmp_path):
    serialized = pack.serialize(ir.load(str(source)))  # reads the small tensors in
    os.truncate(source.parent / "layered.data", offset_of(source, "A") + 8)

    with pytest.raises(OSError, match="ended early"):
        pack.write_packed(serialized, tmp_path / "packed.onnx")


def test_serialized_size_is_the_packed_file_size_within_two_alignments_per_tensor(source, tmp_path):
    serialized = pack.serialize(ir.load(str(source)))

    written = pack.write_packed(serialized, tmp_path / "packed.onnx").path.stat().st_size

    assert abs(serialized.size - written) <= 2 * pack.ALIGNMENT * len(serialized.tensors)


def test_save_external_puts_every_tensor_over_the_inline_limit_in_the_data_file(source, tmp_path):
    path = tmp_path / "saved.onnx"

    pack.save_external(ir.load(str(source)), path, "saved.data")

    tensors = all_tensors(path)
    external = {t.name for t in tensors if external_data_helper.uses_external_data(t)}
    assert external == STREAMED | {"then_w", "else_w"}  # subgraph weights too
    locations = {external_data_helper.ExternalDataInfo(t).location for t in tensors if t.name in external}
    assert locations == {"saved.data"}
    assert (tmp_path / "saved.data").is_file()
    onnx.checker.check_model(str(path), full_check=True)
    saved = assert_runtimes_agree(path, {"X": x_rows()})
    for name, value in ort_outputs(source, {"X": x_rows()}).items():
        np.testing.assert_array_equal(np.asarray(saved[name]), np.asarray(value), err_msg=name)


def test_keep_strings_inline_reports_no_bytes_for_string_tensors_and_keeps_their_values(source):
    model = ir.load(str(source))
    numeric = {v.name: v.const_value for v in model.graph.initializers.values() if v.name != "labels"}

    pack.keep_strings_inline(model)
    once = model.graph.initializers["labels"].const_value
    pack.keep_strings_inline(model)

    labels = model.graph.initializers["labels"].const_value
    assert labels is once, "a second call leaves it as it is"
    assert labels.nbytes == 0 and labels.dtype == ir.DataType.STRING
    assert labels.numpy().tolist() == LABELS  # as bytes, which is how ONNX stores strings
    assert labels.doc_string == "class names"
    assert all(model.graph.initializers[name].const_value is tensor for name, tensor in numeric.items())
    proto = ir.serde.serialize_tensor(labels)
    assert list(proto.string_data) == LABELS and not external_data_helper.uses_external_data(proto)


def test_inline_limit_is_one_boundary_for_packing_and_for_external_data(tmp_path):
    """A tensor of exactly INLINE_LIMIT bytes stays in the graph both ways; one byte more leaves it."""
    at, over = np.zeros(pack.INLINE_LIMIT, dtype=np.uint8), np.zeros(pack.INLINE_LIMIT + 1, dtype=np.uint8)
    graph = ir.Graph([], [], nodes=[], initializers=[ir.Value(name=n, const_value=ir.Tensor(a, name=n))
                                                     for n, a in (("at", at), ("over", over))],
                     opset_imports={"": 21})  # fmt: skip
    model = ir.Model(graph, ir_version=10)

    assert set(pack.serialize(model).tensors) == {"over"}
    pack.save_external(model, tmp_path / "m.onnx", "m.data")
    proto = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    assert {t.name for t in proto.graph.initializer if external_data_helper.uses_external_data(t)} == {"over"}
