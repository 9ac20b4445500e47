"""The fused files the portability tests run: the README's example and one per exporter mix and head, built by
the real CLI (`extra` flags, e.g. `--ops core`, passed on to `onnxfuse merge`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightgbm
import numpy as np
import onnx
import onnxmltools
import xgboost
from conftest import columns_of, make_rows, run_cli, save, write_csv
from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.tree import DecisionTreeClassifier

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Fused:
    path: Path
    feeds: dict[str, np.ndarray]


def merge(out: Path, models: list[tuple[Path, str]], data: Path, *extra: str) -> Path:
    args: list[object] = ["merge", *[p for p, _ in models]]
    for _, cols in models:
        args += ["--features", cols]
    result = run_cli(*args, "--data", data, "--target", "y", "-o", out, *extra)
    assert result.exit_code == 0, f"onnxfuse merge failed ({result.exit_code}):\n{result.output}"
    return out


def unseen_rows(columns: str, count: int = 256) -> dict[str, np.ndarray]:
    """Rows none of the models or heads were trained on, in the fused input's column order."""
    x = make_rows(count, seed=7)["x"]
    return {"features": np.ascontiguousarray(x[:, columns_of(columns.split(","))])}


def build_example(folder: Path, *extra: str) -> Fused:
    """The README's example: models/a.onnx (random forest, ZipMap) + models/b.onnx, default stack head."""
    out = merge(
        folder / "example.onnx",
        [(REPO / "models" / "a.onnx", "a,b"), (REPO / "models" / "b.onnx", "c,d")],
        REPO / "models" / "train.csv",
        *extra,
    )
    table = np.loadtxt(REPO / "models" / "train.csv", delimiter=",", skiprows=1, dtype=np.float32)
    return Fused(out, {"features": np.ascontiguousarray(table[-256:, :4])})


def build_three_exporters(folder: Path, *extra: str) -> Fused:
    """skl2onnx (ZipMap) on a,b + LightGBM (onnxmltools) on b,c + XGBoost (onnxmltools) on c,d,e, 3 classes,
    fused by a gradient-boosted stack head that also sees the raw features."""
    rows = make_rows()
    x, y = rows["x"], rows["y3"]
    lr = LogisticRegression().fit(x[:, columns_of("ab")], y)
    lgbm = lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(x[:, columns_of("bc")], y)
    xgb = xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(x[:, columns_of("cde")], y)
    models = [
        (save(to_onnx(lr, x[:1, :2], target_opset=13), folder / "three_lr.onnx"), "a,b"),
        (
            save(
                onnxmltools.convert_lightgbm(lgbm, initial_types=[("input", MLFloat([None, 2]))]),
                folder / "three_lgbm.onnx",
            ),
            "b,c",
        ),
        (
            save(
                onnxmltools.convert_xgboost(xgb, initial_types=[("input", MLFloat([None, 3]))]),
                folder / "three_xgb.onnx",
            ),
            "c,d,e",
        ),
    ]
    data = write_csv(folder / "three.csv", rows, label="y3")
    out = merge(folder / "three.onnx", models, data, "--fusion", "stack", "--meta", "gbdt", "--passthrough", *extra)
    return Fused(out, unseen_rows("a,b,c,d,e"))


def build_string_labels(folder: Path, *extra: str) -> Fused:
    """String classes; each source knows two of the three, the stack head knows all of them."""
    rows = make_rows()
    x, ys = rows["x"], rows["ys"]
    low_mid, mid_high = ys != "high", ys != "low"
    first = LogisticRegression().fit(x[low_mid][:, columns_of("ab")], ys[low_mid])
    second = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x[mid_high][:, columns_of("de")], ys[mid_high])
    models = [
        (save(to_onnx(first, x[:1, :2]), folder / "strings_lm.onnx"), "a,b"),
        (save(to_onnx(second, x[:1, :2]), folder / "strings_mh.onnx"), "d,e"),
    ]
    data = write_csv(folder / "strings.csv", rows, label="ys")
    out = merge(folder / "strings.onnx", models, data, "--keep-model-outputs", *extra)
    model = onnx.load(str(out))
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.STRING
    return Fused(out, unseen_rows("a,b,d,e"))


