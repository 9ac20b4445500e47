"""Fuzz the command line with mutated model and data files: exit 0 or 2, never 1, a traceback or a hang.

Valid files are generated at test time (tmp_path): three tiny classifiers (skl2onnx LogisticRegression
and MLPClassifier, onnxmltools LightGBM) and a labelled data set as `.csv`, `.parquet` and `.npz`.
Each case copies one of them, mutates it with a seeded `random.Random` (bytes: bit flips, truncation,
insertion, deletion; protobuf: op types, domains, names, attributes, tensors, opsets, IR version,
graph inputs and outputs; data: cells, columns, rows, types, separators) and runs `onnxfuse inspect` or
`onnxfuse merge` in process through click's CliRunner, with `capture="fd"` so that what C++ libraries
write to stderr counts too, and Python's default warning filters as the real command line has them.

What a case must do (the contract's exit statuses):

- exit 0, or exit 2 with exactly one line on stderr, starting with `error: `;
- never exit 1, an uncaught exception, a traceback, or a run longer than CASE_SECONDS ("hang");
- merge: exit 2 leaves no OUT (or an existing OUT untouched), exit 0 a complete OUT that passes
  `onnx.checker.check_model(full_check=True)`; neither leaves a temp file or folder beside OUT.

Every case has a name (`merge-mean-proto#26`) that seeds its `random.Random`, so it is the same on
every run; a failure lists the mutation, the output, where the exception came from (the case run
again with ONNXFUSE_DEBUG=1) and the kept input file. ONNXFUSE_FUZZ_CASE=<name> runs one case alone,
ONNXFUSE_FUZZ_SCALE=<factor> runs more (or fewer) cases per test.
A run that dies outright (a crash in native code) leaves the case it was on in
`<pytest base temp>/fuzz-current-case.txt`. The counts are printed in the terminal summary.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import shutil
import signal
import sys
import time
import traceback
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxmltools
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from conftest import COLUMNS, columns_of, make_rows, save, write_csv
from onnx import AttributeProto, TensorProto
from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from onnxfuse.cli import cli

SEED = "onnxfuse-fuzz-1"
CASE_SECONDS = 20
ROWS = 300
MODELS = ("lr", "mlp", "lgbm")
FEATURES = ("a,b", "c,d")
TARGET = "y"

INSPECT_CASES = 2500  # per model and family: 3 models x 2 families
MERGE_MODEL_CASES = 600  # per family, --fusion mean
MERGE_DATA_CASES = {"csv-bytes": 250, "csv-edit": 500, "parquet-bytes": 200, "parquet-edit": 300, "npz-bytes": 100}


# ------------------------------------------------------------------------------------------------
# The valid corpus
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("fuzz_corpus"))


def build_corpus(folder: Path) -> Path:
    """lr.onnx (a,b), mlp.onnx and lgbm.onnx (c,d), all classifiers of `y`; data.csv/.parquet/.npz.

    Byte for byte the same on every run, so a case's bytes depend on its name alone: onnxmltools names
    the graph with a fresh uuid and skl2onnx orders opset imports by string hash (PYTHONHASHSEED), so
    graphs are renamed and imports sorted here; the npz is written with a fixed zip timestamp."""
    import lightgbm

    rows = make_rows(ROWS, seed=0)
    x_ab, x_cd, y = rows["x"][:, columns_of("ab")], rows["x"][:, columns_of("cd")], rows["y"]
    lr = LogisticRegression().fit(x_ab, y)
    save(
        _canonical(to_onnx(lr, initial_types=[("ab_input", FloatTensorType([None, 2]))], target_opset=18)),
        folder / "lr.onnx",
    )
    mlp = MLPClassifier(hidden_layer_sizes=(4,), max_iter=300, random_state=0).fit(x_cd, y)
    save(
        _canonical(to_onnx(mlp, initial_types=[("cd_input", FloatTensorType([None, 2]))], target_opset=18)),
        folder / "mlp.onnx",
    )
    booster = lightgbm.LGBMClassifier(n_estimators=3, num_leaves=4, verbose=-1, random_state=0).fit(x_cd, y)
    lgbm = onnxmltools.convert_lightgbm(booster, initial_types=[("cd_input", MLFloat([None, 2]))])
    lgbm.graph.name = "lgbm"
    save(_canonical(lgbm), folder / "lgbm.onnx")
    write_csv(folder / "data.csv", rows)
    table = {name: rows["x"][:, i] for i, name in enumerate(COLUMNS)} | {TARGET: rows["y"]}
    pq.write_table(pa.table(table), folder / "data.parquet")
    with zipfile.ZipFile(folder / "data.npz", "w") as archive:
        for name, array in table.items():
            with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    for name in MODELS:
        onnx.checker.check_model(str(folder / f"{name}.onnx"), full_check=True)
    return folder


def _canonical(model: onnx.ModelProto) -> onnx.ModelProto:
    opsets = sorted(model.opset_import, key=lambda o: o.domain)
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    return model


@pytest.fixture(scope="module")
def cases_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each test's folder of mutated files goes."""
    return tmp_path_factory.mktemp("fuzz_cases")


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file outside every model's folder, for a symlink that leads out of it."""
    path = tmp_path_factory.mktemp("fuzz_outside") / "secret.bin"
    path.write_bytes(b"\0" * 4096)
    return path


# ------------------------------------------------------------------------------------------------
# Byte mutations (any file)
# ------------------------------------------------------------------------------------------------


