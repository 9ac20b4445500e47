"""Every bad input ends with exit 2, one `error:` line naming the culprit, nothing written, inputs untouched."""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_one_error_line, run_cli, save, write_csv
from onnx import helper
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier
from test_emit import mlp_with_external_data


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory, rows) -> dict[str, Path]:
    """Valid inputs every case starts from: two classifiers, one external-data regressor, a data file."""
    folder = tmp_path_factory.mktemp("good")
    x, y = rows["x"], rows["y"]
    return {
        "a": save(to_onnx(LogisticRegression().fit(x[:, :2], y), x[:1, :2]), folder / "a.onnx"),
        "b": save(to_onnx(DecisionTreeClassifier(max_depth=3).fit(x[:, 2:4], y), x[:1, :2]), folder / "b.onnx"),
        "data": write_csv(folder / "train.csv", {k: v[:400] for k, v in rows.items()}),
    }


def copy(path: Path, folder: Path) -> Path:
    target = folder / path.name
    target.write_bytes(path.read_bytes())
    return target


def graph_model(
    inputs: list[onnx.ValueInfoProto], nodes: list[onnx.NodeProto], opsets: dict[str, int]
) -> onnx.ModelProto:
    output = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 1])
    graph = helper.make_graph(nodes, "g", inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()], ir_version=8)


def tensor_input(name: str = "X") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", 1])


def nested_ifs(depth: int) -> bytes:
    """Bytes of a model whose If branches nest `depth` deep, written field by field: protobuf itself
    refuses to build such a message, and the loader must refuse to read it without crashing."""

    def field(number: int, payload: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload

    def graph_attribute(name: str, graph: bytes) -> bytes:
        return field(1, name.encode()) + _varint(20 << 3) + _varint(onnx.AttributeProto.GRAPH) + field(6, graph)

    output = tensor_input("y").SerializeToString()
    leaf = helper.make_graph([helper.make_node("Identity", ["X"], ["y"])], "leaf", [], [tensor_input("y")])
    leaf_bytes = body = leaf.SerializeToString()
    for _ in range(depth):
        node = field(1, b"cond") + field(2, b"y") + field(4, b"If")
        node += field(5, graph_attribute("then_branch", body)) + field(5, graph_attribute("else_branch", leaf_bytes))
        body = field(1, node) + field(2, b"level") + field(12, output)
    graph = body + field(11, tensor_input().SerializeToString())
    opset = helper.make_opsetid("", 17).SerializeToString()
    return _varint(1 << 3) + _varint(8) + field(8, opset) + field(7, graph)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# Each case: (builder(folder, good) -> merge arguments after "merge", culprits the message must name)
Builder = Callable[[Path, dict[str, Path]], list[object]]


def _models(first: Path, second: Path, *extra: object, data: Path | None = None, target: str | None = None):
    args: list[object] = [first, second, "--features", "a,b", "--features", "c,d", "--fusion", "mean", *extra]
    if data is not None:
        args += ["--data", data] + (["--target", target] if target else [])
    return args


def _bad_model(make: Callable[[Path], Path]) -> Builder:
    return lambda folder, good: _models(copy(good["a"], folder), make(folder))


def _truncated(folder: Path) -> Path:
    path = folder / "truncated.onnx"
    path.write_bytes((folder / "a.onnx").read_bytes()[:200])
    return path


def _text(folder: Path) -> Path:
    path = folder / "notes.onnx"
    path.write_text("not a model\n")
    return path


def _zip(folder: Path) -> Path:
    path = folder / "archive.onnx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.onnx", b"\x08\x07")
    return path


def _empty(folder: Path) -> Path:
    path = folder / "empty.onnx"
    path.write_bytes(b"")
    return path


def _sequence_input(folder: Path) -> Path:
    items = helper.make_tensor_sequence_value_info("items", onnx.TensorProto.FLOAT, None)
    nodes = [helper.make_node("SequenceAt", ["items", "zero"], ["y"])]
    model = graph_model([items], nodes, {"": 17})
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"))
    return save(model, folder / "sequence.onnx")


def _map_input(folder: Path) -> Path:
    mapping = helper.make_value_info(
        "scores",
        helper.make_map_type_proto(onnx.TensorProto.INT64, helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [])),
    )
    nodes = [helper.make_node("DictVectorizer", ["scores"], ["y"], domain="ai.onnx.ml", int64_vocabulary=[1])]
    return save(graph_model([mapping], nodes, {"": 17, "ai.onnx.ml": 1}), folder / "map.onnx")