def build_regression(folder: Path, *extra: str) -> Fused:
    """Three regressors (skl2onnx linear and forest, LightGBM) under an MLP stack head with passthrough."""
    rows = make_rows()
    x, y = rows["x"], rows["yr"]
    linear = LinearRegression().fit(x[:, columns_of("ab")], y)
    forest = RandomForestRegressor(n_estimators=4, max_depth=4, random_state=0).fit(x[:, columns_of("cde")], y)
    lgbm = lightgbm.LGBMRegressor(n_estimators=8, verbose=-1).fit(x[:, columns_of("ae")], y)
    models = [
        (save(to_onnx(linear, x[:1, :2]), folder / "reg_linear.onnx"), "a,b"),
        (save(to_onnx(forest, x[:1, :3], target_opset=18), folder / "reg_forest.onnx"), "c,d,e"),
        (
            save(onnxmltools.convert_lightgbm(lgbm, initial_types=[("X", MLFloat([None, 2]))]), folder / "lgbm.onnx"),
            "a,e",
        ),
    ]
    data = write_csv(folder / "reg.csv", rows, label="yr")
    out = merge(folder / "reg.onnx", models, data, "--meta", "mlp", "--passthrough", *extra)
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["prediction"]
    return Fused(out, unseen_rows("a,b,c,d,e"))


def build_gate(folder: Path, *extra: str) -> Fused:
    """A learned gate (mixture of experts) over two binary classifiers."""
    rows = make_rows()
    x, y = rows["x"], rows["y"]
    first = LogisticRegression().fit(x[:, columns_of("ab")], y)
    second = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x[:, columns_of("cd")], y)
    models = [
        (save(to_onnx(first, x[:1, :2], options={"zipmap": False}), folder / "gate_ab.onnx"), "a,b"),
        (save(to_onnx(second, x[:1, :2]), folder / "gate_cd.onnx"), "c,d"),
    ]
    data = write_csv(folder / "gate.csv", rows, label="y")
    out = merge(folder / "gate.onnx", models, data, "--fusion", "gate", *extra)
    return Fused(out, unseen_rows("a,b,c,d"))


def build_mean(folder: Path, *extra: str) -> Fused:
    """The weighted mean of a forest (skl2onnx) and a LightGBM classifier (onnxmltools), fitted weights."""
    rows = make_rows()
    x, y = rows["x"], rows["y"]
    forest = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0).fit(x[:, columns_of("ab")], y)
    lgbm = lightgbm.LGBMClassifier(n_estimators=30, verbose=-1).fit(x[:, columns_of("cde")], y)
    models = [
        (save(to_onnx(forest, x[:1, :2], options={"zipmap": False}), folder / "mean_forest.onnx"), "a,b"),
        (save(onnxmltools.convert_lightgbm(lgbm, initial_types=[("X", MLFloat([None, 3]))]), folder / "mean_lgbm.onnx"),
         "c,d,e"),
    ]  # fmt: skip
    data = write_csv(folder / "mean.csv", rows, label="y")
    out = merge(folder / "mean.onnx", models, data, "--fusion", "mean", *extra)
    return Fused(out, unseen_rows("a,b,c,d,e"))


def build_lgbm_xgb_torch(folder: Path, *extra: str) -> Fused:
    """LightGBM (onnxmltools) on a,b + XGBoost (onnxmltools) on c,d,e + a torch MLP's logits (torch.onnx dynamo)
    on a,e, under the default stack head."""
    import torch

    rows = make_rows()
    x, y = rows["x"], rows["y"]
    lgbm = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(x[:, columns_of("ab")], y)
    xgb = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(x[:, columns_of("cde")], y)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.03)
    inputs, truth = torch.from_numpy(np.ascontiguousarray(x[:, columns_of("ae")])), torch.from_numpy(y)
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(inputs), truth).backward()
        optimizer.step()
    program = torch.onnx.export(net.eval(), (inputs[:4],), dynamo=True, input_names=["x"],
                                dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), verbose=False)  # fmt: skip
    program.save(str(folder / "torch.onnx"))
    models = [
        (save(onnxmltools.convert_lightgbm(lgbm, initial_types=[("X", MLFloat([None, 2]))]), folder / "lgbm.onnx"),
         "a,b"),
        (save(onnxmltools.convert_xgboost(xgb, initial_types=[("X", MLFloat([None, 3]))]), folder / "xgb.onnx"),
         "c,d,e"),
        (folder / "torch.onnx", "a,e"),
    ]  # fmt: skip
    data = write_csv(folder / "ltx.csv", rows, label="y")
    out = merge(folder / "ltx.onnx", models, data, *extra)
    return Fused(out, unseen_rows("a,b,c,d,e"))


CASES: dict[str, Callable[..., Fused]] = {
    "example": build_example,
    "three-exporters-gbdt-passthrough": build_three_exporters,
    "string-labels": build_string_labels,
    "regression-mlp": build_regression,
    "gate": build_gate,
    "mean": build_mean,
    "lightgbm-xgboost-torch": build_lgbm_xgb_torch,
}
