"""Shared fixtures: real models from real exporters, fitted once per session, and helpers to run them."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner, Result
from generators import COLUMNS, save, write_csv  # noqa: F401 - shared with the benchmarks; tests import them here

from onnxfuse.cli import cli

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)


def make_rows(count: int = 1500, seed: int = 0) -> dict[str, np.ndarray]:
    """Five float columns and three labels: binary int, 3-class int and string."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, len(COLUMNS))).astype(np.float32)
    a, b, c, d, e = x.T
    logit = a - b + c + 0.5 * d + a * c
    return {
        "x": x,
        "y": (logit > 0).astype(np.int64),
        "y3": np.digitize(logit, [-1.0, 1.0]).astype(np.int64),
        "ys": np.array(["low", "mid", "high"], dtype=object)[np.digitize(a + e, [-0.7, 0.7])],
        "yr": (2 * a - c + 0.3 * e + 0.1 * rng.normal(size=count)).astype(np.float32),
    }


@pytest.fixture(scope="session")
def rows() -> dict[str, np.ndarray]:
    return make_rows()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def columns_of(names: Sequence[str]) -> list[int]:
    return [COLUMNS.index(n) for n in names]


def run_cli(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def ort_outputs(path: Path | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, object]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    target = path.SerializeToString() if isinstance(path, onnx.ModelProto) else str(path)
    session = ort.InferenceSession(target, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def reference_outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # imported here: onnxfuse.verify pulls in onnxruntime and onnx.reference, and a bigger pytest process
    # inflates the peak RSS test_large reads for its merge child (ru_maxrss counts the child from its fork)
    from onnxfuse.verify import reference_evaluator

    model = onnx.load(str(path))
    names = [o.name for o in model.graph.output]
    return dict(zip(names, reference_evaluator(model).run(None, feeds)))


def as_matrix(value: object, classes: Sequence | None = None) -> np.ndarray:
    """A source output as an array: ZipMap's list of dicts becomes `[N, C]` in class order."""
    if isinstance(value, list):
        keys = list(classes) if classes is not None else sorted(value[0])
        return np.array([[row[k] for k in keys] for row in value], dtype=np.float32)
    return np.asarray(value)


def assert_runtimes_agree(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, object]:
    """The fused file gives the same outputs in onnxruntime and the reference evaluator."""
    fused = ort_outputs(path, feeds)
    reference = reference_outputs(path, feeds)
    assert fused.keys() == reference.keys()
    for name, value in fused.items():
        expected = np.asarray(value)
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(np.asarray(reference[name]), expected, rtol=1e-4, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(np.asarray(reference[name]).reshape(expected.shape), expected, err_msg=name)
    return fused


def assert_checker_and_portable(path: Path) -> onnx.ModelProto:
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    domains = [o.domain for o in model.opset_import]
    assert sorted(domains) == sorted(set(domains)), "one opset import per domain"
    assert set(domains) <= {"", "ai.onnx.ml"}
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx.ml"}
    assert not model.functions
    return model


def assert_one_error_line(result: Result, *culprits: str, code: int = 2) -> str:
    """The CLI failed with `code`: exactly one `error: ...` line naming every culprit, no traceback."""
    shown = f"exit {result.exit_code}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.exit_code == code, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1, shown
    assert lines[0].startswith("error: "), shown
    for culprit in culprits:
        assert culprit in lines[0], f"{culprit!r} not named: {lines[0]!r}"
    return lines[0]


def string_table(count: int = 600, seed: int = 0) -> dict[str, np.ndarray]:
    """A string column `color` (with some values missing), float columns x1..x3 and a binary label `y`."""
    rng = np.random.default_rng(seed)
    color = rng.choice(np.array(["red", "green", "blue"], dtype=object), count)
    x1, x2, x3 = rng.normal(size=(3, count)).astype(np.float32)
    y = ((color == "red") + x1 - x2 + 0.5 * x3 + 0.5 * rng.normal(size=count) > 0.5).astype(np.int64)
    return {"color": color, "x1": x1, "x2": x2, "x3": x3, "y": y}


def string_pipeline(table: dict[str, np.ndarray], numeric: Sequence[str]) -> onnx.ModelProto:
    """The skl2onnx tutorial shape: ColumnTransformer(OneHotEncoder on `color`, StandardScaler on `numeric`)
    + LogisticRegression, one `[N, 1]` input per column (`color` a string)."""
    import pandas as pd
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = pd.DataFrame({name: table[name] for name in ("color", *numeric)})
    steps = [("cat", OneHotEncoder(handle_unknown="ignore"), ["color"]), ("num", StandardScaler(), list(numeric))]
    pipeline = Pipeline([("pre", ColumnTransformer(steps)), ("lr", LogisticRegression())]).fit(frame, table["y"])
    initial = [("color", StringTensorType([None, 1]))] + [(n, FloatTensorType([None, 1])) for n in numeric]
    return convert_sklearn(pipeline, initial_types=initial, target_opset=18)


def canonical(proto: onnx.ModelProto) -> bytes:
    """Deterministic bytes with initializers in name order (the packed file lists streamed ones last) and empty
    doc strings unset (the one that ends a tensor's alignment padding parses as set to "")."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for tensor in copy.graph.initializer:
        if not tensor.doc_string:
            tensor.ClearField("doc_string")
    ordered = sorted(copy.graph.initializer, key=lambda t: t.name)
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(ordered)
    return copy.SerializeToString(deterministic=True)
