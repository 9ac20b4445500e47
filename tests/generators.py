"""Data and model makers that the tests and the benchmarks both use, written once.

It lives beside conftest.py so the tests import it as `generators` with nothing installed
(pytest puts tests/ on sys.path); the benchmarks, run as `python benchmarks/x.py`, load it
by path (`_children.repo_module`). Exporters and trainers are imported inside the makers
that need them, so importing this module costs the test session nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

COLUMNS = ("a", "b", "c", "d", "e")
ALIGN = 4096


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def write_csv(
    path: Path, data: dict[str, np.ndarray], label: str = "y", *, columns: Sequence[str] = COLUMNS, digits: str = ".6f"
) -> Path:
    """`data["x"]` as the named columns and `data[label]` as column `y`, each number written with `digits`."""
    x, y = data["x"], data[label]
    lines = [",".join((*columns, "y"))]
    lines += [",".join(f"{v:{digits}}" for v in row) + f",{t}" for row, t in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def bernoulli_rows(
    rng: np.random.Generator, shape: tuple[int, int], logit: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal float32 rows of `shape` and a binary label drawn with P(1) = sigmoid(logit(x))."""
    x = rng.normal(size=shape).astype(np.float32)
    y = (rng.random(shape[0]) < 1 / (1 + np.exp(-logit(x)))).astype(np.int64)
    return x, y


def interaction_task(rows: int, seed: int, *, within_groups: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Four features; the label's logit has an a*c interaction across the groups (or a*b + c*d within)."""

    def logit(x: np.ndarray) -> np.ndarray:
        a, b, c, d = x.T
        return 2.5 * (a * b + c * d) if within_groups else 1.5 * a - b + 1.2 * c + 0.8 * d + 2.5 * a * c

    return bernoulli_rows(np.random.default_rng(seed), (rows, 4), logit)


def group_sources(
    folder: Path, first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray]
) -> list[Path]:
    """Model A (gradient boosting, skl2onnx, ZipMap) fitted on `first`'s a,b; model B (LightGBM via
    onnxmltools) on `second`'s c,d: `folder/a.onnx`, `folder/b.onnx`."""
    import lightgbm
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingClassifier

    (x_a, y_a), (x_b, y_b) = first, second
    model_a = GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=0).fit(x_a[:, :2], y_a)
    model_b = lightgbm.LGBMClassifier(n_estimators=60, verbose=-1, random_state=0).fit(x_b[:, 2:], y_b)
    initial = [("input", FloatTensorType([None, 2]))]
    return [
        save(to_onnx(model_a, x_a[:1, :2]), folder / "a.onnx"),
        save(onnxmltools.convert_lightgbm(model_b, initial_types=initial), folder / "b.onnx"),
    ]


def write_mlp(path: Path, *, widths: Sequence[int], seed: int) -> int:
    """`X[N, widths[0]]` -> MatMul -> Relu -> ... -> MatMul -> `variable [N, widths[-1]]` at opset 21 / IR 10,
    the weights (seeded normal * 0.01) streamed into `<stem>.data` in blocks of <= 16 MiB, 4096-aligned, so
    models of hundreds of MiB are written without holding them. Returns the weights' file size."""
    shapes = list(itertools.pairwise(widths))
    data = path.with_suffix(".data")
    initializers = _write_weights(data, shapes, seed)
    nodes, current = [], "X"
    for index in range(len(shapes)):
        out = "variable" if index == len(shapes) - 1 else f"h{index}"
        nodes.append(helper.make_node("MatMul", [current, f"W{index}"], [out], name=f"matmul{index}"))
        current = out
        if index < len(shapes) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{index}"], name=f"relu{index}"))
            current = f"r{index}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["N", widths[0]])],
        [helper.make_tensor_value_info("variable", onnx.TensorProto.FLOAT, ["N", widths[-1]])],
        initializer=initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    onnx.checker.check_model(str(path))
    return data.stat().st_size


def _write_weights(data: Path, shapes: Sequence[tuple[int, int]], seed: int) -> list[onnx.TensorProto]:
    rng = np.random.default_rng(seed)
    tensors = []
    with open(data, "wb") as handle:
        for index, (rows, cols) in enumerate(shapes):
            handle.write(b"\0" * (-handle.tell() % ALIGN))
            offset = handle.tell()
            block = max(1, (16 << 20) // (4 * cols))
            for start in range(0, rows, block):
                chunk = rng.standard_normal((min(block, rows - start), cols), dtype=np.float32) * np.float32(0.01)
                handle.write(chunk.tobytes())
            tensor = onnx.TensorProto(name=f"W{index}", data_type=onnx.TensorProto.FLOAT, dims=[rows, cols])
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", offset), ("length", rows * cols * 4)):
                tensor.external_data.add(key=key, value=str(value))
            tensors.append(tensor)
    return tensors
