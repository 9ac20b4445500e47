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
import functools
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
from conftest import COLUMNS, assert_one_error_line, columns_of, make_rows, ort_outputs, save
from onnx import AttributeProto, TensorProto
from onnx.reference import ReferenceEvaluator
from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

import onnxfuse
from onnxfuse.cli import cli
from onnxfuse.support import iter_nodes

pytestmark = pytest.mark.slow  # the tox "slow" environment (CI runs it): kept out of the default run

SEED = "onnxfuse-fuzz-1"
CASE_SECONDS = 20
ROWS = 300
MODELS = ("lr", "mlp", "lgbm")  # inspected
STRING_MODELS = ("onehot", "ordinal")  # read the string column `color`
FEATURES = ("a,b", "c,d")
TARGET = "y"

INSPECT_CASES = 2500  # per model and family: 3 models x 2 families
MERGE_MODEL_CASES = 600  # per family, --fusion mean
STRUCT_CASES = 200  # structure-aware edits, heads of every kind
AUTO_EVERY = 25  # of the data cases, one in this many merges with the default --meta auto
MERGE_DATA_CASES = {"csv-bytes": 250, "csv-edit": 500, "parquet-bytes": 200, "parquet-edit": 300, "npz-bytes": 100}


# ------------------------------------------------------------------------------------------------
# The valid corpus
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("fuzz_corpus"))


def build_corpus(folder: Path) -> Path:
    """lr.onnx (a,b), mlp.onnx and lgbm.onnx (c,d), all classifiers of `y`; two pipelines on the string column
    `color` (onehot.onnx: OneHotEncoder + scaler on e, LogisticRegression; ordinal.onnx: OrdinalEncoder, i.e.
    LabelEncoder, + c, DecisionTree); data.csv/.parquet (with `color`) and data.npz (numbers only).

    Byte for byte the same on every run, so a case's bytes depend on its name alone: onnxmltools and skl2onnx
    name graphs with a fresh uuid and skl2onnx orders opset imports by string hash (PYTHONHASHSEED), so
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
    save(_canonical(lgbm, "lgbm"), folder / "lgbm.onnx")
    color = _colors(rows)
    for name, model in _string_models(rows, color).items():
        save(_canonical(model, name), folder / f"{name}.onnx")
    table = {name: rows["x"][:, i] for i, name in enumerate(COLUMNS)}
    _write_csv(folder / "data.csv", table | {"color": color, TARGET: y})
    pq.write_table(pa.table(table | {"color": color, TARGET: y}), folder / "data.parquet")
    with zipfile.ZipFile(folder / "data.npz", "w") as archive:
        for name, array in (table | {TARGET: y}).items():
            with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    for name in (*MODELS, *STRING_MODELS):
        onnx.checker.check_model(str(folder / f"{name}.onnx"), full_check=True)
    return folder


def _colors(rows: dict[str, np.ndarray]) -> np.ndarray:
    """A string column that carries signal (it follows `e`), with a few cells empty as in real exports."""
    color = np.array(["red", "green", "blue"], dtype=object)[np.digitize(rows["x"][:, 4], [-0.5, 0.5])]
    color[::37] = ""
    return color


def _string_models(rows: dict[str, np.ndarray], color: np.ndarray) -> dict[str, onnx.ModelProto]:
    """skl2onnx pipelines with one `[N, 1]` input per column, `color` a string: OneHotEncoder (+ e) and
    OrdinalEncoder (+ c), as ColumnTransformer writes them."""
    import pandas as pd
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    frame = pd.DataFrame({"color": color, "c": rows["x"][:, 2], "e": rows["x"][:, 4]})
    onehot = ColumnTransformer(
        [("cat", OneHotEncoder(handle_unknown="ignore"), ["color"]), ("num", StandardScaler(), ["e"])]
    )
    ordinal = ColumnTransformer(
        [("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), ["color"]),
         ("num", "passthrough", ["c"])]
    )  # fmt: skip
    fitted = {
        "onehot": (Pipeline([("pre", onehot), ("lr", LogisticRegression())]), "e"),
        "ordinal": (Pipeline([("pre", ordinal), ("tree", DecisionTreeClassifier(max_depth=3, random_state=0))]), "c"),
    }
    models = {}
    for name, (pipeline, number) in fitted.items():
        pipeline.fit(frame[["color", number]], rows["y"])
        initial = [("color", StringTensorType([None, 1])), (number, FloatTensorType([None, 1]))]
        models[name] = convert_sklearn(pipeline, initial_types=initial, target_opset=18)
    return models


def _write_csv(path: Path, table: dict[str, np.ndarray]) -> None:
    columns = list(table)
    lines = [",".join(columns)]
    for i in range(len(table[columns[0]])):
        cells = (f"{v:.6f}" if isinstance(v, np.floating) else str(v) for v in (table[c][i] for c in columns))
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def _canonical(model: onnx.ModelProto, name: str | None = None) -> onnx.ModelProto:
    if name is not None:
        model.graph.name = name
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
# Structure-aware mutations (models): one field edited so that the model still loads and looks like
# something an exporter could write, so cases get past load and normalize into bind, splice, fuse,
# verify and emit. Each changes `model` in place and says what it did, or returns None.
# ------------------------------------------------------------------------------------------------

STRUCT_MUTATIONS: dict[str, ProtoMutation] = {}
ELEM_TYPES = {
    "float": TensorProto.FLOAT, "double": TensorProto.DOUBLE, "int64": TensorProto.INT64,
    "int32": TensorProto.INT32, "float16": TensorProto.FLOAT16, "string": TensorProto.STRING,
    "bool": TensorProto.BOOL,
}  # fmt: skip
PLAUSIBLE_NAMES = (
    "X", "input", "float_input", "a", "c", "e", "color", "y", "features", "label", "probabilities",
    "prediction", "output_label", "variable", "m1/x", "N", "é", "with space",
)  # fmt: skip
ATTRIBUTE_CHOICES: dict[str, tuple] = {
    "post_transform": (b"NONE", b"LOGISTIC", b"SOFTMAX", b"SOFTMAX_ZERO", b"PROBIT"),
    "multi_class": (0, 1),
    "to": tuple(ELEM_TYPES.values()),
    "axis": (-1, 0, 1),
    "keepdims": (0, 1),
    "select_last_index": (0, 1),
    "zeros": (0, 1),
    "allowzero": (0, 1),
}
TREE_MODES = (b"BRANCH_LEQ", b"BRANCH_LT", b"BRANCH_GTE", b"BRANCH_GT", b"BRANCH_EQ", b"BRANCH_NEQ", b"LEAF")


def struct_mutation(function: ProtoMutation) -> ProtoMutation:
    STRUCT_MUTATIONS[function.__name__] = function
    return function


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers and v.type.HasField("tensor_type")]


def _tensor_outputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return [v for v in model.graph.output if v.type.HasField("tensor_type")]


def _rename_value(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename a value everywhere it appears: graph inputs, outputs, initializers, value_info, node references."""
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        if value.name == old:
            value.name = new
    for node in iter_nodes(graph):
        for names in (node.input, node.output):
            for position, name in enumerate(names):
                if name == old:
                    names[position] = new


