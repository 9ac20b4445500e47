"""Fused files from the real CLI give the same outputs in onnxruntime (Python), the ONNX reference
evaluator, onnxruntime-node and onnxruntime-web (wasm backend under Node, one thread).

Run with `tox -e portability` or `pytest -m portability tests/portability`. The npm packages are
pinned in package.json / package-lock.json and installed with `npm ci` into a temporary copy of
this folder, with onnxruntime-node's download step skipped (its CPU binaries ship in the package).
Without node/npm the Node runtimes are skipped locally, and fail the run where CI is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from cases import CASES, Fused, merge
from conftest import ort_outputs, reference_outputs


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


NODE, NPM = shutil.which("node"), shutil.which("npm")
pytestmark = [
    pytest.mark.portability,
    # Outside CI a machine without Node.js skips, saying why; under CI the npm_runtime fixture fails loudly.
    pytest.mark.skipif(
        (NODE is None or NPM is None) and not in_ci(),
        reason="install Node.js >= 20 and npm to run onnxruntime-node/-web",
    ),
]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NPM_FILES = ("package.json", "package-lock.json", "run_model.mjs")
RTOL = ATOL = 1e-5
MIN_NODE = 20
NPM_TIMEOUT_S = 900
RUN_TIMEOUT_S = 300


def unavailable(reason: str) -> None:
    """No usable JavaScript runtime although one is on PATH (or under CI): fail loudly, saying why."""
    pytest.fail(f"{reason}; the portability environment needs Node.js >= {MIN_NODE} and npm")


# ---------------------------------------------------------------- the JavaScript side


@dataclass(frozen=True)
class NodeRunner:
    node: str
    folder: Path
    versions: dict[str, str]

    def run(self, backend: str, model: Path, feeds: dict[str, np.ndarray], scratch: Path) -> dict[str, np.ndarray]:
        inputs = scratch / f"{model.stem}.inputs.json"
        inputs.write_text(json.dumps({k: encode(v) for k, v in feeds.items()}, allow_nan=False))
        done = subprocess.run(
            [self.node, str(self.folder / "run_model.mjs"), backend, str(model), str(inputs)],
            capture_output=True,
            text=True,
            cwd=self.folder,
            timeout=RUN_TIMEOUT_S,
        )
        if done.returncode != 0:
            pytest.fail(f"onnxruntime-{backend} could not run {model.name}:\n{done.stderr.strip()}")
        return {name: decode(spec) for name, spec in json.loads(done.stdout).items()}


NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # JSON has no literal for these


def encode(array: np.ndarray) -> dict[str, object]:
    array = np.asarray(array)
    if array.dtype.kind in "OUS":
        dtype, data = "string", [str(v) for v in array.ravel()]
    elif array.dtype.kind == "f":
        dtype = str(array.dtype)
        data = [v if np.isfinite(v) else NON_FINITE[str(v)] for v in array.ravel().tolist()]
    else:
        dtype, data = str(array.dtype), array.ravel().tolist()
    return {"dtype": dtype, "shape": list(array.shape), "data": data}


def decode(spec: dict) -> np.ndarray:
    dtype, dims, data = spec["dtype"], spec["dims"], spec["data"]
    if dtype == "string":
        return np.array(data, dtype=object).reshape(dims)
    if dtype == "bool":
        return np.array(data, dtype=np.uint8).astype(bool).reshape(dims)
    values = [float(v) if isinstance(v, str) else v for v in data] if dtype.startswith("float") else data
    return np.array(values, dtype=np.dtype(dtype)).reshape(dims)


@pytest.fixture(scope="session")
def npm_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeRunner]:
    """`npm ci` of the pinned packages into a temporary copy of this folder; removed afterwards."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable(f"{'node' if node is None else 'npm'} is not on PATH")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < MIN_NODE:
        unavailable(f"node is {version}")
    folder = tmp_path_factory.mktemp("npm")
    for name in NPM_FILES:
        shutil.copy2(HERE / name, folder / name)
    install = ["ci"] if (folder / "package-lock.json").exists() else ["install"]
    # No download beyond the npm registry: onnxruntime-node's postinstall would fetch extra binaries.
    env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}
    started = time.perf_counter()
    done = subprocess.run(
        [npm, *install, "--no-audit", "--no-fund", "--prefer-offline"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT_S,
    )
    if done.returncode != 0:
        pytest.fail(f"npm {install[0]} failed in {folder}:\n{done.stdout}\n{done.stderr}")
    print(f"\nnpm {install[0]}: {time.perf_counter() - started:.1f} s")
    probe = subprocess.run([node, "run_model.mjs", "versions"], cwd=folder, capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"onnxruntime-node/-web do not load after npm {install[0]}:\n{probe.stderr}")
    versions = json.loads(probe.stdout)
    print("runtimes: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    yield NodeRunner(node, folder, versions)
    shutil.rmtree(folder / "node_modules", ignore_errors=True)  # ~440 MB; keep pytest's temp folders small


# ---------------------------------------------------------------- fused files from the real CLI


@pytest.fixture(scope="session", params=list(CASES))
def fused(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Fused:
    return CASES[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="session")
def python_outputs(fused: Fused) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in ort_outputs(fused.path, fused.feeds).items()}


# ---------------------------------------------------------------- the checks


def assert_same_outputs(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], runtime: str) -> None:
    assert list(actual) == list(expected), f"{runtime}: outputs {list(actual)} != {list(expected)}"
    for name, want in expected.items():
        got = np.asarray(actual[name])
        where = f"{runtime}: output {name!r}"
        if want.dtype.kind == "f":
            assert got.dtype == want.dtype, f"{where} is {got.dtype}, Python onnxruntime gives {want.dtype}"
            assert got.shape == want.shape, f"{where} has shape {got.shape}, Python onnxruntime {want.shape}"
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=where)
        elif want.dtype.kind in "OUS":
            assert got.shape == want.shape, f"{where} has shape {got.shape}, Python onnxruntime {want.shape}"
            np.testing.assert_array_equal(got.astype(str), want.astype(str), err_msg=where)
        else:
            assert got.dtype == want.dtype, f"{where} is {got.dtype}, Python onnxruntime gives {want.dtype}"
            assert got.shape == want.shape, f"{where} has shape {got.shape}, Python onnxruntime {want.shape}"
            np.testing.assert_array_equal(got, want, err_msg=where)