def _custom_domain(folder: Path) -> Path:
    nodes = [helper.make_node("Fancy", ["X"], ["y"], domain="com.example")]
    return save(graph_model([tensor_input()], nodes, {"": 17, "com.example": 1}), folder / "custom.onnx")


def _opset_too_new(folder: Path) -> Path:
    nodes = [helper.make_node("Identity", ["X"], ["y"])]
    return save(graph_model([tensor_input()], nodes, {"": onnx.defs.onnx_opset_version() + 5}), folder / "future.onnx")


def _nested(folder: Path) -> Path:
    path = folder / "nested.onnx"
    path.write_bytes(nested_ifs(150))
    return path


def _oversized(folder: Path) -> Path:
    path = folder / "huge.onnx"
    with open(path, "wb") as handle:  # a sparse file: no disk used
        handle.truncate(2**31 + 10)
    return path


def _external(edit: Callable[[onnx.TensorProto, Path], None]) -> Builder:
    def build(folder: Path, good: dict[str, Path]) -> list[object]:
        path = mlp_with_external_data(folder / "ext", "ext", 1)
        model = onnx.load(str(path), load_external_data=False)
        edit(model.graph.initializer[0], folder / "ext")
        onnx.save(model, str(path))
        return [copy(good["a"], folder), path, "--features", "a,b", "--features", "c,d,e", "--fusion", "mean"]

    return build


def _set_location(value: str) -> Callable[[onnx.TensorProto, Path], None]:
    def edit(tensor: onnx.TensorProto, folder: Path) -> None:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = value

    return edit


def _truncate_data(tensor: onnx.TensorProto, folder: Path) -> None:
    data = folder / "ext.data"
    data.write_bytes(data.read_bytes()[:100])


def _delete_data(tensor: onnx.TensorProto, folder: Path) -> None:
    (folder / "ext.data").unlink()


def _symlink_out(tensor: onnx.TensorProto, folder: Path) -> None:
    outside = folder.parent / "outside.data"
    outside.write_bytes((folder / "ext.data").read_bytes())
    (folder / "link.data").symlink_to(outside)
    _set_location("link.data")(tensor, folder)


def _data(write: Callable[[Path, dict[str, Path]], Path], target: str | None = "y", *extra: object) -> Builder:
    def build(folder: Path, good: dict[str, Path]) -> list[object]:
        data = write(folder, good)
        return _models(copy(good["a"], folder), copy(good["b"], folder), *extra, data=data, target=target)

    return build


def _csv_with(change: Callable[[list[str]], list[str]], name: str) -> Callable[[Path, dict[str, Path]], Path]:
    def write(folder: Path, good: dict[str, Path]) -> Path:
        lines = good["data"].read_text().splitlines()
        path = folder / name
        path.write_text("\n".join(change(lines)) + "\n")
        return path

    return write


def _one_class(lines: list[str]) -> list[str]:
    return [lines[0]] + [",".join([*line.split(",")[:-1], "1"]) for line in lines[1:]]


