"""Run an ONNX file in OpenVINO and in tract from Python, as their docs say, and compare with onnxruntime.

OpenVINO: `Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})` — without the hint its CPU
plugin computes in bf16 on processors that have it (~4e-3 on probabilities, flipped labels). tract: the inputs'
shapes and types are given as facts, the batch as the file's own symbol (it unifies no concrete size with the
symbol the file's value_info names), then
`into_model().into_runnable().run([...])`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

F32 = {"INFERENCE_PRECISION_HINT": "f32"}
TRACT_TYPES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.int64): "i64"}
NEAR_TIE = 1e-5


def openvino_outputs(path: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import openvino

    compiled = openvino.Core().compile_model(str(path), "CPU", F32)
    names = [i.get_any_name() for i in compiled.inputs]
    results = compiled([feeds[name] for name in names])
    return {output.get_any_name(): np.asarray(results[output]) for output in compiled.outputs}


def tract_outputs(path: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output tract's Python bindings hand back; one they cannot (an int64 tensor tract typed as its
    symbolic TDim, as onnxmltools' label behind a Cast; strings) is left out, `unreturned` says which."""
    return _tract_run(path, feeds)[0]


def unreturned(path: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, str]:
    """The outputs tract computed but its Python bindings could not hand back, with tract's reason."""
    return _tract_run(path, feeds)[1]


def _tract_run(path: Path, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    import tract

    model = tract.onnx().load(str(path))
    names = [model.input_name(i) for i in range(model.input_count())]
    graph = onnx.load(str(path)).graph
    declared = {i.name: i.type.tensor_type.shape.dim for i in graph.input}
    for index, name in enumerate(names):
        value = feeds[name]
        dims = [d.dim_param or str(size) for d, size in zip(declared[name], value.shape)]  # the file's batch symbol
        model.set_input_fact(index, ",".join(dims) + "," + TRACT_TYPES[value.dtype])
    outputs = [o.name for o in graph.output]  # tract names them after the nodes it kept: read them in order
    runnable = model.into_model().into_runnable()
    results = runnable.run([feeds[name] for name in names])
    returned, refused = {}, {}
    for name, result in zip(outputs, results):
        try:
            returned[name] = result.to_numpy()
        except tract.bindings.TractError as exc:
            refused[name] = str(exc).strip().splitlines()[0]
    return returned, refused


def differences(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Per output, what differs from `expected` (onnxruntime on the standard file); empty when all agree:
    floats within 1e-5, labels equal except on the rows where the expected probabilities are a near-tie."""
    problems = {}
    ties = _near_ties(expected)
    for name, want in expected.items():
        want = np.asarray(want)
        if name not in actual:
            problems[name] = "missing"
            continue
        got = np.asarray(actual[name])
        if got.size != want.size:
            problems[name] = f"shape {got.shape}, expected {want.shape}"
            continue
        got = got.reshape(want.shape)
        if want.dtype.kind == "f":
            if not np.allclose(got, want, rtol=NEAR_TIE, atol=NEAR_TIE, equal_nan=True):
                problems[name] = f"off by up to {float(np.nanmax(np.abs(got.astype(float) - want))):.2g}"
        else:
            wrong = got.astype(str) != want.astype(str) if want.dtype.kind in "OUS" else got != want
            wrong = wrong.reshape(len(want), -1).any(axis=1) & ~ties
            if wrong.any():
                problems[name] = f"{int(wrong.sum())} of {len(want)} labels differ"
    return problems


def worst_error(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> float:
    """The largest difference over the float outputs."""
    errors = [float(np.nanmax(np.abs(np.asarray(actual[k]).reshape(np.shape(v)).astype(float) - v)))
              for k, v in expected.items() if np.asarray(v).dtype.kind == "f" and k in actual]  # fmt: skip
    return max(errors, default=0.0)


def _near_ties(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    rows = len(next(iter(outputs.values())))
    ties = np.zeros(rows, dtype=bool)
    for value in outputs.values():
        value = np.asarray(value)
        if value.dtype.kind == "f" and value.ndim == 2 and value.shape[1] >= 2 and len(value) == rows:
            top = np.sort(value, axis=1)[:, -2:]
            ties |= top[:, 1] - top[:, 0] <= NEAR_TIE
    return ties


def ml_free(path: Path) -> bool:
    model = onnx.load(str(path))
    return all(o.domain in ("", "ai.onnx") for o in model.opset_import)
