"""Measure which IR version, ai.onnx and ai.onnx.ml opsets each onnxruntime release loads and runs.

    python benchmarks/ort_version_limits.py 1.20.1 1.21.1 1.23.2 ...

Each release's Python wheel is installed (pip, `--no-deps`) into a temporary folder and a
child process loads tiny models stamped with each version: `Add` for IR and ai.onnx, and
`TreeEnsemble` (new in ai.onnx.ml 5) or `LinearRegressor` (ml 1-4) for ai.onnx.ml. The figures
back `onnxfuse.describe.ONNXRUNTIME_LIMITS` for releases the official table does not cover.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = r'''
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

def model(ir, opset, ml):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])
    if ml == 0:
        node = helper.make_node("ReduceSum", ["x"], ["y"], keepdims=1)
    elif ml < 5:
        node = helper.make_node("LinearRegressor", ["x"], ["y"], domain="ai.onnx.ml", coefficients=[1.0, 2.0])
    else:
        node = helper.make_node(
            "TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", aggregate_function=1, n_targets=1, post_transform=0,
            tree_roots=[0], nodes_modes=numpy_helper.from_array(np.array([0], np.uint8)), nodes_featureids=[0],
            nodes_splits=numpy_helper.from_array(np.array([0.5], np.float32)), nodes_truenodeids=[0],
            nodes_trueleafs=[1], nodes_falsenodeids=[1], nodes_falseleafs=[1], leaf_targetids=[0, 0],
            leaf_weights=numpy_helper.from_array(np.array([1.0, 2.0], np.float32)),
        )
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("ai.onnx.ml", ml)] if ml else [])
    graph = helper.make_graph([node], "g", [x], [y])
    return helper.make_model(graph, opset_imports=imports, ir_version=ir).SerializeToString()

def runs(data):
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        session.run(None, {"x": np.ones((2, 2), np.float32)})
        return True
    except Exception:
        return False

ir = max(v for v in range(3, 16) if runs(model(v, 13, 0)))
opset = max(v for v in range(13, 30) if runs(model(8, v, 0)))
ml = max(v for v in range(1, 7) if runs(model(8, 13, v)))
print(f"{ort.__version__}: IR {ir}, ai.onnx {opset}, ai.onnx.ml {ml}")
'''


def measure(version: str, folder: Path) -> str:
    target = folder / version
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), f"onnxruntime=={version}"],
        check=True,
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout


def main(versions: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        for version in versions:
            print(measure(version, Path(folder)).strip(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["1.20.1", "1.21.1", "1.22.1", "1.23.2", "1.24.1", "1.25.0", "1.31.1", "1.32.0"])
