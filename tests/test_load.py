"""Tests of `onnxfuse.load`: real models load without their weights; broken or unsafe files are refused."""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import external_data_helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from onnxfuse.errors import OnnxfuseError
from onnxfuse.load import file_sha256, load_model
from onnxfuse.spec import ModelSpec

WEIGHTS = "dense_weights"
WEIGHT_VALUES = np.arange(64, dtype=np.float32).reshape(4, 16) / 10
# A small graph whose weight is an initializer (skl2onnx linear models keep theirs in attributes).
DENSE_TEXT = """
<ir_version: 8, opset_import: ["" : 18]>
dense (float[N, 4] X) => (float[N, 16] Y) {
    Y = MatMul(X, dense_weights)
}
"""
# What an external-data refusal must say, loosely (regexes, case-insensitive).
MISSING = r"no such file|missing|not found|does not exist"
TOO_SHORT = r"truncated|too short|shorter|bytes"
ESCAPES = r"leaves|outside|escapes"
LINK_OUT = ESCAPES + r"|symbolic link|symlink"


@pytest.fixture(scope="module")
def skl_model(rows: dict[str, np.ndarray]) -> onnx.ModelProto:
    x = rows["x"][:300, :2]
    fitted = LogisticRegression().fit(x, rows["y"][:300])
    return to_onnx(fitted, x[:1], target_opset=18)


@pytest.fixture
def skl_path(tmp_path: Path, skl_model: onnx.ModelProto) -> Path:
    path = tmp_path / "classifier.onnx"
    path.write_bytes(skl_model.SerializeToString())
    return path


def dense_model() -> onnx.ModelProto:
    model = onnx.parser.parse_model(DENSE_TEXT)
    model.graph.initializer.append(numpy_helper.from_array(WEIGHT_VALUES, WEIGHTS))
    onnx.checker.check_model(model)
    return model


def save_with_external_reference(folder: Path, location: str, *, offset: int = 0, length: int | None = None) -> Path:
    """Write `dense.onnx` whose weight points at `location` (the data file is the caller's business)."""
    model = dense_model()
    tensor = model.graph.initializer[0]
    size = len(tensor.raw_data)
    external_data_helper.set_external_data(tensor, location, offset=offset, length=size if length is None else length)
    tensor.ClearField("raw_data")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dense.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def weight_bytes() -> bytes:
    return WEIGHT_VALUES.tobytes()


def load(path: Path):
    return load_model(ModelSpec(path), 1)


def assert_refused(path: Path, *names: str, reason: str | None = None) -> str:
    """The error names the file and each of `names`; `reason` (a regex) says what is wrong."""
    with pytest.raises(OnnxfuseError) as caught:
        load(path)
    message = str(caught.value)
    assert path.name in message, message
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    if reason is not None:
        assert re.search(reason, message, re.IGNORECASE), f"{reason!r} does not match {message!r}"
    return message


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from a folder that is not the model's, as a user of the CLI does."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_load_model_returns_proto_and_sha256_when_skl2onnx_model(skl_path: Path, skl_model: onnx.ModelProto) -> None:
    source = load_model(ModelSpec(skl_path), 3)

    assert source.index == 3
    assert source.path == skl_path
    assert source.sha256 == hashlib.sha256(skl_path.read_bytes()).hexdigest()
    assert source.proto.SerializeToString() == skl_model.SerializeToString()
    assert source.label == "model 3 (classifier.onnx)"


def test_file_sha256_equals_hashlib_when_file_spans_several_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    payload = os.urandom(3 * (1 << 20) + 17)
    path.write_bytes(payload)

    assert file_sha256(path) == hashlib.sha256(payload).hexdigest()


@pytest.mark.usefixtures("elsewhere")
def test_load_model_keeps_weights_external_when_saved_with_external_data(tmp_path: Path) -> None:
    path = tmp_path / "dense.onnx"
    onnx.save(dense_model(), str(path), save_as_external_data=True, location="dense.data", size_threshold=0)

    source = load(path)

    (tensor,) = source.proto.graph.initializer
    assert tensor.name == WEIGHTS
    assert tensor.data_location == onnx.TensorProto.EXTERNAL
    assert tensor.raw_data == b""
    assert external_data_helper.ExternalDataInfo(tensor).location == "dense.data"
    assert source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.usefixtures("elsewhere")