def test_reference_evaluator_matches_onnxruntime(fused: Fused, python_outputs):
    actual = reference_outputs(fused.path, fused.feeds)
    # The reference evaluator may keep a static-looking shape as given; compare values in the runtime's shape.
    actual = {k: np.asarray(v).reshape(python_outputs[k].shape) for k, v in actual.items()}
    assert_same_outputs(actual, python_outputs, "reference evaluator")


@pytest.mark.parametrize("backend", ["node", "web"])
def test_javascript_runtime_matches_onnxruntime(backend: str, fused: Fused, python_outputs, npm_runtime, tmp_path):
    actual = npm_runtime.run(backend, fused.path, fused.feeds, tmp_path)
    assert_same_outputs(actual, python_outputs, f"onnxruntime-{backend}")


def test_installed_runtimes_are_the_pinned_ones(npm_runtime):
    pinned = json.loads((HERE / "package.json").read_text())["dependencies"]
    for name, version in pinned.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is not pinned to an exact version: {version}"
        assert npm_runtime.versions[name] == version, f"{name}: {npm_runtime.versions[name]} loaded, {version} pinned"
    lock = json.loads((HERE / "package-lock.json").read_text())
    for name, version in pinned.items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == version, f"package-lock.json disagrees on {name}"


def test_fused_files_use_only_what_the_npm_runtimes_load(fused: Fused):
    """onnxruntime-node/-web 1.30 load at most IR 13, ai.onnx 26, ai.onnx.ml 5; standard domains only."""
    model = onnx.load(str(fused.path))
    opsets = {o.domain: o.version for o in model.opset_import}
    assert model.ir_version <= 13
    assert opsets.get("", 0) <= 26 and opsets.get("ai.onnx.ml", 0) <= 5
    assert set(opsets) <= {"", "ai.onnx.ml"}
    assert [i.name for i in model.graph.input] == list(fused.feeds)


def test_readme_javascript_snippet_gives_what_python_gives(npm_runtime, tmp_path):
    """The README's JavaScript snippet, run as written next to the example's fused.onnx."""
    snippet = re.search(r"```js\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    assert snippet, "README.md has no ```js block"
    fused = merge(
        npm_runtime.folder / "fused.onnx",
        [(REPO / "models" / "a.onnx", "a,b"), (REPO / "models" / "b.onnx", "c,d")],
        REPO / "models" / "train.csv",
    )
    script = npm_runtime.folder / "readme_snippet.mjs"
    script.write_text(snippet.group(1))
    done = subprocess.run(
        [npm_runtime.node, script.name], cwd=npm_runtime.folder, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    expected = ort_outputs(fused, {"features": np.array([[0.1, -0.2, 0.3, 0.4]], dtype=np.float32)})
    assert printed["label"] == expected["label"].tolist()
    np.testing.assert_allclose(printed["probabilities"], expected["probabilities"].ravel(), rtol=1e-5, atol=1e-6)