def _set_target(value: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: (
        [lines[0]] + [",".join([*line.split(",")[:-1], value]) if i == 3 else line for i, line in enumerate(lines[1:])]
    )


CASES = [
    pytest.param(_bad_model(_truncated), ("model 2", "truncated.onnx"), id="truncated_onnx"),
    pytest.param(_bad_model(_text), ("model 2", "notes.onnx"), id="text_not_onnx"),
    pytest.param(_bad_model(_zip), ("model 2", "archive.onnx"), id="zip_not_onnx"),
    pytest.param(_bad_model(_empty), ("model 2", "empty.onnx"), id="empty_file"),
    pytest.param(_bad_model(_sequence_input), ("model 2", "sequence.onnx", "items"), id="sequence_input"),
    pytest.param(_bad_model(_map_input), ("model 2", "map.onnx"), id="map_input"),
    pytest.param(_bad_model(_custom_domain), ("model 2", "custom.onnx", "com.example"), id="unknown_custom_domain"),
    pytest.param(_bad_model(_opset_too_new), ("model 2", "future.onnx"), id="opset_newer_than_onnx"),
    pytest.param(_bad_model(_nested), ("model 2", "nested.onnx"), id="deeply_nested_subgraphs"),
    pytest.param(_bad_model(_oversized), ("model 2", "huge.onnx", "2 GB"), id="oversized_protobuf"),
    pytest.param(
        lambda f, g: [copy(g["a"], f), copy(g["b"], f), "--features", "a,b,c", "--features", "c,d", "--fusion", "mean"],
        ("model 1", "a,b,c"),
        id="features_wrong_width",
    ),
    pytest.param(
        lambda f, g: [
            *(copy(g["a"], f), copy(g["b"], f), "--features", "a,zz", "--features", "c,d"),
            *("--fusion", "mean", "--data", copy(g["data"], f)),
        ],
        ("zz",),
        id="unknown_column",
    ),
    pytest.param(
        _data(
            _csv_with(
                lambda lines: (
                    [lines[0]] + [line.replace(",", ",x", 1) if i == 5 else line for i, line in enumerate(lines[1:])]
                ),
                "strings.csv",
            )
        ),
        ("a",),
        id="string_column_for_features",
    ),
    pytest.param(
        lambda f, g: _models(copy(g["a"], f), copy(g["b"], f), data=f / "missing.csv", target="y"),
        ("missing.csv",),
        id="data_missing",
    ),
    pytest.param(_data(_csv_with(lambda lines: [], "empty.csv")), ("empty.csv",), id="data_empty"),
    pytest.param(
        _data(lambda f, g: (f / "garbled.csv").write_bytes(bytes(range(256)) * 20) and f / "garbled.csv"),
        ("garbled.csv",),
        id="data_garbled",
    ),
    pytest.param(_data(_csv_with(lambda lines: lines, "train.csv"), "label"), ("label",), id="target_missing"),
    pytest.param(_data(_csv_with(_set_target("nan"), "nan.csv")), ("y",), id="target_nan"),
    pytest.param(_data(_csv_with(_set_target("inf"), "inf.csv")), ("y",), id="target_inf"),
    pytest.param(
        _data(_csv_with(_one_class, "one.csv")),
        ("y", "one class"),
        id="one_class",
    ),
    pytest.param(
        lambda f, g: _models(copy(g["a"], f), copy(g["b"], f), "-o", f / "nowhere" / "fused.onnx"),
        ("nowhere",),
        id="out_folder_missing",
    ),
    pytest.param(
        lambda f, g: _models(copy(g["a"], f), copy(g["b"], f), "-o", "/sys/fused.onnx"), ("/sys",), id="out_unwritable"
    ),
    pytest.param(
        lambda f, g: _models(copy(g["a"], f), copy(g["b"], f), "-o", f / "a.onnx"), ("a.onnx",), id="out_is_an_input"
    ),
    pytest.param(_external(_delete_data), ("model 2", "ext.data"), id="external_data_missing"),
    pytest.param(_external(_truncate_data), ("model 2", "ext.data"), id="external_data_truncated"),
    pytest.param(_external(_set_location("../ext.data")), ("model 2", "../ext.data"), id="external_data_dotdot"),
    pytest.param(_external(_set_location("/etc/hostname")), ("model 2", "/etc/hostname"), id="external_data_absolute"),
    pytest.param(_external(_symlink_out), ("model 2", "link.data"), id="external_data_symlink_out"),
]


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file() and p.stat().st_size < 2**30
        else "big"
        for p in sorted(folder.rglob("*"))
        if not p.is_symlink()
    }


@pytest.mark.parametrize(("build", "culprits"), CASES)
def test_merge_exits_2_and_leaves_nothing_when_input_is_bad(
    build: Builder, culprits: tuple[str, ...], good, tmp_path, monkeypatch
):
    monkeypatch.delenv("ONNXFUSE_DEBUG", raising=False)
    folder = tmp_path / "case"
    folder.mkdir()
    args = build(folder, good)
    if "-o" not in args:
        args += ["-o", folder / "fused.onnx"]
    before = snapshot(tmp_path)

    result = run_cli("merge", *args)

    assert_one_error_line(result, *culprits)
    assert snapshot(tmp_path) == before, "inputs changed, or an output or temp file was left"
    assert not (folder / "fused.onnx").exists()
    assert not [p for p in os.listdir(folder) if p.endswith(".tmp")]