def _flip_bits(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    buffer = bytearray(data)
    flips = [(rng.randrange(len(buffer)), rng.randrange(8)) for _ in range(rng.randint(1, 8))]
    for offset, bit in flips:
        buffer[offset] ^= 1 << bit
    return bytes(buffer), f"flip bits (offset, bit) {flips}"


def _truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    length = rng.randrange(len(data))
    return data[:length], f"truncate to {length} of {len(data)} bytes"


def _insert(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    offset, extra = rng.randrange(len(data) + 1), rng.randbytes(rng.randint(1, 16))
    return data[:offset] + extra + data[offset:], f"insert {extra.hex()} at {offset}"


def _delete(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    offset = rng.randrange(len(data))
    count = rng.randint(1, min(16, len(data) - offset))
    return data[:offset] + data[offset + count :], f"delete {count} bytes at {offset}"


def _overwrite(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    offset = rng.randrange(len(data))
    fill = rng.choice([b"\xff", b"\x00", b"\x7f", b"\x80"]) * rng.randint(1, 8)
    return data[:offset] + fill + data[offset + len(fill) :], f"overwrite {fill.hex()} at {offset}"


def _duplicate_chunk(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    start = rng.randrange(len(data))
    chunk = data[start : start + rng.randint(1, 64)]
    offset = rng.randrange(len(data) + 1)
    return data[:offset] + chunk + data[offset:], f"copy {len(chunk)} bytes from {start} to {offset}"


BYTE_MUTATIONS: dict[str, Callable[[bytes, random.Random], tuple[bytes, str]]] = {
    "flip_bits": _flip_bits,
    "truncate": _truncate,
    "insert": _insert,
    "delete": _delete,
    "overwrite": _overwrite,
    "duplicate_chunk": _duplicate_chunk,
}


def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One to three byte mutations in a row."""
    steps = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if not data:
            break
        data, step = BYTE_MUTATIONS[rng.choice(sorted(BYTE_MUTATIONS))](data, rng)
        steps.append(step)
    return data, "; ".join(steps)


# ------------------------------------------------------------------------------------------------
# Protobuf mutations (models): each changes `model` in place and says what it did, or returns None
# ------------------------------------------------------------------------------------------------

ProtoMutation = Callable[[onnx.ModelProto, random.Random], "str | None"]
PROTO_MUTATIONS: dict[str, ProtoMutation] = {}

ODD_NAMES = ("", "missing_value", "features", "label", "probabilities", "prediction", "m1/label", "x" * 300, "é/:;")
OP_TYPES = ("Foo", "", "Add", "Identity", "MatMul", "Softmax", "Loop", "If", "Cast", "ZipMap", "TreeEnsembleClassifier")
DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft", "bogus.domain", "ai.onnx.preview.training", "local")


def proto_mutation(function: ProtoMutation) -> ProtoMutation:
    PROTO_MUTATIONS[function.__name__] = function
    return function


def _any_node(model: onnx.ModelProto, rng: random.Random) -> onnx.NodeProto | None:
    return rng.choice(model.graph.node) if model.graph.node else None


def _value_names(model: onnx.ModelProto) -> list[str]:
    graph = model.graph
    names = [v.name for v in graph.input] + [t.name for t in graph.initializer]
    return names + [o for n in graph.node for o in n.output]


def _tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.type == AttributeProto.TENSOR]
    return tensors


@proto_mutation
def op_type(model: onnx.ModelProto, rng: random.Random) -> str | None:
    node = _any_node(model, rng)
    if node is None:
        return None
    old, node.op_type = node.op_type, rng.choice((*OP_TYPES, node.op_type.lower(), node.op_type + "X"))
    return f"node {node.name!r} op_type {old!r} -> {node.op_type!r}"


@proto_mutation
def domain(model: onnx.ModelProto, rng: random.Random) -> str | None:
    node = _any_node(model, rng)
    if node is None:
        return None
    old, node.domain = node.domain, rng.choice(DOMAINS)
    return f"node {node.name!r} ({node.op_type}) domain {old!r} -> {node.domain!r}"


@proto_mutation
def input_name(model: onnx.ModelProto, rng: random.Random) -> str | None:
    nodes = [n for n in model.graph.node if n.input]
    if not nodes:
        return None
    node = rng.choice(nodes)
    index = rng.randrange(len(node.input))
    old, node.input[index] = node.input[index], rng.choice((*ODD_NAMES, *_value_names(model)))
    return f"node {node.name!r} input {index} {old!r} -> {node.input[index]!r}"


@proto_mutation
def input_count(model: onnx.ModelProto, rng: random.Random) -> str | None:
    node = _any_node(model, rng)
    if node is None:
        return None
    if node.input and rng.random() < 0.5:
        removed = node.input.pop(rng.randrange(len(node.input)))
        return f"node {node.name!r} loses input {removed!r}"
    extra = rng.choice(_value_names(model))
    node.input.append(extra)
    return f"node {node.name!r} gets extra input {extra!r}"


@proto_mutation
def output_name(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """Duplicate a name (another node's output, a graph input, an initializer) or rename an output."""
    node = _any_node(model, rng)
    if node is None or not node.output:
        return None
    index = rng.randrange(len(node.output))
    old, node.output[index] = node.output[index], rng.choice((*ODD_NAMES, *_value_names(model)))
    return f"node {node.name!r} output {index} {old!r} -> {node.output[index]!r}"


@proto_mutation
def node_list(model: onnx.ModelProto, rng: random.Random) -> str | None:
    nodes = model.graph.node
    if not nodes:
        return None
    choice = rng.choice(("drop", "duplicate", "reverse", "cycle"))
    index = rng.randrange(len(nodes))
    if choice == "drop":
        del nodes[index]
    elif choice == "duplicate":
        nodes.add().CopyFrom(nodes[index])
    elif choice == "reverse":
        reordered = list(reversed(nodes))
        del nodes[:]
        nodes.extend(reordered)
    elif nodes[index].input and nodes[index].output:
        nodes[index].input[0] = nodes[index].output[0]
    return f"nodes: {choice} (node {index})"


@proto_mutation
def attribute_type(model: onnx.ModelProto, rng: random.Random) -> str | None:
    attributes = [(n, a) for n in model.graph.node for a in n.attribute]
    if not attributes:
        return None
    node, attribute = rng.choice(attributes)
    old = attribute.type
    attribute.type = rng.choice([v for _, v in AttributeProto.AttributeType.items()])
    return f"node {node.name!r} attribute {attribute.name!r} type {old} -> {attribute.type}"


@proto_mutation
def attribute_value(model: onnx.ModelProto, rng: random.Random) -> str | None:
    attributes = [(n, a) for n in model.graph.node for a in n.attribute]
    if not attributes:
        return None
    node, attribute = rng.choice(attributes)
    where = f"node {node.name!r} attribute {attribute.name!r}"
    if attribute.type == AttributeProto.INTS and attribute.ints:
        if rng.random() < 0.3:
            del attribute.ints[len(attribute.ints) // 2 :]
            return f"{where}: ints cut to {len(attribute.ints)}"
        index = rng.randrange(len(attribute.ints))
        attribute.ints[index] = rng.choice((-1, 0, 99, 2**31, -(2**63), 2**63 - 1))
        return f"{where}: ints[{index}] = {attribute.ints[index]}"
    if attribute.type == AttributeProto.FLOATS and attribute.floats:
        if rng.random() < 0.3:
            del attribute.floats[len(attribute.floats) // 2 :]
            return f"{where}: floats cut to {len(attribute.floats)}"
        index = rng.randrange(len(attribute.floats))
        attribute.floats[index] = rng.choice((float("nan"), float("inf"), -1e38, 0.0))
        return f"{where}: floats[{index}] = {attribute.floats[index]}"
    if attribute.type == AttributeProto.INT:
        attribute.i = rng.choice((-1, 0, 2, 7, 8, 99, 2**40))
        return f"{where}: i = {attribute.i}"
    if attribute.type == AttributeProto.STRING:
        attribute.s = rng.choice((b"", b"bogus", b"SOFTMAX", b"\xff\xfe"))
        return f"{where}: s = {attribute.s!r}"
    if attribute.type == AttributeProto.STRINGS and attribute.strings:
        index = rng.randrange(len(attribute.strings))
        attribute.strings[index] = rng.choice((b"", b"BRANCH_XX", b"LEAF", b"\xff"))
        return f"{where}: strings[{index}] = {attribute.strings[index]!r}"
    node.attribute.remove(attribute)
    return f"{where}: removed"


@proto_mutation
def attribute_list(model: onnx.ModelProto, rng: random.Random) -> str | None:
    node = _any_node(model, rng)
    if node is None:
        return None
    if node.attribute and rng.random() < 0.5:
        removed = node.attribute.pop(rng.randrange(len(node.attribute)))
        return f"node {node.name!r} loses attribute {removed.name!r}"
    name = rng.choice(("bogus", "axis", "to", "classlabels_strings", "post_transform"))
    node.attribute.append(onnx.helper.make_attribute(name, rng.choice((1, 1.5, "x", [1, 2], ["a"]))))
    return f"node {node.name!r} gets attribute {name!r}"


@proto_mutation
def tensor_dims(model: onnx.ModelProto, rng: random.Random) -> str | None:
    tensors = _tensors(model)
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    old = list(tensor.dims)
    new = rng.choice(([], [0], [-1], [2**40], [1], [*old, 1], old[::-1], [max(1, d) * 2 for d in old], [3, 3, 3]))
    del tensor.dims[:]
    tensor.dims.extend(new)
    return f"tensor {tensor.name!r} dims {old} -> {new}"


@proto_mutation
def tensor_type(model: onnx.ModelProto, rng: random.Random) -> str | None:
    tensors = _tensors(model)
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    old = tensor.data_type
    tensor.data_type = rng.choice([v for _, v in TensorProto.DataType.items()] + [99, -1])
    return f"tensor {tensor.name!r} data_type {old} -> {tensor.data_type}"


@proto_mutation
def tensor_data(model: onnx.ModelProto, rng: random.Random) -> str | None:
    tensors = _tensors(model)
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    choice = rng.choice(("raw_short", "raw_long", "clear", "both", "nan"))
    array = onnx.numpy_helper.to_array(tensor) if tensor.data_type != TensorProto.UNDEFINED else np.zeros(1)
    if choice == "nan" and array.dtype.kind == "f":
        tensor.CopyFrom(onnx.numpy_helper.from_array(np.full_like(array, np.nan), tensor.name))
    elif choice == "clear":
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "string_data"):
            tensor.ClearField(field)
    elif choice == "both":
        tensor.float_data.extend([1.0, 2.0])
    else:
        raw = array.tobytes()
        tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
        tensor.raw_data = raw[: len(raw) // 2] if choice == "raw_short" else raw + b"\0" * 8
    return f"tensor {tensor.name!r} data: {choice}"


@proto_mutation
def tensor_external(model: onnx.ModelProto, rng: random.Random) -> str | None:
    tensors = list(model.graph.initializer)
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    location = rng.choice(
        ("weights.bin", "missing.bin", "../weights.bin", "/etc/hostname", "", "link.bin", "sub", "sub/../weights.bin")
    )
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.ClearField("int64_data")
    tensor.ClearField("int32_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = [("location", location)]
    if rng.random() < 0.7:
        entries.append(("offset", str(rng.choice((0, 8, 1000, 4096, -1, 2**62)))))
    if rng.random() < 0.7:
        entries.append(("length", str(rng.choice((0, 4, 8, 16, 32, 1024, -1)))))
    if rng.random() < 0.1:
        entries.append(("checksum", "abc"))
    for key, value in entries:
        tensor.external_data.add(key=key, value=value)
    return f"tensor {tensor.name!r} made external: {entries}"


@proto_mutation
def opset_version(model: onnx.ModelProto, rng: random.Random) -> str | None:
    if not model.opset_import:
        return None
    opset = rng.choice(model.opset_import)
    old, opset.version = opset.version, rng.choice((0, 999, 1, -1, 2**40, 7, 13, 26))
    return f"opset {opset.domain!r} {old} -> {opset.version}"


@proto_mutation
def opset_list(model: onnx.ModelProto, rng: random.Random) -> str | None:
    choice = rng.choice(("drop", "drop_all", "duplicate", "unknown_domain"))
    if choice == "drop" and model.opset_import:
        removed = model.opset_import.pop(rng.randrange(len(model.opset_import)))
        return f"opset {removed.domain!r} dropped"
    if choice == "drop_all":
        del model.opset_import[:]
        return "all opset imports dropped"
    if choice == "duplicate" and model.opset_import:
        copy = model.opset_import.add()
        copy.CopyFrom(rng.choice(model.opset_import))
        copy.version += rng.choice((0, 1))
        return f"opset {copy.domain!r} imported twice"
    model.opset_import.add(domain=rng.choice(("com.microsoft", "bogus", "ai.onnx.preview.training")), version=1)
    return "opset of an unknown domain added"


@proto_mutation
def ir_version(model: onnx.ModelProto, rng: random.Random) -> str | None:
    old, model.ir_version = model.ir_version, rng.choice((0, 1, 2, 3, 4, 7, 11, 13, 14, 15, 999, -1))
    return f"ir_version {old} -> {model.ir_version}"


@proto_mutation
def graph_outputs(model: onnx.ModelProto, rng: random.Random) -> str | None:
    outputs = model.graph.output
    choice = rng.choice(("drop_all", "drop_one", "duplicate", "rename", "missing"))
    if choice == "drop_all" or not outputs:
        del outputs[:]
        return "graph outputs dropped"
    index = rng.randrange(len(outputs))
    if choice == "drop_one":
        del outputs[index]
    elif choice == "duplicate":
        outputs.add().CopyFrom(outputs[index])
    else:
        outputs[index].name = rng.choice(ODD_NAMES) if choice == "missing" else rng.choice(_value_names(model))
    return f"graph output {index}: {choice}"


def _mutate_value_type(value: onnx.ValueInfoProto, rng: random.Random) -> str:
    choice = rng.choice(("elem_type", "rank", "dim", "clear_shape", "clear_type", "sequence", "dim_param"))
    tensor = value.type.tensor_type
    if choice == "elem_type":
        tensor.elem_type = rng.choice((0, TensorProto.DOUBLE, TensorProto.STRING, TensorProto.INT64, TensorProto.BOOL))
    elif choice == "rank":
        dims = tensor.shape.dim
        if dims and rng.random() < 0.5:
            del dims[-1]
        else:
            dims.add().dim_value = 3
    elif choice == "dim" and tensor.shape.dim:
        tensor.shape.dim[rng.randrange(len(tensor.shape.dim))].dim_value = rng.choice((0, 1, 3, 2**40))
    elif choice == "clear_shape":
        tensor.ClearField("shape")
    elif choice == "clear_type":
        value.ClearField("type")
    elif choice == "sequence":
        value.type.CopyFrom(onnx.helper.make_sequence_type_proto(onnx.helper.make_tensor_type_proto(1, None)))
    elif tensor.shape.dim:
        tensor.shape.dim[0].dim_param = rng.choice(("", "N", "batch", "M"))
    return f"{value.name!r} {choice}"


@proto_mutation
def graph_input_type(model: onnx.ModelProto, rng: random.Random) -> str | None:
    if not model.graph.input:
        return None
    return "graph input " + _mutate_value_type(rng.choice(model.graph.input), rng)


@proto_mutation
def graph_output_type(model: onnx.ModelProto, rng: random.Random) -> str | None:
    if not model.graph.output:
        return None
    return "graph output " + _mutate_value_type(rng.choice(model.graph.output), rng)


@proto_mutation
def graph_inputs(model: onnx.ModelProto, rng: random.Random) -> str | None:
    inputs = model.graph.input
    choice = rng.choice(("drop", "duplicate", "rename", "add", "shadow"))
    if choice == "drop" and inputs:
        del inputs[0]
    elif choice == "duplicate" and inputs:
        inputs.add().CopyFrom(inputs[0])
    elif choice == "rename" and inputs:
        inputs[0].name = rng.choice(ODD_NAMES)
    elif choice == "add":
        inputs.append(onnx.helper.make_tensor_value_info(rng.choice(("extra", "features")), 1, ["N", 2]))
    elif inputs:  # an initializer that shadows the graph input
        tensor = onnx.numpy_helper.from_array(np.zeros((1, 2), dtype=np.float32), inputs[0].name)
        model.graph.initializer.append(tensor)
    return f"graph inputs: {choice}"


@proto_mutation
def value_info(model: onnx.ModelProto, rng: random.Random) -> str | None:
    names = [o for n in model.graph.node for o in n.output]
    if not names:
        return None
    name = rng.choice(names)
    elem = rng.choice((TensorProto.STRING, TensorProto.DOUBLE, TensorProto.INT8))
    model.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, [7, 7, 7]))
    return f"wrong value_info for {name!r}"


@proto_mutation
def functions(model: onnx.ModelProto, rng: random.Random) -> str | None:
    node = _any_node(model, rng)
    function = onnx.helper.make_function(
        "local",
        rng.choice(("Helper", node.op_type if node else "Helper")),
        ["x"],
        ["y"],
        [onnx.helper.make_node(rng.choice(("Identity", "Foo")), ["x"], ["y"])],
        [onnx.helper.make_opsetid("", rng.choice((18, 999)))],
    )
    model.functions.append(function)
    if node is not None and rng.random() < 0.5:
        node.domain = "local"
        return f"local function added; node {node.name!r} calls it"
    return "unused local function added"


@proto_mutation
def metadata(model: onnx.ModelProto, rng: random.Random) -> str | None:
    key = rng.choice(("onnxfuse.features", "onnxfuse.sources", "", "k\nnewline", "é"))
    value = rng.choice(("not json", "[1,2", "\n\n", "x" * 10_000, '{"a": null}'))
    model.metadata_props.add(key=key, value=value)
    model.producer_name = rng.choice(("", "line\nbreak", model.producer_name))
    return f"metadata {key!r} = {value[:20]!r}..."


@proto_mutation
def sparse_initializer(model: onnx.ModelProto, rng: random.Random) -> str | None:
    names = _value_names(model)
    values = onnx.numpy_helper.from_array(np.array([1.0], dtype=np.float32), rng.choice(names) if names else "s")
    indices = onnx.numpy_helper.from_array(np.array([rng.choice((0, 5, -1))], dtype=np.int64), "")
    model.graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(values, indices, [rng.choice((2, 0))]))
    return f"sparse initializer {values.name!r}"


def mutate_proto(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One to three protobuf mutations, serialized back."""
    model = onnx.load_from_string(data)
    steps = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        name = rng.choice(sorted(PROTO_MUTATIONS))
        try:
            step = PROTO_MUTATIONS[name](model, rng)
        except (ValueError, TypeError) as exc:  # the mutation itself could not be built
            step = f"(skipped: {exc})"
        steps.append(f"{name}: {step}")
    return model.SerializeToString(), "; ".join(steps)


# ------------------------------------------------------------------------------------------------
# Data mutations
# ------------------------------------------------------------------------------------------------

FEATURE_TEXT = ("abc", "", "nan", "NaN", "inf", "-inf", "1e999", "0x10", " ", '"', "true", "—", "1,5", "null", "NA")
TARGET_TEXT = ("abc", "", "nan", "2", "1.5", "-1", "1e18", "inf", "true", " 1", "0.0", "None")


def mutate_csv_text(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One or two edits of the csv's lines, header, cells or bytes."""
    steps = []
    for _ in range(rng.choice((1, 1, 2))):
        data, step = _csv_edit(data, rng)
        steps.append(step)
    return data, "; ".join(steps)


def _csv_edit(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines()
    table = [line.split(",") for line in lines]
    choice = rng.choice(
        (
            "drop_column",
            "duplicate_column",
            "rename_column",
            "text_in_cells",
            "text_in_target",
            "one_class",
            "keep_rows",
            "ragged_row",
            "truncate_mid_line",
            "empty",
            "no_header",
            "separator",
            "blank_lines",
            "encoding",
            "quotes",
        )
    )
    width = max((len(r) for r in table), default=0)
    column = rng.randrange(width) if width else 0
    header = table[0] if table else []
    name = repr(header[column]) if column < len(header) else f"#{column}"
    what = f"{choice} (nothing to change)"
    if choice == "drop_column":
        table = [r[:column] + r[column + 1 :] for r in table]
        what = f"drop column {name}"
    elif choice == "duplicate_column":
        spot = rng.randrange(width + 1) if width else 0
        table = [r[:spot] + r[column : column + 1] + r[spot:] for r in table]
        what = f"copy column {name} to position {spot}"
    elif choice == "rename_column" and table:
        old = table[0][column % len(table[0])]
        table[0][column % len(table[0])] = rng.choice(("", "y", "a", " a", "A", "é", "a b", '"a"', "target"))
        what = f"rename column {old!r} to {table[0][column % len(table[0])]!r}"
    elif choice == "text_in_cells" and len(table) > 1:
        cells = []
        for _ in range(rng.randint(1, 5)):
            index = rng.randrange(1, len(table))
            row = table[index]
            spot = rng.randrange(len(row))
            row[spot] = rng.choice(FEATURE_TEXT)
            cells.append((index, header[spot] if spot < len(header) else spot, row[spot]))
        what = f"cells (line, column, text) {cells}"
    elif choice == "text_in_target" and len(table) > 1:
        value = rng.choice(TARGET_TEXT)
        count = rng.choice((1, 3, len(table)))
        for _ in range(count):
            table[rng.randrange(1, len(table))][-1] = value
        what = f"last column set to {value!r} in {count} random lines"
    elif choice == "one_class":
        for row in table[1:]:
            row[-1] = "1"
        what = "last column all '1'"
    elif choice == "keep_rows":
        table = table[: 1 + rng.choice((0, 1, 2, 3, 5))]
        what = f"keep header and {len(table) - 1} rows"
    elif choice == "ragged_row" and len(table) > 1:
        index = rng.randrange(1, len(table))
        row = table[index]
        if rng.random() < 0.5 and row:
            row.pop()
            what = f"line {index} loses its last field"
        else:
            row.append("0.5")
            what = f"line {index} gets an extra field"
    elif choice == "truncate_mid_line":
        cut = rng.randrange(len(lines[0]) if lines else 0, max(1, len(text)))
        return data[:cut], f"csv truncated mid-line at byte {cut}"
    elif choice == "empty":
        payload = rng.choice((b"", b"\n", b"a,b,c,d,e,y\n", b"a,b,c,d,e,y", b",\n,\n"))
        return payload, f"csv replaced by {payload!r}"
    elif choice == "no_header":
        table = table[1:]
        what = "header line removed"
    elif choice == "separator":
        separator = rng.choice((";", "\t", " "))
        rows = range(len(table)) if rng.random() < 0.5 else range(min(1, len(table)))
        out = [separator.join(r) if i in rows else ",".join(r) for i, r in enumerate(table)]
        return ("\n".join(out) + "\n").encode(), f"csv separator {separator!r} on {len(rows)} lines"
    elif choice == "blank_lines":
        spots = []
        for _ in range(rng.randint(1, 3)):
            spots.append(rng.randrange(len(table) + 1))
            table.insert(spots[-1], [""])
        what = f"blank lines at {spots}"
    elif choice == "encoding":
        prefix = rng.choice((b"\xef\xbb\xbf", b"\xff\xfe", b"\x00"))
        body = data.replace(b"\n", b"\r\n") if rng.random() < 0.5 else data
        return prefix + body, f"csv prefixed with {prefix!r}, line ends {'CRLF' if body is not data else 'LF'}"
    elif choice == "quotes" and len(table) > 1:
        index = rng.randrange(len(table))
        row = table[index]
        spot = rng.randrange(len(row))
        row[spot] = rng.choice(('"' + row[spot] + '"', '"' + row[spot], row[spot] + '""'))
        what = f"line {index} field {spot} quoted as {row[spot]!r}"
    return ("\n".join(",".join(r) for r in table) + "\n").encode(), f"csv {what}"


def mutate_parquet_table(table: pa.Table, rng: random.Random) -> tuple[pa.Table, str, dict]:
    """A structural change of the columns; returns the table, what changed, and write options."""
    names = list(table.column_names)
    index = rng.randrange(len(names))
    name = names[index]
    column = table.column(index)
    count = table.num_rows
    choice = rng.choice(
        ("type", "nulls", "drop", "duplicate", "rename", "rows", "target", "nan_inf", "row_groups", "extra")
    )
    options: dict = {}
    if choice == "type":
        kind = rng.choice(("string", "bool", "int8", "float16", "float64", "list", "struct", "null", "binary", "date"))
        column = _retyped(column, kind)
        table = table.set_column(index, name, column)
        return table, f"parquet column {name!r} as {kind}", options
    if choice == "nulls":
        mask = pa.array([rng.random() < 0.2 for _ in range(count)])
        table = table.set_column(index, name, pa.compute.if_else(mask, pa.nulls(count, column.type), column))
    elif choice == "drop":
        table = table.remove_column(index)
    elif choice == "duplicate":
        table = pa.Table.from_arrays([*table.columns, column], names=[*names, name])
    elif choice == "rename":
        names[index] = rng.choice(("", "y", "a", "A", "é", "features"))
        table = table.rename_columns(names)
    elif choice == "rows":
        table = table.slice(0, rng.choice((0, 1, 2, 3, 5)))
    elif choice == "target":
        values = rng.choice(
            (
                [0.5] * count,
                [str(v) for v in range(count)],
                list(range(count)),
                [7] * count,
                [-(2**62)] + [1] * (count - 1),
                [True, False] * (count // 2),
                ["", *["a"] * (count // 2 - 1), *["b"] * (count - count // 2)],
            )
        )
        table = table.set_column(names.index(TARGET), TARGET, pa.array(values[:count]))
        return table, f"parquet target replaced ({type(values[0]).__name__}, {len(set(values))} distinct)", options
    elif choice == "nan_inf" and pa.types.is_floating(column.type):
        values = column.to_numpy().copy()
        values[rng.randrange(count)] = rng.choice((np.nan, np.inf, -np.inf))
        table = table.set_column(index, name, pa.array(values))
    elif choice == "row_groups":
        options["row_group_size"] = rng.choice((1, 7, 64))
    elif choice == "extra":
        table = table.append_column("extra", pa.array(["x"] * count))
    return table, f"parquet {choice} (column {name!r})", options


def _retyped(column: pa.ChunkedArray, kind: str) -> pa.Array:
    values = column.to_pylist()
    if kind == "string":
        return pa.array([str(v) for v in values])
    if kind == "bool":
        return pa.array([bool(v) for v in values])
    if kind == "int8":
        return pa.array([int(v) % 100 for v in values], type=pa.int8())
    if kind == "float16":
        return pa.array(np.asarray(values, dtype=np.float16))
    if kind == "float64":
        return pa.array([float(v) for v in values], type=pa.float64())
    if kind == "list":
        return pa.array([[v, v] for v in values])
    if kind == "struct":
        return pa.array([{"v": v} for v in values])
    if kind == "null":
        return pa.nulls(len(values))
    if kind == "binary":
        return pa.array([str(v).encode() for v in values], type=pa.binary())
    return pa.array([int(abs(float(v)) * 10) for v in values], type=pa.int32()).cast(pa.date32())


def mutate_parquet(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    table = pq.read_table(io.BytesIO(data))
    table, step, options = mutate_parquet_table(table, rng)
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue(), step


# ------------------------------------------------------------------------------------------------
# Running one case
# ------------------------------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by SIGALRM when a case runs over CASE_SECONDS (BaseException: the CLI must not catch it)."""


@dataclasses.dataclass
class Outcome:
    case: str
    mutation: str
    path: Path
    command: list[str]
    exit_code: int | None
    stdout: str
    stderr: str
    problems: list[str]
    error: str = ""


TALLY: dict[str, Counter] = {}
TIMES: dict[str, float] = {}
SLOWEST: dict[str, tuple[float, str]] = {}  # test -> (seconds, case) of its slowest case


def _on_alarm(signum: int, frame: object) -> None:
    raise Hang(f"no exit within {CASE_SECONDS} s")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def invoke(args: Sequence[str], *, debug: bool = False) -> tuple[Result | None, str | None]:
    """Run the command in process under a SIGALRM bound, with Python's default warning filters.

    `debug` sets ONNXFUSE_DEBUG=1, so that an exception the CLI maps to `error: internal error` comes
    back with its traceback (used only to explain a failure)."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.showwarning = _show_warning  # as `python` does, not into pytest's record
            runner = CliRunner(capture="fd", env={"ONNXFUSE_DEBUG": "1" if debug else None})
            return runner.invoke(cli, list(args), catch_exceptions=True), None
    except Hang as exc:
        return None, f"hang: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def problems_of(result: Result | None, hang: str | None) -> list[str]:
    """What the contract forbids: anything but exit 0 or exit 2 with one `error:` line."""
    if result is None:
        return [hang or "no result"]
    found = []
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        found.append(f"uncaught {type(result.exception).__name__}: {result.exception}")
    if result.exit_code not in (0, 2):
        found.append(f"exit {result.exit_code}")
    if "Traceback" in result.stdout + result.stderr:
        found.append("traceback printed")
    if result.exit_code == 2:
        lines = result.stderr.splitlines()
        if len(lines) != 1 or not lines[0].startswith("error: "):
            found.append(f"exit 2 with {len(lines)} stderr lines (want one 'error: ' line)")
    return found


class Runner:
    """Runs the cases of one test, keeps the failing inputs, tallies exit statuses."""

    def __init__(self, test: str, cases: Path, breadcrumb: Path) -> None:
        self.test = test
        self.cases = cases
        self.breadcrumb = breadcrumb
        self.failures: list[Outcome] = []
        self.tally = TALLY.setdefault(test, Counter())
        self.start = time.perf_counter()

    def write(self, case: str, suffix: str, data: bytes) -> Path:
        path = self.cases / f"{case.replace('/', '_').replace('#', '-')}{suffix}"
        path.write_bytes(data)
        return path

    def run(
        self, case: str, mutation: str, path: Path, args: list[str], check: Callable[[Result], list[str]] | None = None
    ) -> None:
        self.breadcrumb.write_text(f"{case}\n{mutation}\nonnxfuse {' '.join(args)}\n")
        started = time.perf_counter()
        result, hang = invoke(args)
        seconds = time.perf_counter() - started
        if seconds > SLOWEST.get(self.test, (0.0, ""))[0]:
            SLOWEST[self.test] = (seconds, case)
        problems = problems_of(result, hang)
        if result is not None and check is not None:
            problems += check(result)
        code = None if result is None else result.exit_code
        self.tally[f"exit {code}" if code is not None else "hang"] += 1
        if code == 0 and result is not None and result.stderr.strip():
            self.tally["(exit 0 with stderr output)"] += 1
        if not problems:
            path.unlink(missing_ok=True)
            return
        error = ""
        if result is not None and result.exc_info and not isinstance(result.exception, SystemExit):
            error = "".join(traceback.format_exception(*result.exc_info))[-3000:]
        elif result is not None and result.exit_code == 1:  # where it came from: the same case with ONNXFUSE_DEBUG=1
            again, _ = invoke(args, debug=True)
            if again is not None and again.exc_info and not isinstance(again.exception, SystemExit):
                error = "ONNXFUSE_DEBUG=1: " + "".join(traceback.format_exception(*again.exc_info))[-2000:]
        self.failures.append(
            Outcome(
                case,
                mutation,
                path,
                args,
                code,
                result.stdout if result else "",
                result.stderr if result else "",
                problems,
                error,
            )
        )

    def finish(self) -> None:
        TIMES[self.test] = time.perf_counter() - self.start
        if not self.failures:
            return
        report = self.cases / "failures.json"
        report.write_text(json.dumps([dataclasses.asdict(f) for f in self.failures], indent=1, default=str))
        kinds = Counter(p.split(":")[0] for f in self.failures for p in f.problems)
        lines = [f"{len(self.failures)} of {cases(self.tally)} cases broke the contract: {dict(kinds)}"]
        for failure in self.failures[:25]:
            lines += [
                "",
                f"case {failure.case}: ONNXFUSE_FUZZ_CASE='{failure.case}' pytest 'tests/test_fuzz.py::{self.test}'",
                f"  mutation: {failure.mutation[:600]}",
                f"  input kept at: {failure.path}",
                f"  command: onnxfuse {' '.join(failure.command)}",
                f"  problems: {failure.problems}",
                f"  exit: {failure.exit_code}",
                f"  stdout: {failure.stdout[-500:]!r}",
                f"  stderr: {failure.stderr[-1500:]!r}",
            ]
            if failure.error:
                lines.append("  " + failure.error.replace("\n", "\n  "))
        if len(self.failures) > 25:
            lines.append(f"... and {len(self.failures) - 25} more (their inputs are kept in {self.cases})")
        lines.append(f"all failures as JSON: {report}")
        pytest.fail("\n".join(lines), pytrace=False)


def cases(tally: Counter) -> int:
    """Cases run: the exit statuses and hangs, not the notes in parentheses."""
    return sum(count for key, count in tally.items() if not key.startswith("("))


def numbers(count: int) -> range:
    """Case numbers: ONNXFUSE_FUZZ_SCALE=4 runs four times as many (the first ones stay the same)."""
    return range(round(count * float(os.environ.get("ONNXFUSE_FUZZ_SCALE", "1"))))


def selected(case: str) -> bool:
    """ONNXFUSE_FUZZ_CASE=merge-mean-proto#26 runs that one case (and its test's others are skipped)."""
    wanted = os.environ.get("ONNXFUSE_FUZZ_CASE")
    return not wanted or case == wanted


def case_rng(case: str) -> random.Random:
    return random.Random(f"{SEED}/{case}")


@pytest.fixture
def runner(
    request: pytest.FixtureRequest, cases_dir: Path, outside: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runner]:
    """The test's folder of cases, with what external-data mutations point at: `weights.bin` (1 KiB),
    `link.bin` (a symlink out of the folder) and `sub/` (a folder)."""
    breadcrumb = tmp_path_factory.getbasetemp() / "fuzz-current-case.txt"
    folder = cases_dir / request.node.name.replace("[", "-").replace("]", "")
    folder.mkdir()
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (folder / "link.bin").symlink_to(outside)
    (folder / "sub").mkdir()
    yield Runner(request.node.name, folder, breadcrumb)
    breadcrumb.unlink(missing_ok=True)


@pytest.fixture(scope="module", autouse=True)
def summary(request: pytest.FixtureRequest) -> None:
    """The counts, in pytest's terminal summary."""
    manager = request.config.pluginmanager
    if not manager.has_plugin("onnxfuse-fuzz-summary"):
        manager.register(_SummaryPlugin(), "onnxfuse-fuzz-summary")


class _SummaryPlugin:
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if TALLY:
            terminalreporter.write_sep("-", "onnxfuse fuzz summary")
            terminalreporter.write_line(summary_text())


def summary_text() -> str:
    totals: dict[str, Counter] = {"inspect": Counter(), "merge": Counter()}
    lines = []
    for test, tally in TALLY.items():
        totals["inspect" if "inspect" in test else "merge"].update(tally)
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(tally.items()))
        slowest, case = SLOWEST.get(test, (float("nan"), "-"))
        seconds = TIMES.get(test, float("nan"))
        lines.append(
            f"  {test}: {cases(tally)} cases ({statuses}) in {seconds:.1f} s, slowest {slowest:.2f} s ({case})"
        )
    heads = [
        f"fuzz {kind}: {cases(tally)} cases (" + ", ".join(f"{k}: {v}" for k, v in sorted(tally.items())) + ")"
        for kind, tally in totals.items()
        if tally
    ]
    return "\n".join(heads + lines)


# ------------------------------------------------------------------------------------------------
# The tests
# ------------------------------------------------------------------------------------------------

MUTATORS = {"bytes": mutate_bytes, "proto": mutate_proto}


@pytest.mark.parametrize("family", sorted(MUTATORS))
@pytest.mark.parametrize("model", MODELS)
def test_inspect_exits_0_or_2_when_model_is_mutated(corpus: Path, runner: Runner, model: str, family: str) -> None:
    original = (corpus / f"{model}.onnx").read_bytes()
    for number in numbers(INSPECT_CASES):
        case = f"inspect-{model}-{family}#{number}"
        if not selected(case):
            continue
        data, mutation = MUTATORS[family](original, case_rng(case))
        path = runner.write(case, ".onnx", data)
        runner.run(case, mutation, path, ["inspect", str(path)], _check_inspect)
    runner.finish()


def _check_inspect(result: Result) -> list[str]:
    if result.exit_code == 0 and not result.stdout.startswith("file: "):
        return [f"exit 0 without the description: {result.stdout[:200]!r}"]
    return []


def merge_checker(out: Path, previous: bytes | None) -> Callable[[Result], list[str]]:
    """OUT is complete and valid on exit 0, absent (or untouched) otherwise; no temp files either way."""

    def check(result: Result) -> list[str]:
        found = []
        left = sorted(p.name for p in out.parent.iterdir() if p.name != out.name)
        if left:
            found.append(f"leftovers beside OUT: {left}")
        if result.exit_code == 0:
            try:
                onnx.checker.check_model(str(out), full_check=True)
            except Exception as exc:
                found.append(f"exit 0 but OUT fails the checker: {type(exc).__name__}: {str(exc)[:300]}")
        elif previous is None and out.exists():
            found.append("failed merge left an OUT")
        elif previous is not None and (not out.exists() or out.read_bytes() != previous):
            found.append("failed merge changed the existing OUT")
        return found

    return check


def _out_for(runner: Runner, case: str, rng: random.Random) -> tuple[Path, bytes | None]:
    folder = runner.cases / (case.replace("/", "_").replace("#", "-") + ".out")
    folder.mkdir()
    out = folder / "fused.onnx"
    previous = None
    if rng.random() < 0.25:
        previous = b"the previous, good fused model"
        out.write_bytes(previous)
    return out, previous


@pytest.mark.parametrize("family", sorted(MUTATORS))
def test_merge_mean_exits_0_or_2_when_a_model_is_mutated(corpus: Path, runner: Runner, family: str) -> None:
    """`--fusion mean` on two models, one of them mutated; a third of the cases also give --data/--target."""
    for number in numbers(MERGE_MODEL_CASES):
        case = f"merge-mean-{family}#{number}"
        if not selected(case):
            continue
        rng = case_rng(case)
        pair = rng.choice((("lr", "mlp"), ("lr", "lgbm"), ("mlp", "lgbm"), ("lgbm", "lr")))
        position = rng.randrange(2)
        data, mutation = MUTATORS[family]((corpus / f"{pair[position]}.onnx").read_bytes(), rng)
        path = runner.write(case, ".onnx", data)
        models = [str(corpus / f"{name}.onnx") for name in pair]
        models[position] = str(path)
        out, previous = _out_for(runner, case, rng)
        args = ["merge", *models, "--features", FEATURES[0], "--features", FEATURES[1], "--fusion", "mean"]
        if rng.random() < 0.33:
            args += ["--data", str(corpus / "data.csv"), "--target", TARGET]
        args += ["-o", str(out)]
        mutation = f"model {position + 1} of {pair} ({family}): {mutation}"
        runner.run(case, mutation, path, args, merge_checker(out, previous))
        if not runner.failures or runner.failures[-1].case != case:
            shutil.rmtree(out.parent)
    runner.finish()


DATA_MUTATORS: dict[str, tuple[str, Callable[[bytes, random.Random], tuple[bytes, str]]]] = {
    "csv-bytes": (".csv", mutate_bytes),
    "csv-edit": (".csv", mutate_csv_text),
    "parquet-bytes": (".parquet", mutate_bytes),
    "parquet-edit": (".parquet", mutate_parquet),
    "npz-bytes": (".npz", mutate_bytes),
}


@pytest.mark.parametrize("family", sorted(DATA_MUTATORS))
def test_merge_stack_exits_0_or_2_when_data_is_mutated(corpus: Path, runner: Runner, family: str) -> None:
    """The default `--fusion stack --data DATA --target y` on lr (a,b) and mlp (c,d), DATA mutated."""
    suffix, mutator = DATA_MUTATORS[family]
    original = (corpus / f"data{suffix}").read_bytes()
    models = [str(corpus / "lr.onnx"), str(corpus / "mlp.onnx")]
    for number in numbers(MERGE_DATA_CASES[family]):
        case = f"merge-stack-{family}#{number}"
        if not selected(case):
            continue
        rng = case_rng(case)
        data, mutation = mutator(original, rng)
        path = runner.write(case, suffix, data)
        out, previous = _out_for(runner, case, rng)
        args = ["merge", *models, "--features", FEATURES[0], "--features", FEATURES[1]]
        args += ["--data", str(path), "--target", TARGET, "-o", str(out)]
        runner.run(case, mutation, path, args, merge_checker(out, previous))
        if not runner.failures or runner.failures[-1].case != case:
            shutil.rmtree(out.parent)
    runner.finish()


def test_corpus_is_the_same_on_every_run(corpus: Path, tmp_path: Path) -> None:
    again = build_corpus(tmp_path)
    for path in sorted(corpus.iterdir()):
        assert path.read_bytes() == (again / path.name).read_bytes(), f"{path.name} differs between two builds"


def test_mutators_are_deterministic(corpus: Path) -> None:
    """The same case name gives the same bytes: a failure reproduces from its name alone."""
    model = (corpus / "mlp.onnx").read_bytes()
    csv = (corpus / "data.csv").read_bytes()
    parquet = (corpus / "data.parquet").read_bytes()
    for case in ("a#1", "b#2", "c#3"):
        for mutator, data in ((mutate_bytes, model), (mutate_proto, model), (mutate_csv_text, csv)):
            assert mutator(data, case_rng(case)) == mutator(data, case_rng(case))
        first, second = mutate_parquet(parquet, case_rng(case)), mutate_parquet(parquet, case_rng(case))
        assert first[1] == second[1]
        assert pq.read_table(io.BytesIO(first[0])).equals(pq.read_table(io.BytesIO(second[0])))


def test_valid_corpus_passes(corpus: Path, tmp_path: Path) -> None:
    """Without mutations every command exits 0: the fuzz cases start from valid files."""
    for name in MODELS:
        result, hang = invoke(["inspect", str(corpus / f"{name}.onnx")])
        assert problems_of(result, hang) == [] and result is not None and result.exit_code == 0, result
    for suffix in (".csv", ".parquet", ".npz"):
        out = tmp_path / f"fused{suffix}.onnx"
        args = ["merge", str(corpus / "lr.onnx"), str(corpus / "mlp.onnx")]
        args += ["--features", FEATURES[0], "--features", FEATURES[1], "--data", str(corpus / f"data{suffix}")]
        result, hang = invoke([*args, "--target", TARGET, "-o", str(out)])
        assert result is not None and result.exit_code == 0, (hang, result and result.stderr)
    args = ["merge", str(corpus / "lr.onnx"), str(corpus / "lgbm.onnx"), "--features", FEATURES[0]]
    result, hang = invoke([*args, "--features", FEATURES[1], "--fusion", "mean", "-o", str(tmp_path / "mean.onnx")])
    assert result is not None and result.exit_code == 0, (hang, result and result.stderr)
