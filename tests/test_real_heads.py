"""The fusion heads on data as it comes: features on natural scales, torch logits next to their softmax, targets far
from 0, sources that saw the fusion rows or read the wrong columns — and what a merge says while it runs.

Every source is a real exported model (skl2onnx, onnxmltools for LightGBM, torch.onnx) trained on rows the fusion
data does not hold, unless a test says otherwise; the merges run the real onnxruntime. No figure is hard-coded:
each claim compares models of the same run (a source, the fused model, a merge with other settings, the data's
majority class), with a stated noise margin.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightgbm
import numpy as np
import onnxmltools
import pytest
from conftest import assert_runtimes_agree, ort_outputs, run_cli, save
from generators import interaction_task
from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from test_fusion import write_data

from onnxfuse.cli import _Progress
from onnxfuse.errors import OnnxfuseWarning
from onnxfuse.load import load_model
from onnxfuse.normalize import normalize
from onnxfuse.pipeline import merge
from onnxfuse.roles import output_role
from onnxfuse.signals import Signals, meta_columns
from onnxfuse.spec import FuseSpec, ModelSpec

NOISE = 0.01  # accuracy two heads may differ by on a hold-out of ~600 rows and still be "as good"


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def holdout(result) -> dict:
    return result.fusion["holdout"]


def table_of(result) -> dict[str, dict]:
    return result.fusion["holdout"]["metrics"]


def codes(report: dict) -> list[str]:
    return [w["code"] for w in report["warnings"]]


def classifier(model, x: np.ndarray) -> object:
    """A scikit-learn classifier as skl2onnx exports it, probabilities as a tensor."""
    return to_onnx(model, x[:1], options={"zipmap": False}, target_opset=18)


def lightgbm_onnx(model, width: int) -> object:
    return onnxmltools.convert_lightgbm(model, initial_types=[("input", MLFloat([None, width]))], zipmap=False)


def fused_spec(sources: list[tuple[Path, tuple[str, ...]]], data: Path, out: Path, **options) -> FuseSpec:
    models = tuple(ModelSpec(path, columns) for path, columns in sources)
    return FuseSpec(models=models, output=out, data=data, target="y", **options)


def cli_merge(sources: list[tuple[Path, tuple[str, ...]]], data: Path, out: Path, *flags: object):
    """`onnxfuse merge` with --features per source and --report: the result and the report written."""
    report = out.with_suffix(".json")
    features = [arg for _, columns in sources for arg in ("--features", ",".join(columns))]
    result = run_cli("merge", *(p for p, _ in sources), *features, "--data", data, "--target", "y", "-o", out,
                     "--report", report, *flags)  # fmt: skip
    return result, (json.loads(report.read_text())["holdout"] if result.exit_code == 0 else None)


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: ")]


def assert_cli_warns_each_caveat_once(result, report: dict) -> None:
    """Exit 0; one `warning:` line per caveat in the report, each its message, and no other warning line."""
    shown = f"exit {result.exit_code}\nstderr: {result.stderr}"
    assert result.exit_code == 0, shown
    lines = warning_lines(result.stderr)
    assert len(lines) == len(report["warnings"]), (shown, report["warnings"])
    assert sorted(lines) == sorted("warning: " + w["message"] for w in report["warnings"]), shown


# --- 1. passthrough on natural scales ----------------------------------------------------------------------------


def natural_table(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """income (lognormal ~5e4), a credit score (600 +- 100), an epoch-seconds timestamp (1.7e9 +- 3e7) and two
    N(0,1) signals a, b; the label is a logistic draw on the standardised columns (with an income x time term a
    stack of per-group log-odds cannot form, but the raw features can)."""
    rng = np.random.default_rng(seed)
    income = rng.lognormal(mean=math.log(5e4), sigma=0.5, size=rows)
    score = rng.normal(600, 100, size=rows)
    epoch = rng.normal(1.7e9, 3e7, size=rows)
    a, b = rng.normal(size=(2, rows))
    z_income, z_score, z_epoch = (np.log(income) - math.log(5e4)) / 0.5, (score - 600) / 100, (epoch - 1.7e9) / 3e7
    logit = 1.2 * a + 1.0 * b + 0.9 * z_income - 0.8 * z_score + 0.7 * z_epoch + 0.8 * z_income * z_epoch
    y = (rng.random(rows) < sigmoid(logit)).astype(np.int64)
    return np.column_stack([income, score, a, epoch, b]), y


NATURAL = ("income", "score", "a", "epoch", "b")


@pytest.fixture(scope="module")
def natural_sources(tmp_path_factory: pytest.TempPathFactory):
    """A: StandardScaler + logistic regression on income, score, a; B: LightGBM on epoch, b — each trained on rows
    of its own; the fusion table is a third draw."""
    folder = tmp_path_factory.mktemp("natural")
    x, y = natural_table(4000, seed=31)
    first = make_pipeline(StandardScaler(), LogisticRegression()).fit(x[:2000, :3], y[:2000])
    second = lightgbm.LGBMClassifier(n_estimators=60, verbose=-1, random_state=0).fit(x[2000:, 3:], y[2000:])
    sources = [
        (save(classifier(first, x[:, :3].astype(np.float32)), folder / "scaled_lr.onnx"), NATURAL[:3]),
        (save(lightgbm_onnx(second, 2), folder / "lgbm.onnx"), NATURAL[3:]),
    ]
    joint_x, joint_y = natural_table(3000, seed=32)
    return sources, write_data(folder / "joint.parquet", joint_x, joint_y, columns=NATURAL)


def test_passthrough_of_natural_scale_features_keeps_or_improves_the_linear_stack(natural_sources, tmp_path):
    """Features of 1e2..1e9 read raw by a linear head: `--meta linear --passthrough` is at least as accurate on the
    hold-out as `--meta linear` alone (within NOISE: both are fitted on the same ~2400 rows and scored on the same
    ~600, where one row is 0.0017), the from-scratch baseline on those raw columns is well above the constant
    predictor — both fail when the raw columns reach a learner unstandardised — and the passthrough file does as
    well as the plain one on fresh rows in float32 (an epoch of 1.7e9 standardised in the graph)."""
    sources, data = natural_sources
    plain = merge(fused_spec(sources, data, tmp_path / "plain.onnx", meta="linear"))
    passed = merge(fused_spec(sources, data, tmp_path / "passthrough.onnx", meta="linear", passthrough=True))
    assert passed.fusion["passthrough"] is True and plain.fusion["passthrough"] is False
    plain_table, passed_table = table_of(plain), table_of(passed)
    assert passed_table["fused"]["accuracy"] >= plain_table["fused"]["accuracy"] - NOISE, (passed_table, plain_table)
    assert passed_table["fused"]["log_loss"] <= plain_table["fused"]["log_loss"] + NOISE, (passed_table, plain_table)
    _, y = natural_table(3000, seed=32)
    majority = max(np.mean(y), 1 - np.mean(y))
    baseline = passed_table["baseline (linear on raw features)"]
    assert baseline["accuracy"] > majority + 0.1, (baseline, majority)
    assert baseline == plain_table["baseline (linear on raw features)"], "the baseline does not depend on the head"
    fresh_x, fresh_y = natural_table(2000, seed=33)
    fresh = {"features": fresh_x.astype(np.float32)}
    accuracy = {
        name: np.mean(ort_outputs(tmp_path / f"{name}.onnx", fresh)["label"] == fresh_y)
        for name in ("plain", "passthrough")
    }
    assert accuracy["passthrough"] >= accuracy["plain"] - NOISE, accuracy



# --- 2. torch logits stack as their softmax does -------------------------------------------------------------------


def torch_net(x: np.ndarray, target: np.ndarray, *, outputs: int):
    """A small MLP trained briefly on class indices (cross-entropy), as `test_fusion.torch_export` trains it."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 16), torch.nn.ReLU(), torch.nn.Linear(16, outputs))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.03)
    inputs, truth = torch.from_numpy(x), torch.from_numpy(target)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(inputs), truth).backward()
        optimizer.step()
    return net.eval()