def test_load_model_accepts_external_data_when_in_a_subfolder(tmp_path: Path) -> None:
    path = save_with_external_reference(tmp_path, "weights/dense.data")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "dense.data").write_bytes(weight_bytes())

    (tensor,) = load(path).proto.graph.initializer

    assert tensor.data_location == onnx.TensorProto.EXTERNAL
    assert tensor.raw_data == b""


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.75, 0.98])
def test_load_model_raises_when_file_is_truncated(skl_path: Path, tmp_path: Path, fraction: float) -> None:
    payload = skl_path.read_bytes()
    cut = tmp_path / "truncated.onnx"
    cut.write_bytes(payload[: int(len(payload) * fraction)])

    assert_refused(cut)


@pytest.mark.parametrize("size", [1, 2, 7])
def test_load_model_raises_when_only_first_bytes_remain(skl_path: Path, tmp_path: Path, size: int) -> None:
    cut = tmp_path / "stub.onnx"
    cut.write_bytes(skl_path.read_bytes()[:size])

    assert_refused(cut)


def test_load_model_raises_when_file_is_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("This is not a model.\nJust a few lines of text.\n")

    assert_refused(path)


def test_load_model_raises_when_file_is_a_zip(tmp_path: Path, skl_path: Path) -> None:
    path = tmp_path / "bundle.onnx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(skl_path, "classifier.onnx")

    assert_refused(path)


def test_load_model_raises_when_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")

    assert_refused(path, "empty")


def test_load_model_raises_when_file_is_missing(tmp_path: Path) -> None:
    assert_refused(tmp_path / "ghost.onnx", "no such file")


def test_load_model_raises_when_ir_version_is_newer_than_onnx_knows(tmp_path: Path, skl_model: onnx.ModelProto) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(skl_model)
    model.ir_version = onnx.IR_VERSION + 1
    path = tmp_path / "future.onnx"
    path.write_bytes(model.SerializeToString())

    assert_refused(path, "IR version", str(onnx.IR_VERSION + 1))


@pytest.mark.usefixtures("elsewhere")
def test_load_model_raises_when_external_data_is_missing(tmp_path: Path) -> None:
    path = save_with_external_reference(tmp_path, "dense.data")

    assert_refused(path, WEIGHTS, "dense.data", reason=MISSING)


@pytest.mark.usefixtures("elsewhere")
def test_load_model_raises_when_external_data_is_shorter_than_offset_plus_length(tmp_path: Path) -> None:
    path = save_with_external_reference(tmp_path, "dense.data")
    (tmp_path / "dense.data").write_bytes(weight_bytes()[:100])

    assert_refused(path, WEIGHTS, "dense.data", reason=TOO_SHORT)


@pytest.mark.usefixtures("elsewhere")
def test_load_model_raises_when_external_data_offset_runs_past_the_end(tmp_path: Path) -> None:
    path = save_with_external_reference(tmp_path, "dense.data", offset=64)
    (tmp_path / "dense.data").write_bytes(weight_bytes())

    assert_refused(path, WEIGHTS, "dense.data", reason=TOO_SHORT)


@pytest.mark.usefixtures("elsewhere")
def test_load_model_raises_when_external_data_leaves_the_folder_with_dotdot(tmp_path: Path) -> None:
    (tmp_path / "x.data").write_bytes(weight_bytes())
    path = save_with_external_reference(tmp_path / "model", "../x.data")

    assert_refused(path, WEIGHTS, "../x.data", reason=ESCAPES)


@pytest.mark.usefixtures("elsewhere")
def test_load_model_raises_when_external_data_path_is_absolute(tmp_path: Path) -> None:
    outside = tmp_path / "x.data"
    outside.write_bytes(weight_bytes())
    path = save_with_external_reference(tmp_path / "model", str(outside))

    assert_refused(path, WEIGHTS, str(outside), reason=r"absolute")


@pytest.mark.usefixtures("elsewhere")
def test_load_model_raises_when_external_data_is_a_symlink_out_of_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "x.data"
    outside.parent.mkdir()
    outside.write_bytes(weight_bytes())
    path = save_with_external_reference(tmp_path / "model", "link.data")
    (tmp_path / "model" / "link.data").symlink_to(outside)

    assert_refused(path, WEIGHTS, "link.data", reason=LINK_OUT)
