"""Same inputs and seed give byte-identical files: across processes, whatever PYTHONHASHSEED, for every head."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightgbm
import onnx
import onnxmltools
import pytest
import xgboost
from conftest import columns_of, make_rows, save, write_csv
from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from onnxfuse.pipeline import merge
from onnxfuse.spec import FuseSpec, ModelSpec

MERGE = "from onnxfuse.cli import main; main()"  # the console script, in a fresh interpreter


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Four exporters (skl2onnx with and without ZipMap, LightGBM at IR 4, XGBoost without ai.onnx), trained on
    other rows than the fusion data, which holds binary, 3-class and string targets."""
    folder = tmp_path_factory.mktemp("determinism")
    train, fusion = make_rows(1500, seed=1), make_rows(600, seed=0)
    x, y = train["x"], train["y"]
    lr = LogisticRegression().fit(x[:, columns_of("ab")], y)
    rf = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x[:, columns_of("bc")], y)
    lgbm = lightgbm.LGBMClassifier(n_estimators=8, verbose=-1).fit(x[:, columns_of("cd")], y)
    xgb = xgboost.XGBClassifier(n_estimators=8, max_depth=3).fit(x[:, columns_of("ade")], y)
    binary = [
        (save(to_onnx(lr, x[:1, :2], target_opset=13), folder / "lr_zipmap.onnx"), "a,b"),
        (save(to_onnx(rf, x[:1, :2], options={"zipmap": False}, target_opset=18), folder / "rf_plain.onnx"), "b,c"),
        (save(onnxmltools.convert_lightgbm(lgbm, initial_types=[("input", MLFloat([None, 2]))]), folder / "lgbm.onnx"),
         "c,d"),
        (save(onnxmltools.convert_xgboost(xgb, initial_types=[("input", MLFloat([None, 3]))]), folder / "xgb.onnx"),
         "a,d,e"),
    ]  # fmt: skip
    return {"binary": binary, "data": write_csv(folder / "rows.csv", fusion), "folder": folder}


def fuse_spec(sources: dict[str, object], out: Path, **options) -> FuseSpec:
    models = tuple(ModelSpec(path, tuple(cols.split(","))) for path, cols in sources["binary"][:2])
    return FuseSpec(models=models, output=out, data=sources["data"], target="y", **options)


def test_merge_writes_identical_bytes_for_the_same_seed_and_other_bytes_for_another(sources, tmp_path):
    first, second = tmp_path / "one.onnx", tmp_path / "two.onnx"
    merge(fuse_spec(sources, first, meta="mlp", seed=5))
    merge(fuse_spec(sources, second, meta="mlp", seed=5))
    assert first.read_bytes() == second.read_bytes()
    merge(fuse_spec(sources, second, meta="mlp", seed=6))
    assert first.read_bytes() != second.read_bytes(), "the seed chooses the hold-out rows and the head's start"


def test_merge_writes_identical_bytes_in_two_processes(sources, tmp_path):
    outputs = []
    for name in ("one", "two"):
        out = tmp_path / f"{name}.onnx"
        args = ["merge", *[str(p) for p, _ in sources["binary"]]]
        for _, cols in sources["binary"]:
            args += ["--features", cols]
        args += ["--fusion", "mean", "-o", str(out)]
        subprocess.run([sys.executable, "-c", MERGE, *args], check=True, capture_output=True, env=dict(os.environ))
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    onnx.checker.check_model(str(tmp_path / "one.onnx"), full_check=True)