def _set_dim(dim: onnx.TensorShapeProto.Dimension, value: int | str) -> None:
    dim.Clear()
    if isinstance(value, int):
        dim.dim_value = value
    elif value:
        dim.dim_param = value


@struct_mutation
def batch_dim(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """The first dim of an input or output: another symbol (torch's `s0`, `batch`), none, or a fixed size."""
    values = [v for v in (*_real_inputs(model), *_tensor_outputs(model)) if v.type.tensor_type.shape.dim]
    if not values:
        return None
    value = rng.choice(values)
    choice = rng.choice(("N", "batch", "s0", "", 1, 16))
    _set_dim(value.type.tensor_type.shape.dim[0], choice)
    return f"{value.name!r} batch dim -> {choice!r}"


@struct_mutation
def input_shape(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """An input's width (another size, a symbol, unknown) or rank (`[N]`, `[N, W, 1]`, no shape)."""
    inputs = _real_inputs(model)
    if not inputs:
        return None
    value = rng.choice(inputs)
    tensor = value.type.tensor_type
    choice = rng.choice(("width", "width", "rank1", "rank3", "no_shape"))
    if choice == "width" and len(tensor.shape.dim) >= 2:
        width = rng.choice((1, 2, 3, "F", ""))
        _set_dim(tensor.shape.dim[1], width)
        return f"input {value.name!r} width -> {width!r}"
    if choice == "rank1" and len(tensor.shape.dim) >= 2:
        del tensor.shape.dim[1:]
    elif choice == "rank3":
        tensor.shape.dim.add().dim_value = 1
    elif choice == "no_shape":
        tensor.ClearField("shape")
    return f"input {value.name!r} shape: {choice}"


@struct_mutation
def input_dtype(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """An input of another type; mostly with a Cast to the old type behind it, so the graph stays valid."""
    inputs = _real_inputs(model)
    if not inputs:
        return None
    value = rng.choice(inputs)
    old = value.type.tensor_type.elem_type
    # not bool: a bool input named like a data column is fed 1-D from it (data.py's bug, reported, not ours to fix)
    name, new = rng.choice([(n, t) for n, t in ELEM_TYPES.items() if t not in (old, TensorProto.BOOL)])
    value.type.tensor_type.elem_type = new
    if rng.random() < 0.25:
        return f"input {value.name!r} type -> {name} (no Cast)"
    inner = f"{value.name}/as_before"
    for node in iter_nodes(model.graph):
        for position, used in enumerate(node.input):
            if used == value.name:
                node.input[position] = inner
    model.graph.node.insert(0, onnx.helper.make_node("Cast", [value.name], [inner], name=inner, to=old))
    return f"input {value.name!r} type -> {name}, Cast back to {old}"


@struct_mutation
def output_type(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """A tensor output declared with another element type, width or rank than its producer writes."""
    outputs = _tensor_outputs(model)
    if not outputs:
        return None
    value = rng.choice(outputs)
    tensor = value.type.tensor_type
    choice = rng.choice(("elem_type", "width", "rank", "no_shape"))
    if choice == "elem_type":
        name, tensor.elem_type = rng.choice([(n, t) for n, t in ELEM_TYPES.items() if t != tensor.elem_type])
        return f"output {value.name!r} type -> {name}"
    if choice == "width" and len(tensor.shape.dim) >= 2:
        width = rng.choice((1, 3, "C"))
        _set_dim(tensor.shape.dim[1], width)
        return f"output {value.name!r} width -> {width!r}"
    if choice == "rank":
        if len(tensor.shape.dim) >= 2:
            del tensor.shape.dim[1:]
        else:
            tensor.shape.dim.add().dim_value = 1
    elif choice == "no_shape":
        tensor.ClearField("shape")
    return f"output {value.name!r}: {choice}"


def _edited_list(values: list, rng: random.Random) -> tuple[list, str]:
    """Numbers or strings edited in range: permuted, shifted or scaled, one replaced by another present value."""
    values = list(values)
    how = rng.choice(("permute", "shift", "one", "reverse"))
    if how == "shift" and not (values and isinstance(values[0], (int, float))):
        how = "one"
    if how == "permute":
        rng.shuffle(values)
    elif how == "reverse":
        values.reverse()
    elif how == "shift" and isinstance(values[0], float):
        factor = rng.choice((0.5, 2.0, -1.0, 1.0001))
        values = [v * factor for v in values]
        how = f"scale by {factor}"
    elif how == "shift":
        values = [v + 1 for v in values]
    elif values:
        values[rng.randrange(len(values))] = rng.choice(values)
    return values, how


@struct_mutation
def attribute_in_range(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """One attribute set to a value its op accepts: a post_transform, a Cast `to`, an axis, class labels
    permuted or shifted, coefficients scaled, a category or tree mode replaced by another valid one."""
    attributes = [(n, a) for n in iter_nodes(model.graph) for a in n.attribute]
    if not attributes:
        return None
    node, attribute = rng.choice(attributes)
    where = f"node {node.name or node.op_type!r} attribute {attribute.name!r}"
    if attribute.name in ATTRIBUTE_CHOICES:
        value = rng.choice(ATTRIBUTE_CHOICES[attribute.name])
        if isinstance(value, bytes):
            attribute.s = value
        else:
            attribute.i = value
        return f"{where} = {value!r}"
    if attribute.type in (AttributeProto.FLOATS, AttributeProto.INTS) and (attribute.floats or attribute.ints):
        field = attribute.floats if attribute.type == AttributeProto.FLOATS else attribute.ints
        values, how = _edited_list(list(field), rng)
        del field[:]
        field.extend(values)
        return f"{where}: {how}"
    if attribute.type == AttributeProto.STRINGS and attribute.strings:
        values = list(attribute.strings)
        if set(values) <= set(TREE_MODES):
            values[rng.randrange(len(values))] = rng.choice(TREE_MODES)
            how = "a tree mode replaced"
        elif rng.random() < 0.3:
            values.append(b"purple")
            how = "category 'purple' added"
        else:
            values, how = _edited_list(values, rng)
        del attribute.strings[:]
        attribute.strings.extend(values)
        return f"{where}: {how}"
    if attribute.type == AttributeProto.INT:
        attribute.i = rng.choice((0, 1, attribute.i + 1))
        return f"{where} = {attribute.i}"
    if attribute.type == AttributeProto.FLOAT:
        attribute.f *= rng.choice((0.5, 2.0, -1.0))
        return f"{where} = {attribute.f}"
    return None


@struct_mutation
def initializer_values(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """An initializer's values edited in range (same type and shape): weights scaled, indices permuted."""
    tensors = [t for t in model.graph.initializer if t.data_type != TensorProto.STRING]
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    array = onnx.numpy_helper.to_array(tensor)
    values, how = _edited_list(array.ravel().tolist(), rng)
    edited = np.array(values, dtype=array.dtype).reshape(array.shape)
    tensor.CopyFrom(onnx.numpy_helper.from_array(edited, tensor.name))
    return f"initializer {tensor.name!r}: {how}"


@struct_mutation
def rename_input(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """An input renamed everywhere it is read (a name like a data column, a contract name, a prefix...)."""
    inputs = _real_inputs(model)
    if not inputs:
        return None
    old = rng.choice(inputs).name
    new = rng.choice([n for n in PLAUSIBLE_NAMES if n != old])
    _rename_value(model, old, new)
    return f"input {old!r} renamed {new!r} everywhere"


@struct_mutation
def rename_output(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """An output renamed everywhere it is written and read (possibly to another value's name)."""
    if not model.graph.output:
        return None
    old = rng.choice(model.graph.output).name
    others = [o for n in model.graph.node for o in n.output if o != old]
    new = rng.choice([n for n in (*PLAUSIBLE_NAMES, *others[:3]) if n != old])
    _rename_value(model, old, new)
    return f"output {old!r} renamed {new!r} everywhere"


@struct_mutation
def rename_one_place(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """A name changed in one place only: the graph input, the graph output, or one node's reference."""
    choice = rng.choice(("input", "output", "reference"))
    new = rng.choice(PLAUSIBLE_NAMES)
    if choice == "input" and _real_inputs(model):
        value = rng.choice(_real_inputs(model))
    elif choice == "output" and model.graph.output:
        value = rng.choice(model.graph.output)
    else:
        nodes = [n for n in model.graph.node if n.input]
        if not nodes:
            return None
        node = rng.choice(nodes)
        position = rng.randrange(len(node.input))
        old, node.input[position] = node.input[position], new
        return f"node {node.name or node.op_type!r} reads {new!r} instead of {old!r}"
    old, value.name = value.name, new
    return f"graph {choice} {old!r} renamed {new!r} there only"


@struct_mutation
def opset_in_range(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """A domain's import raised or lowered within what onnx knows (ai.onnx 7.., ai.onnx.ml 1..5)."""
    if not model.opset_import:
        return None
    opset = rng.choice(model.opset_import)
    newest = onnx.defs.onnx_opset_version() if opset.domain in ("", "ai.onnx") else 5
    lowest = 7 if opset.domain in ("", "ai.onnx") else 1
    old, opset.version = opset.version, rng.randint(lowest, newest)
    return f"opset {opset.domain or 'ai.onnx'!r} {old} -> {opset.version}"


@struct_mutation
def opset_extra(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """An import nothing uses: ai.onnx.ml where no ML op is, the `ai.onnx` alias, or another domain."""
    domain, version = rng.choice(
        (("ai.onnx.ml", 3), ("ai.onnx.ml", 1), ("ai.onnx", 18), ("ai.onnx.preview.training", 1),
         ("com.microsoft", 1), ("local.unused", 1))
    )  # fmt: skip
    model.opset_import.add(domain=domain, version=version)
    return f"unused opset import {domain!r} {version}"


@struct_mutation
def ir_in_range(model: onnx.ModelProto, rng: random.Random) -> str | None:
    old, model.ir_version = model.ir_version, rng.randint(3, onnx.IR_VERSION)
    return f"ir_version {old} -> {model.ir_version}"


@struct_mutation
def value_info_legal(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """value_info cleared, or filled in by onnx's own shape inference (both legal)."""
    if rng.random() < 0.5:
        del model.graph.value_info[:]
        return "value_info cleared"
    inferred = onnx.shape_inference.infer_shapes(model)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    return f"value_info inferred ({len(inferred.graph.value_info)} values)"


@struct_mutation
def expose_value(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """An intermediate value added as one more graph output, typed as shape inference says."""
    outputs = {o.name for o in model.graph.output}
    typed = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info if v.name not in outputs}
    if not typed:
        return None
    value = typed[rng.choice(sorted(typed))]
    model.graph.output.add().CopyFrom(value)
    return f"intermediate {value.name!r} also a graph output"


@struct_mutation
def add_input(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """A graph input no node reads, named like a data column, a contract name or something new."""
    name = rng.choice(("extra", "a", "d", "e", "color", "features", "y"))
    elem, shape = rng.choice(
        ((TensorProto.FLOAT, ["N", 1]), (TensorProto.STRING, ["N", 1]), (TensorProto.FLOAT, ["N", 3]))
    )
    if name in {v.name for v in model.graph.input}:
        return None
    model.graph.input.append(onnx.helper.make_tensor_value_info(name, elem, shape))
    return f"unused input {name!r} ({elem}, {shape})"


@struct_mutation
def identity_before_output(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """The producer of an output writes an inner value, and an Identity copies it to the output."""
    produced = {o: n for n in model.graph.node for o in n.output}
    outputs = [o.name for o in model.graph.output if o.name in produced]
    if not outputs:
        return None
    name = rng.choice(outputs)
    inner = f"{name}/before_identity"
    node = produced[name]
    node.output[list(node.output).index(name)] = inner
    for reader in model.graph.node:
        for position, used in enumerate(reader.input):
            if used == name:
                reader.input[position] = inner
    model.graph.node.append(onnx.helper.make_node("Identity", [inner], [name], name=f"{name}/identity"))
    return f"Identity before output {name!r}"


@struct_mutation
def split_input(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """A `[N, W]` input split into W `[N, 1]` inputs (named like data columns, as skl2onnx writes one input per
    column) and concatenated back into the old value."""
    inputs = [v for v in _real_inputs(model) if len(v.type.tensor_type.shape.dim) == 2]
    widths = [v.type.tensor_type.shape.dim[1].dim_value for v in inputs]
    candidates = [(v, w) for v, w in zip(inputs, widths) if w >= 2]
    if not candidates:
        return None
    value, width = rng.choice(candidates)
    names = rng.choice((list(COLUMNS[:width]), list(COLUMNS[-width:]), [f"{value.name}_{i}" for i in range(width)]))
    taken = {v.name for v in model.graph.input} | {o for n in model.graph.node for o in n.output}
    if taken & set(names):
        return None
    elem = value.type.tensor_type.elem_type
    position = list(model.graph.input).index(value)
    model.graph.input.remove(value)
    for offset, name in enumerate(names):
        model.graph.input.insert(position + offset, onnx.helper.make_tensor_value_info(name, elem, ["N", 1]))
    model.graph.node.insert(0, onnx.helper.make_node("Concat", names, [value.name], name=f"{value.name}/join", axis=1))
    return f"input {value.name!r} split into {names}"


@struct_mutation
def if_before_output(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """An output computed through an If whose two branches read the value from the outer scope."""
    produced = {o: n for n in model.graph.node for o in n.output}
    outputs = [o for o in model.graph.output if o.name in produced and o.type.HasField("tensor_type")]
    if not outputs:
        return None
    output = rng.choice(outputs)
    inner = f"{output.name}/before_if"
    node = produced[output.name]
    node.output[list(node.output).index(output.name)] = inner
    for reader in model.graph.node:
        for position, used in enumerate(reader.input):
            if used == output.name:
                reader.input[position] = inner
    branch_output = onnx.ValueInfoProto()
    branch_output.CopyFrom(output)
    branches = {}
    for branch in ("then", "else"):
        branch_output.name = f"{output.name}/{branch}"
        body = [onnx.helper.make_node("Identity", [inner], [branch_output.name])]
        branches[f"{branch}_branch"] = onnx.helper.make_graph(body, branch, [], [branch_output])
    condition = f"{output.name}/condition"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(rng.random() < 0.5), condition))
    model.graph.node.append(onnx.helper.make_node("If", [condition], [output.name], name=f"{condition}/if", **branches))
    return f"If before output {output.name!r}"


@struct_mutation
def local_function(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """One node moved into a local function (domain `local`), called where the node was."""
    nodes = [n for n in model.graph.node if n.domain in ("", "ai.onnx.ml")]
    if not nodes:
        return None
    node = rng.choice(nodes)
    name = rng.choice(("Wrapped", node.op_type))
    return f"node {node.name or node.op_type!r} ({node.op_type}) moved into local function {_wrap(model, node, name)!r}"


def _wrap(model: onnx.ModelProto, node: onnx.NodeProto, name: str) -> str:
    """Move `node` into a local function `local:name` with the model's import of the node's domain."""
    opsets = [o for o in model.opset_import if o.domain == node.domain] or [onnx.helper.make_opsetid(node.domain, 1)]
    body = onnx.NodeProto()
    body.CopyFrom(node)
    inputs = [f"x{i}" for i in range(len(node.input))]
    outputs = [f"y{i}" for i in range(len(node.output))]
    del body.input[:], body.output[:]
    body.input.extend(x if name else "" for x, name in zip(inputs, node.input))
    body.output.extend(outputs)
    model.functions.append(onnx.helper.make_function("local", name, inputs, outputs, [body], opsets))
    del node.attribute[:]
    node.op_type, node.domain = name, "local"
    if "local" not in {o.domain for o in model.opset_import}:
        model.opset_import.add(domain="local", version=1)
    return name


@struct_mutation
def class_labels(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """Every class-label attribute (classifier and ZipMap) changed the same way: reversed or shifted."""
    keys = ("classlabels_int64s", "classlabels_ints")
    attributes = [a for n in iter_nodes(model.graph) for a in n.attribute if a.name in keys]
    if not attributes:
        return None
    how = rng.choice(("reversed", "shifted", "one more"))
    for attribute in attributes:
        values = list(attribute.ints)
        values = values[::-1] if how == "reversed" else [v + 1 for v in values] if how == "shifted" else values
        del attribute.ints[:]
        attribute.ints.extend(values)
    return f"class labels {how} in {len(attributes)} attributes"


@struct_mutation
def names_and_docs(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """Graph and node names, doc strings, producer and metadata: what no stage should depend on."""
    choice = rng.choice(("graph_name", "node_names", "duplicate_node_names", "doc", "metadata"))
    if choice == "graph_name":
        model.graph.name = rng.choice(("", "m1", "onnxfuse", "fusion/head"))
    elif choice in ("node_names", "duplicate_node_names"):
        for node in model.graph.node:
            node.name = "" if choice == "node_names" else "node"
    elif choice == "doc":
        model.doc_string = model.graph.doc_string = rng.choice(("", "é\nline", "x" * 1000))
        model.producer_name, model.producer_version = rng.choice((("pytorch", "2.13.0"), ("", ""), ("skl2onnx", "9")))
    else:
        key = rng.choice(("onnxfuse.features", "onnxfuse.sources", "onnxfuse.digest", "author"))
        model.metadata_props.add(key=key, value=rng.choice(('["a","b"]', "sha256:" + "0" * 64, "{}")))
    return choice


def mutate_structure(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One structure-aware edit (now and then two), serialized back."""
    model = onnx.load_from_string(data)
    steps = []
    for _ in range(rng.choice((1, 1, 1, 2))):
        name = rng.choice(sorted(STRUCT_MUTATIONS))
        steps.append(f"{name}: {STRUCT_MUTATIONS[name](model, rng)}")
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
    values = [_as_number(v) for v in column.to_pylist()] if kind not in ("string", "binary") else column.to_pylist()
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


def _as_number(value: object) -> float:
    """A cell as a number for the numeric retypings; the string column's categories by their length."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float(len(str(value)))


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
    """What the contract forbids: anything but exit 0 or exit 2 with one `error:` line (after `warning:` lines)."""
    if result is None:
        return [hang or "no result"]
    found = []
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        found.append(f"uncaught {type(result.exception).__name__}: {result.exception}")
    if result.exit_code not in (0, 2):
        found.append(f"exit {result.exit_code}")
    if "Traceback" in result.stdout + result.stderr:
        found.append("traceback printed")
    if result.exit_code == 2:  # one-line warnings (e.g. the hold-out's caveats) may come before it
        lines = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
        if len(lines) != 1 or not lines[0].startswith("error: "):
            found.append(f"exit 2 with {len(lines)} stderr lines besides warnings (want one 'error: ' line)")
    return found


STAGES = ("load_model", "normalize", "bind", "splice", "fuse", "optimize", "verify", "emit")
REACHED: dict[str, Counter] = {}  # case family (`merge-struct`) -> stage -> cases that entered it; "cases": all
BUG_TYPES = (AttributeError, LookupError, NameError, TypeError, AssertionError)
PACKAGE = Path(onnxfuse.__file__).resolve().parent


def internal_origin(exc: BaseException | None) -> str | None:
    """Where an exception that signals a bug in onnxfuse's own code was raised, e.g. `KeyError: 'x' at bind.py:88`:
    a KeyError, AttributeError, TypeError... whose innermost frame is in the package, on its own or as the cause
    (or context) of the exception that left the stage. Library code raising them (onnx's reference evaluator,
    onnx-ir on a broken graph) is not ours."""
    for _ in range(8):
        if exc is None:
            return None
        if isinstance(exc, BUG_TYPES):
            frames = traceback.extract_tb(exc.__traceback__)
            if frames and Path(frames[-1].filename).resolve().is_relative_to(PACKAGE):
                return f"{type(exc).__name__}: {exc} at {Path(frames[-1].filename).name}:{frames[-1].lineno}"
        exc = exc.__cause__ or exc.__context__
    return None


class StageWatch:
    """Wrappers around the stage functions onnxfuse.pipeline calls (each calls the real one): which stages a
    case entered, and every exception signalling an internal bug that left a stage, whatever the exit became."""

    def __init__(self) -> None:
        self.entered: set[str] = set()
        self.internal: list[str] = []

    def reset(self) -> None:
        self.entered, self.internal = set(), []

    def wrap(self, name: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def watched(*args, **kwargs):
            self.entered.add(name)
            try:
                return function(*args, **kwargs)
            except BaseException as exc:
                if origin := internal_origin(exc):
                    self.internal.append(f"{name}: {origin}")
                raise

        return watched


@pytest.fixture
def stage_watch(monkeypatch: pytest.MonkeyPatch) -> StageWatch:
    """Every stage name of onnxfuse.pipeline wrapped for this test (a missing name fails the test)."""
    import onnxfuse.pipeline as pipeline

    watch = StageWatch()
    for name in STAGES:
        monkeypatch.setattr(pipeline, name, watch.wrap(name, getattr(pipeline, name)))
    return watch


class Runner:
    """Runs the cases of one test, keeps the failing inputs, tallies exit statuses and the stages reached."""

    def __init__(self, test: str, cases: Path, breadcrumb: Path, watch: StageWatch | None = None) -> None:
        self.test = test
        self.cases = cases
        self.breadcrumb = breadcrumb
        self.watch = watch or StageWatch()
        self.failures: list[Outcome] = []
        self.tally = TALLY.setdefault(test, Counter())
        self.start = time.perf_counter()

    def write(self, case: str, suffix: str, data: bytes) -> Path:
        path = self.cases / f"{case.replace('/', '_').replace('#', '-')}{suffix}"
        path.write_bytes(data)
        return path

    def run(
        self,
        case: str,
        mutation: str,
        path: Path,
        args: list[str],
        check: Callable[[Result], list[str]] | None = None,
        *,
        explain_exit_2: bool = False,
    ) -> None:
        """One case; `explain_exit_2` runs an exit-2 case again with ONNXFUSE_DEBUG=1 to see the exception behind
        its `error:` line, which must not come from a bug in onnxfuse (only where cases are few and costly)."""
        self.breadcrumb.write_text(f"{case}\n{mutation}\nonnxfuse {' '.join(args)}\n")
        started = time.perf_counter()
        self.watch.reset()
        result, hang = invoke(args)
        seconds = time.perf_counter() - started
        if seconds > SLOWEST.get(self.test, (0.0, ""))[0]:
            SLOWEST[self.test] = (seconds, case)
        problems = problems_of(result, hang)
        if result is not None and check is not None:
            problems += check(result)
        code = None if result is None else result.exit_code
        if self.watch.internal and code != 1:
            problems.append(f"exit {code} hides an internal error: {self.watch.internal[0]}")
        elif code == 2 and explain_exit_2:
            again, _ = invoke(args, debug=True)
            if again is not None and (origin := internal_origin(again.exception)):
                problems.append(f"exit 2 hides an internal error: {origin}")
        if args[0] == "merge":
            reached = REACHED.setdefault(case.split("#")[0], Counter())
            reached.update(["cases", *self.watch.entered])
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
    request: pytest.FixtureRequest,
    cases_dir: Path,
    outside: Path,
    tmp_path_factory: pytest.TempPathFactory,
    stage_watch: StageWatch,
) -> Iterator[Runner]:
    """The test's folder of cases, with what external-data mutations point at: `weights.bin` (1 KiB),
    `link.bin` (a symlink out of the folder) and `sub/` (a folder)."""
    breadcrumb = tmp_path_factory.getbasetemp() / "fuzz-current-case.txt"
    folder = cases_dir / request.node.name.replace("[", "-").replace("]", "")
    folder.mkdir()
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (folder / "link.bin").symlink_to(outside)
    (folder / "sub").mkdir()
    yield Runner(request.node.name, folder, breadcrumb, stage_watch)
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
    if REACHED:
        lines += stage_table()
    heads = [
        f"fuzz {kind}: {cases(tally)} cases (" + ", ".join(f"{k}: {v}" for k, v in sorted(tally.items())) + ")"
        for kind, tally in totals.items()
        if tally
    ]
    return "\n".join(heads + lines)


def stage_table() -> list[str]:
    """Per merge family, how many cases entered each stage function of onnxfuse.pipeline."""
    width = max(len(family) for family in REACHED)
    lines = ["  stages reached (cases that entered each stage of onnxfuse.pipeline):"]
    lines.append(f"    {'cases':<{width}} {'all':>5} " + " ".join(f"{stage:>10}" for stage in STAGES))
    for family, reached in sorted(REACHED.items()):
        counts = " ".join(f"{reached[stage]:>10}" for stage in STAGES)
        lines.append(f"    {family:<{width}} {reached['cases']:>5} {counts}")
    return lines


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


MODEL_FEATURES = {"lr": "a,b", "mlp": "c,d", "lgbm": "c,d", "onehot": "-", "ordinal": "-"}  # `-`: by name
STRUCT_SETS = (
    ("lr", "mlp"), ("lr", "lgbm"), ("mlp", "lgbm"), ("onehot", "mlp"), ("lr", "onehot"), ("ordinal", "onehot"),
    ("onehot", "lgbm"), ("ordinal", "lr"), ("lr", "onehot", "lgbm"),
)  # fmt: skip
STRUCT_MODES = {  # how the merge is asked for, and how often
    "mean": ["--fusion", "mean"],
    "mean-data": ["--fusion", "mean", "--data", "{data}", "--target", TARGET],
    "stack": ["--meta", "linear", "--data", "{data}", "--target", TARGET],
    "vote": ["--fusion", "vote"],
    "gate": ["--fusion", "gate", "--data", "{data}", "--target", TARGET],
}
STRUCT_WEIGHTS = {"mean": 10, "mean-data": 3, "stack": 3, "vote": 3, "gate": 1}
STRUCT_FLAGS = (  # one of them in 40 % of the cases
    ["--keep-model-outputs"], ["--no-optimize"], ["--features-dtype", "float64"], ["--passthrough"],
    ["--target-opset", "18"], ["--target-opset", "23"], ["--max-ir-version", "9"],
)  # fmt: skip
REACH_VERIFY = 0.30  # measured ~0.5 of merge-struct cases enter verify; a regression that stops them early fails


def test_merge_exits_0_or_2_when_a_model_is_edited_in_structure(corpus: Path, runner: Runner) -> None:
    """Two or three sources (string inputs among them), one edited by a structure-aware mutation, merged with
    a seeded choice of heads; then a share of the cases must have reached verify."""
    for number in numbers(STRUCT_CASES):
        case = f"merge-struct#{number}"
        if not selected(case):
            continue
        rng = case_rng(case)
        names = rng.choice(STRUCT_SETS)
        position = rng.randrange(len(names))
        data, mutation = mutate_structure((corpus / f"{names[position]}.onnx").read_bytes(), rng)
        path = runner.write(case, ".onnx", data)
        models = [str(path if i == position else corpus / f"{name}.onnx") for i, name in enumerate(names)]
        mode = rng.choices(sorted(STRUCT_WEIGHTS), [STRUCT_WEIGHTS[m] for m in sorted(STRUCT_WEIGHTS)])[0]
        out, previous = _out_for(runner, case, rng)
        args = ["merge", *models, *(f for name in names for f in ("--features", MODEL_FEATURES[name]))]
        args += [a.format(data=corpus / rng.choice(("data.csv", "data.parquet"))) for a in STRUCT_MODES[mode]]
        args += [*(rng.choice(STRUCT_FLAGS) if rng.random() < 0.4 else []), "-o", str(out)]
        mutation = f"model {position + 1} of {names} ({mode}): {mutation}"
        runner.run(case, mutation, path, args, merge_checker(out, previous), explain_exit_2=True)
        if not runner.failures or runner.failures[-1].case != case:
            shutil.rmtree(out.parent)
    runner.finish()
    reached = REACHED.get("merge-struct", Counter())
    if reached["cases"] >= 50:
        share = {stage: reached[stage] / reached["cases"] for stage in ("splice", "verify")}
        assert share["verify"] >= REACH_VERIFY and share["splice"] >= REACH_VERIFY, (share, stage_table())


DATA_MUTATORS: dict[str, tuple[str, Callable[[bytes, random.Random], tuple[bytes, str]]]] = {
    "csv-bytes": (".csv", mutate_bytes),
    "csv-edit": (".csv", mutate_csv_text),
    "parquet-bytes": (".parquet", mutate_bytes),
    "parquet-edit": (".parquet", mutate_parquet),
    "npz-bytes": (".npz", mutate_bytes),
}


@pytest.mark.parametrize("family", sorted(DATA_MUTATORS))
def test_merge_stack_exits_0_or_2_when_data_is_mutated(corpus: Path, runner: Runner, family: str) -> None:
    """The default `--fusion stack --data DATA --target y` on lr (a,b) and mlp (c,d), DATA mutated; a fifth of
    the csv and parquet cases merge onehot (the string column `color` and e) with mlp instead. One case in
    AUTO_EVERY keeps the default `--meta auto` (a dozen heads cross-validated: seconds a case); the others
    ask for `--meta linear`, so the 1,350 cases fuzz the data path in minutes."""
    suffix, mutator = DATA_MUTATORS[family]
    original = (corpus / f"data{suffix}").read_bytes()
    for number in numbers(MERGE_DATA_CASES[family]):
        case = f"merge-stack-{family}#{number}"
        if not selected(case):
            continue
        rng = case_rng(case)
        data, mutation = mutator(original, rng)
        path = runner.write(case, suffix, data)
        out, previous = _out_for(runner, case, rng)
        strings = suffix != ".npz" and case_rng(f"{case}/models").random() < 0.2  # npz holds no strings
        names = ("onehot", "mlp") if strings else ("lr", "mlp")
        args = ["merge", *(str(corpus / f"{name}.onnx") for name in names)]
        args += [f for name in names for f in ("--features", MODEL_FEATURES[name])]
        args += ["--data", str(path), "--target", TARGET, "-o", str(out)]
        if number % AUTO_EVERY:
            args += ["--meta", "linear"]
        mutation = f"{names}: {mutation}"
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
        mutators = ((mutate_bytes, model), (mutate_proto, model), (mutate_structure, model), (mutate_csv_text, csv))
        for mutator, data in mutators:
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


def test_structure_edits_keep_most_models_valid(corpus: Path) -> None:
    """The structure-aware edits are plausible: most edited models still pass onnx's full checker."""
    valid = 0
    for number in range(200):
        rng = case_rng(f"struct-valid#{number}")
        name = rng.choice((*MODELS, *STRING_MODELS))
        data, _ = mutate_structure((corpus / f"{name}.onnx").read_bytes(), rng)
        try:
            onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
            valid += 1
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
            pass
    assert valid >= 100, f"only {valid} of 200 edited models pass the checker"


def _internal_key_error(*args, **kwargs):
    """A KeyError raised by onnxfuse's own code: verify.feeds_of_source asked for a feed that is not there."""
    from onnxfuse.bind import InputBinding
    from onnxfuse.verify import feeds_of_source

    feeds_of_source([InputBinding("not_fed", TensorProto.FLOAT, 2)], None, {})


def _merge_args(corpus: Path, out: Path) -> list[str]:
    args = ["merge", str(corpus / "lr.onnx"), str(corpus / "onehot.onnx"), "--features", "a,b", "--features", "-"]
    return [*args, "--meta", "linear", "--data", str(corpus / "data.csv"), "--target", TARGET, "-o", str(out)]


@pytest.mark.parametrize("stage", STAGES)
def test_merge_exits_1_when_a_stage_raises_an_internal_error(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """A KeyError from onnxfuse's own code in any stage is an internal error (exit 1, nothing written), even when
    a source looks broken on its own: the check that blames broken sources must not turn our bugs into exit 2."""
    import onnxfuse.pipeline as pipeline
    import onnxfuse.verify as verify

    monkeypatch.setattr(pipeline, stage, _internal_key_error)
    monkeypatch.setattr(verify, "_broken_alone", lambda model: "it looks broken")
    out = tmp_path / "fused.onnx"
    result, hang = invoke(_merge_args(corpus, out))
    assert result is not None and result.exit_code == 1, (hang, result and result.stderr)
    assert result.stderr.splitlines()[-1].startswith("error: internal error: KeyError: 'not_fed'"), result.stderr
    assert not out.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("seen_by", ["stage_watch", "debug_rerun"])
def test_runner_fails_a_case_whose_exit_2_hides_an_internal_error(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seen_by: str
) -> None:
    """The fuzz check itself: code that turns our own KeyError into a user error (exit 2) fails its case, seen
    by the stage wrappers or, where no wrapper is (a helper the pipeline calls), by the ONNXFUSE_DEBUG=1 re-run."""
    import onnxfuse.pipeline as pipeline
    from onnxfuse.errors import OnnxfuseError

    def hiding(*args, **kwargs):
        try:
            _internal_key_error()
        except KeyError as exc:
            raise OnnxfuseError("the data looks wrong") from exc

    watch = StageWatch()
    monkeypatch.setattr(pipeline, "splice", watch.wrap("splice", hiding) if seen_by == "stage_watch" else hiding)
    runner = Runner("selfcheck", tmp_path, tmp_path / "breadcrumb.txt", watch)
    out = tmp_path / "out" / "fused.onnx"
    out.parent.mkdir()
    args = _merge_args(corpus, out)
    try:
        runner.run("selfcheck#0", "-", tmp_path / "-.onnx", args, merge_checker(out, None), explain_exit_2=True)
    finally:
        TALLY.pop("selfcheck", None)
        REACHED.pop("selfcheck", None)
    assert [f.exit_code for f in runner.failures] == [2]
    problems = runner.failures[0].problems
    assert len(problems) == 1, problems
    where = "splice: " if seen_by == "stage_watch" else ""
    assert problems[0].startswith(f"exit 2 hides an internal error: {where}KeyError: 'not_fed' at verify.py:"), problems


def _edited_copy(corpus: Path, name: str, folder: Path, edit: Callable[[onnx.ModelProto], None]) -> Path:
    model = onnx.load(str(corpus / f"{name}.onnx"))
    edit(model)
    return save(model, folder / f"{name}_edited.onnx")


def _double_e(model: onnx.ModelProto) -> None:
    """onehot's `e` declared double: its Scaler accepts it, onnxruntime writes float, the reference evaluator double."""
    next(v for v in model.graph.input if v.name == "e").type.tensor_type.elem_type = TensorProto.DOUBLE


def _reversed_tree_ids(model: onnx.ModelProto) -> None:
    """ordinal's tree with its node ids reversed: onnxruntime runs it, the reference evaluator raises KeyError."""
    attribute = next(a for n in model.graph.node for a in n.attribute if a.name == "nodes_nodeids")
    ids = list(attribute.ints)[::-1]
    del attribute.ints[:]
    attribute.ints.extend(ids)


@pytest.mark.parametrize(("name", "edit"), [("onehot", _double_e), ("ordinal", _reversed_tree_ids)])
def test_merge_warns_and_writes_when_the_reference_evaluator_cannot_reproduce_a_source(
    corpus: Path, tmp_path: Path, name: str, edit: Callable[[onnx.ModelProto], None]
) -> None:
    """Found by merge-struct: a source that onnxruntime runs but onnx's reference evaluator types otherwise or
    cannot run made verify fail (exit 1). Its outputs are now fed from onnxruntime for the cross-runtime check."""
    path = _edited_copy(corpus, name, tmp_path, edit)
    out = tmp_path / "fused.onnx"
    args = ["merge", str(corpus / "lr.onnx"), str(path), "--features", "a,b", "--features", "-", "--fusion", "mean"]
    result, hang = invoke([*args, "--keep-model-outputs", "-o", str(out)])
    assert result is not None and result.exit_code == 0, (hang, result and result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: model 2 ({path.name}): onnx's reference evaluator"), lines
    onnx.checker.check_model(str(out), full_check=True)
    rng = np.random.default_rng(0)
    dtype = np.float64 if name == "onehot" else np.float32  # a double source input makes `features` float64
    features = rng.normal(size=(50, 3)).astype(dtype)  # a, b and the model's own number column
    color = rng.choice(np.array(["red", "green", "blue", ""], dtype=object), size=(50, 1))
    fused = ort_outputs(out, {"features": features, "color": color})
    expected = ort_outputs(path, {"color": color, "e" if name == "onehot" else "c": features[:, 2:]})
    np.testing.assert_array_equal(fused["m2/output_label"], expected["output_label"])
    probabilities = np.array([[row[k] for k in (0, 1)] for row in expected["output_probability"]], dtype=np.float32)
    np.testing.assert_allclose(fused["m2/output_probability"], probabilities, rtol=1e-6, atol=1e-7)


def _reshape_fails_on_every_batch(model: onnx.ModelProto) -> None:
    """onehot's Reshape to `[-1, 3]` made `[3, -1]`: onnxruntime loads it and fails on any batch but 3 rows' worth."""
    tensor = next(t for t in model.graph.initializer if t.name == "shape_tensor")
    tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor)[::-1].copy(), tensor.name))


def test_merge_names_the_source_when_it_fails_at_run_time_on_every_batch(corpus: Path, tmp_path: Path) -> None:
    """Found by merge-struct: scoring the spliced graph on --data failed in onnxruntime and, the source being
    loadable and well typed, the failure was called internal (exit 1). Each source is now also run alone."""
    path = _edited_copy(corpus, "onehot", tmp_path, _reshape_fails_on_every_batch)
    onnx.checker.check_model(str(path), full_check=True)
    out = tmp_path / "fused.onnx"
    args = _merge_args(corpus, out)
    args[2] = str(path)  # merge lr.onnx <this> ...
    result, hang = invoke(args)
    assert result is not None, hang
    assert_one_error_line(result, f"model 2 ({path.name})", "broken on its own")
    assert not out.exists()


@pytest.mark.parametrize("target_opset", [None, 18])
def test_merge_inlines_a_local_function_whose_ml_import_the_model_raises(
    corpus: Path, tmp_path: Path, target_opset: int | None
) -> None:
    """Found by merge-struct: lr's LinearClassifier in a local function importing ai.onnx.ml 1, merged at the
    model's own ai.onnx 18 (no conversion, so normalize kept the function), failed in splice's inliner ('domain
    ai.onnx.ml has version 3 in the model but version 1 in the function'): exit 1. Normalize now inlines always."""

    def edit(model: onnx.ModelProto) -> None:
        _wrap(model, next(n for n in model.graph.node if n.op_type == "LinearClassifier"), "LinearClassifier")

    path = _edited_copy(corpus, "lr", tmp_path, edit)
    onnx.checker.check_model(str(path), full_check=True)
    out = tmp_path / "fused.onnx"
    args = ["merge", str(path), str(corpus / "mlp.onnx"), "--features", "a,b", "--features", "c,d", "--fusion", "mean"]
    args += ["--target-opset", str(target_opset)] if target_opset else []
    result, hang = invoke([*args, "--keep-model-outputs", "-o", str(out)])
    assert result is not None and result.exit_code == 0, (hang, result and result.stderr)
    model = onnx.load(str(out))
    assert not model.functions and {o.domain for o in model.opset_import} == {"", "ai.onnx.ml"}
    onnx.checker.check_model(model, full_check=True)
    features = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    fused = ort_outputs(out, {"features": features})
    names = [o.name for o in model.graph.output]
    reference = dict(zip(names, ReferenceEvaluator(model).run(None, {"features": features})))
    expected = ort_outputs(corpus / "lr.onnx", {"ab_input": features[:, :2]})
    np.testing.assert_array_equal(fused["m1/output_label"], expected["output_label"])
    probabilities = np.array([[row[k] for k in (0, 1)] for row in expected["output_probability"]], dtype=np.float32)
    for outputs in (fused, reference):
        np.testing.assert_allclose(outputs["m1/output_probability"], probabilities, rtol=1e-5, atol=1e-6)


FUNCTION_OF_ITS_OWN_OPSET = """
<ir_version: 8, opset_import: ["" : 18, "local" : 1]>
relu (float[N, 1] X) => (float[N, 1] Y) { Y = local.F (X) }
<domain: "local", opset_import: ["" : 14]>
F (x) => (y) { y = Relu (x) }
"""
PLAIN = """
<ir_version: 8, opset_import: ["" : 18]>
negate (float[N, 1] X) => (float[N, 1] Y) { Y = Neg (X) }
"""


@pytest.mark.parametrize("target_opset", [None, 18])
def test_merge_converts_a_local_function_that_imports_another_ai_onnx_than_its_model(
    tmp_path: Path, target_opset: int | None
) -> None:
    """A local function may import its own ai.onnx (14 in a model of 18; onnx's checker accepts it). Splice's
    inliner refused it (exit 1); normalize now inlines it, its body converted to the model's opset."""
    first = save(onnx.parser.parse_model(FUNCTION_OF_ITS_OWN_OPSET), tmp_path / "function.onnx")
    second = save(onnx.parser.parse_model(PLAIN), tmp_path / "plain.onnx")
    onnx.checker.check_model(str(first), full_check=True)
    out = tmp_path / "fused.onnx"
    args = ["merge", str(first), str(second), "--features", "a", "--features", "b", "--fusion", "mean"]
    args += ["--target-opset", str(target_opset)] if target_opset else []
    result, hang = invoke([*args, "--keep-model-outputs", "-o", str(out)])
    assert result is not None and result.exit_code == 0, (hang, result and result.stderr)
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert not model.functions and {o.domain: o.version for o in model.opset_import}[""] == (target_opset or 21)
    x = np.array([[-1.5, 2.0], [3.0, -4.0], [0.0, 1.0]], dtype=np.float32)
    names = [o.name for o in model.graph.output]
    reference = dict(zip(names, ReferenceEvaluator(model).run(None, {"features": x})))
    for outputs in (ort_outputs(out, {"features": x}), reference):
        np.testing.assert_array_equal(outputs["m1/Y"].ravel(), np.maximum(x[:, 0], 0))
        np.testing.assert_array_equal(outputs["m2/Y"].ravel(), -x[:, 1])


def test_load_refuses_a_model_whose_names_are_not_utf8(corpus: Path, tmp_path: Path) -> None:
    """Found by merge-mean-bytes once the stage wrappers watched: protobuf hands back a node name that is not
    UTF-8 as bytes; splice's `prefix + name` raised TypeError in our code, which its except turned into 'onnx-ir
    cannot read its graph' (exit 2 hiding a TypeError). The loader now names the field."""
    model = onnx.load(str(corpus / "lgbm.onnx"))
    model.graph.node[1].name = "PLACEHOLDER"
    path = tmp_path / "lgbm.onnx"
    path.write_bytes(model.SerializeToString().replace(b"PLACEHOLDER", b"\xff" * 11))
    expected = "NodeProto.name b'\\xff\\xff"
    out = tmp_path / "fused.onnx"
    merge = ["merge", str(corpus / "lr.onnx"), str(path), "--features", "a,b", "--features", "c,d", "-o", str(out)]
    for args in (["inspect", str(path)], [*merge, "--fusion", "mean"]):
        result, hang = invoke(args)
        assert result is not None, hang
        line = assert_one_error_line(result, "lgbm.onnx", "is not valid UTF-8")
        assert expected in line and not out.exists(), line


def test_probe_feeds_gives_none_rather_than_raising_when_an_input_cannot_be_fed() -> None:
    """The seeded rows that blame a broken source are built inside an except handler: a declared dim of 2**40,
    a negative dim or an element type numpy lacks must give None (no probe), never an exception of our own."""
    from onnxfuse.normalize import probe_feeds

    def graph(elem: int, dims: list) -> onnx.GraphProto:
        value = onnx.helper.make_tensor_value_info("x", elem, dims)
        return onnx.helper.make_graph([], "g", [value], [value])

    feeds = probe_feeds(graph(TensorProto.FLOAT, ["N", 3]))
    assert feeds is not None and feeds["x"].shape == (16, 3) and feeds["x"].dtype == np.float32
    assert probe_feeds(graph(TensorProto.STRING, ["N", 1]))["x"].dtype == object
    for elem, dims in ((TensorProto.FLOAT, ["N", 2**40]), (TensorProto.FLOAT, ["N", -1]), (0, ["N", 1]), (99, [2])):
        assert probe_feeds(graph(elem, dims)) is None, (elem, dims)
