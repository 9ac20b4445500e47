"""`--ops core` files in runtimes without the ai.onnx.ml domain: OpenVINO and tract (both from PyPI), against
onnxruntime on the standard file of the same merge (floats within 1e-5; labels equal except near-ties).

Run with `tox -e portability`. Without openvino or tract installed the tests of that runtime skip locally, and
fail where CI is set."""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from cases import CASES
from conftest import ort_outputs
from runtimes import differences, ml_free, openvino_outputs, tract_outputs, unreturned

pytestmark = pytest.mark.portability


def _require(module: str) -> None:
    """A runtime the portability environment installs: skipped outside CI when missing, a failure under CI."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{module} is not installed; the portability environment installs it from PyPI")
        pytest.skip(f"pip install {module} to run the core files in it")


@dataclass(frozen=True)
class Pair:
    standard: Path
    core: Path
    feeds: dict[str, np.ndarray]


@pytest.fixture(scope="session", params=list(CASES))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    build = CASES[request.param]
    standard = build(tmp_path_factory.mktemp(f"{request.param}-standard"))
    core = build(tmp_path_factory.mktemp(f"{request.param}-core"), "--ops", "core")
    return Pair(standard.path, core.path, standard.feeds)


@pytest.fixture(scope="session")
def expected(pair: Pair) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in ort_outputs(pair.standard, pair.feeds).items()}


def test_core_file_holds_no_ml_op_and_gives_the_standard_outputs_in_onnxruntime(pair: Pair, expected) -> None:
    assert not ml_free(pair.standard) or pair.standard.name == "none"  # the standard file keeps its ml ops
    assert ml_free(pair.core)
    model = onnx.load(str(pair.core))
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)
    assert differences(ort_outputs(pair.core, pair.feeds), expected) == {}


def test_openvino_runs_the_core_file(pair: Pair, expected) -> None:
    _require("openvino")
    assert differences(openvino_outputs(pair.core, pair.feeds), expected) == {}


def test_openvino_cannot_convert_the_standard_file(pair: Pair) -> None:
    """Why `--ops core` exists: OpenVINO has no conversion for the ml ops of the standard files."""
    _require("openvino")
    with pytest.raises(RuntimeError, match="No conversion rule found for operations: ai.onnx.ml"):
        openvino_outputs(pair.standard, pair.feeds)


def test_tract_runs_the_core_file(pair: Pair, expected) -> None:
    """Every output tract's Python bindings hand back equals onnxruntime's; the only ones they cannot are int64
    labels tract types as its symbolic TDim (onnxmltools' label behind a Cast) and strings — computed, but not
    readable from Python; the labels are checked in onnxruntime and OpenVINO above."""
    _require("tract")
    actual = tract_outputs(pair.core, pair.feeds)
    for name, reason in unreturned(pair.core, pair.feeds).items():
        assert expected[name].dtype.kind in "iOUS" and "Unsupported DatumType" in reason, (name, reason)
    assert any(expected[name].dtype.kind == "f" for name in actual)
    assert differences(actual, {k: v for k, v in expected.items() if k in actual}) == {}


@pytest.mark.parametrize("runtime", ["openvino", "tract"])
def test_readme_snippet_gives_onnxruntime_s_answer(runtime: str, tmp_path: Path, monkeypatch) -> None:
    """The README's OpenVINO and tract snippets, run as written next to the example's fused.core.onnx."""
    _require(runtime)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippets = [block for block in re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
                if f"import numpy as np, {runtime}" in block]  # fmt: skip
    assert len(snippets) == 1, f"README.md has {len(snippets)} {runtime} snippets"
    example = CASES["example"](tmp_path, "--ops", "core")
    example.path.rename(tmp_path / "fused.core.onnx")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippets[0], f"README.md ({runtime})", "exec"), scope)  # the README's own code, as a reader runs it
    expected = ort_outputs(tmp_path / "fused.core.onnx", {"features": scope["x"]})
    assert np.array_equal(np.asarray(scope["label"]).reshape(-1), expected["label"])
    np.testing.assert_allclose(scope["probabilities"], expected["probabilities"], rtol=1e-5, atol=1e-6)