def export_torch(net, path: Path, x: np.ndarray) -> Path:
    """torch.onnx (dynamo, dynamic batch), as `test_fusion.torch_export` exports."""
    import torch

    dynamic = ({0: torch.export.Dim.DYNAMIC},)
    program = torch.onnx.export(
        net, (torch.from_numpy(x[:4]),), dynamo=True, input_names=["x"], dynamic_shapes=dynamic, verbose=False
    )
    program.save(str(path))
    return path


@pytest.fixture(scope="module")
def torch_pair(tmp_path_factory: pytest.TempPathFactory):
    """One torch net on a, c exported twice — raw logits, and `Sequential(net, Softmax)` — beside a logistic
    regression on b, d; the three trained on rows of their own, the fusion table a fourth draw."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("torch_pair")
    x, y = interaction_task(6000, seed=41)
    net = torch_net(x[:3000][:, [0, 2]], y[:3000], outputs=2)
    logits = export_torch(net, folder / "logits.onnx", x[:, [0, 2]])
    softmax = export_torch(torch.nn.Sequential(net, torch.nn.Softmax(dim=1)).eval(), folder / "softmax.onnx", x[:, [0, 2]])
    other = save(classifier(LogisticRegression().fit(x[3000:, [1, 3]], y[3000:]), x[:, [1, 3]]), folder / "lr.onnx")
    joint_x, joint_y = interaction_task(3000, seed=42)
    return logits, softmax, other, write_data(folder / "joint.parquet", joint_x, joint_y)


@pytest.mark.parametrize("meta", ["auto", "linear"])
def test_torch_logits_stack_as_well_as_their_softmax(torch_pair, tmp_path, meta):
    """The same weights exported with and without a final Softmax: the stack reads the logits through a softmax
    and both as log-odds, so the two merges' hold-out figures agree closely (0.005 accuracy, 0.005 log loss — the
    two files differ only in float32 rounding), each source's own figures too, and the fused model beats the torch
    source alone (the stack used the logits)."""
    logits, softmax, other, data = torch_pair
    tables = {}
    for name, net in (("logits", logits), ("softmax", softmax)):
        sources = [(net, ("a", "c")), (other, ("b", "d"))]
        tables[name] = table_of(merge(fused_spec(sources, data, tmp_path / f"{name}.onnx", meta=meta)))
    raw, soft = tables["logits"], tables["softmax"]
    assert raw["m1 logits"]["accuracy"] is not None, raw
    assert abs(raw["m1 logits"]["accuracy"] - soft["m1 softmax"]["accuracy"]) <= 0.005, tables
    assert abs(raw["m1 logits"]["log_loss"] - soft["m1 softmax"]["log_loss"]) <= 0.005, tables
    assert abs(raw["fused"]["accuracy"] - soft["fused"]["accuracy"]) <= 0.005, tables
    assert abs(raw["fused"]["log_loss"] - soft["fused"]["log_loss"]) <= 0.005, tables
    assert raw["fused"]["log_loss"] < raw["m1 logits"]["log_loss"], tables
