"""The fusion heads (onnxfuse/heads/): the file computes what the fitted head computes — regression heads,
rows with NaN features — and the table `FUSIONS` is what the command line offers.

Each source is run alone in onnxruntime to get the head's input independently of the compiler; the
fused file runs in onnxruntime and the reference evaluator (they must agree).
"""

from __future__ import annotations

from pathlib import Path

import lightgbm
import numpy as np
import onnxmltools
import pytest
from conftest import assert_runtimes_agree, ort_outputs, run_cli, save
from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from test_fusion import source_signals, write_data

from onnxfuse.heads import FUSIONS, METAS, fusion
from onnxfuse.load import load_model
from onnxfuse.normalize import normalize
from onnxfuse.pipeline import merge
from onnxfuse.roles import output_role
from onnxfuse.signals import Signals, meta_columns
from onnxfuse.spec import FuseSpec, ModelSpec

HEADS = [
    pytest.param({"fusion": "stack"}, id="stack_linear"),
    pytest.param({"fusion": "stack", "meta": "mlp", "passthrough": True}, id="stack_mlp_passthrough"),
    pytest.param({"fusion": "stack", "meta": "gbdt"}, id="stack_gbdt"),
    pytest.param({"fusion": "gate"}, id="gate"),
    pytest.param({"fusion": "mean"}, id="fitted_mean"),
]


def regression_task(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four features on unlike scales; the target needs both groups (and an a*c interaction)."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(rows, 4)) * [1.0, 3.0, 10.0, 0.5] + [0, 5, 100, 0]).astype(np.float32)
    a, b, c, d = ((x - [0, 5, 100, 0]) / [1.0, 3.0, 10.0, 0.5]).T
    return x, (3 * a - b + 2 * c + d + 1.5 * a * c + rng.normal(scale=0.3, size=rows) + 40).astype(np.float64)


@pytest.fixture(scope="module")
def regression_sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """Ridge (skl2onnx) on a,b and LightGBM (onnxmltools) on c,d, trained on rows the fusion data does not hold."""
    folder = tmp_path_factory.mktemp("regression")
    x, y = regression_task(4000, seed=11)
    first = Ridge().fit(x[:, :2], y)
    second = lightgbm.LGBMRegressor(n_estimators=40, verbose=-1, random_state=0).fit(x[:, 2:], y)
    sources = [
        save(to_onnx(first, x[:1, :2]), folder / "ridge.onnx"),
        save(onnxmltools.convert_lightgbm(second, initial_types=[("input", MLFloat([None, 2]))]), folder / "lgbm.onnx"),
    ]
    joint_x, joint_y = regression_task(1500, seed=12)
    return sources, write_data(folder / "joint.parquet", joint_x, joint_y)


def regression_signals(sources: list[Path], x: np.ndarray) -> Signals:
    """Each regressor run alone: its prediction as one column."""
    models, _ = normalize([load_model(ModelSpec(p), i) for i, p in enumerate(sources, start=1)])
    per_model, columns = [], []
    for model, path, cols in zip(models, sources, ([0, 1], [2, 3])):
        role = output_role(model)
        prediction = ort_outputs(path, {model.proto.graph.input[0].name: x[:, cols]})[role.prediction]
        per_model.append(np.asarray(prediction, np.float32).reshape(-1, 1))
        columns.append(meta_columns(role, None))
    return Signals(tuple(per_model), tuple(columns), (False,) * len(per_model))  # regressors' predictions


def fusion_spec(sources: list[Path], data: Path, out: Path, **options) -> FuseSpec:
    models = (ModelSpec(sources[0], ("a", "b")), ModelSpec(sources[1], ("c", "d")))
    return FuseSpec(models=models, output=out, data=data, target="y", **options)


@pytest.mark.parametrize("options", HEADS)
def test_regression_head_in_the_file_equals_the_fitted_head(regression_sources, tmp_path, options):
    sources, data = regression_sources
    out = tmp_path / "fused.onnx"
    result = merge(fusion_spec(sources, data, out, **options))
    assert result.task == "regression"
    x, _ = regression_task(300, seed=13)
    fused = assert_runtimes_agree(out, {"features": x})["prediction"]
    expected = result.head.predict(regression_signals(sources, x), x)
    assert fused.shape == (300,)
    np.testing.assert_allclose(fused, expected, rtol=1e-4, atol=1e-3)  # float32 graph vs float64 numpy on y ~ 40


def test_regression_gate_weights_vary_per_row_and_beat_the_plain_mean(regression_sources, tmp_path):
    """A gate that learned nothing would be the plain mean: on these sources it must do better on the hold-out."""
    sources, data = regression_sources
    gate = merge(fusion_spec(sources, data, tmp_path / "gate.onnx", fusion="gate")).fusion["holdout"]["metrics"]
    mean = merge(fusion_spec(sources, data, tmp_path / "mean.onnx", fusion="mean")).fusion["holdout"]["metrics"]
    assert gate["fused"]["rmse"] < mean["fused"]["rmse"], (gate, mean)


@pytest.fixture(scope="module")
def classifier_sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """Gradient boosting (skl2onnx, NaN-aware trees) on a,b and a logistic regression on c,d."""
    folder = tmp_path_factory.mktemp("nan_rows")
    rng = np.random.default_rng(21)
    x = rng.normal(size=(4000, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] - x[:, 3] > 0).astype(np.int64)
    first = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0).fit(x[:2000, :2], y[:2000])
    second = LogisticRegression().fit(x[:2000, 2:], y[:2000])
    sources = [
        save(to_onnx(first, x[:1, :2], options={"zipmap": False}), folder / "gb.onnx"),
        save(to_onnx(second, x[:1, 2:], options={"zipmap": False}), folder / "lr.onnx"),
    ]
    return sources, write_data(folder / "joint.parquet", x[2000:], y[2000:])


@pytest.mark.parametrize(
    "options",
    [{"fusion": "stack", "passthrough": True}, {"fusion": "gate"}, {"fusion": "stack", "meta": "gbdt"}],
    ids=["stack_passthrough", "gate", "stack_gbdt"],
)
def test_rows_with_nan_features_get_the_fitted_heads_output(classifier_sources, tmp_path, options):
    """NaN features are read as the fusion rows' column means by the head (each source sees the NaN itself, and
    a source whose columns are all NaN is masked): the file's outputs on those very rows equal the fitted head's,
    and are distributions."""
    sources, data = classifier_sources
    out = tmp_path / "fused.onnx"
    result = merge(fusion_spec(sources, data, out, **options))
    rng = np.random.default_rng(22)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    x[::3, 0] = np.nan  # a feature of the first source only (its trees route NaN)
    x[1::5, 1] = np.nan
    x[2::7, :2] = np.nan
    nan_rows = np.isnan(x).any(axis=1)
    assert nan_rows.sum() > 60
    fused = assert_runtimes_agree(out, {"features": x})
    signals = source_signals(sources, x, result.classes)
    expected = result.head.predict(signals, x)
    assert np.isfinite(fused["probabilities"]).all()
    np.testing.assert_allclose(fused["probabilities"][nan_rows], expected[nan_rows], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(fused["label"][nan_rows], np.array(result.classes)[np.argmax(expected, 1)][nan_rows])


def test_the_fusions_table_is_what_the_command_line_offers():
    """`--fusion` and `--meta` list exactly the table's heads and the stacking families; each head is named
    as its key, and trains exactly when the command line says it needs --data and --target."""
    help_text = " ".join(run_cli("merge", "--help").output.split())
    assert f"--fusion [{'|'.join(FUSIONS)}]" in help_text
    assert f"--meta [{'|'.join(METAS)}]" in help_text
    for name in FUSIONS:
        head = fusion(name)
        assert head.name == name
        needs_data = run_cli("merge", "x.onnx", "y.onnx", "-o", "out.onnx", "--fusion", name)
        assert ("trains on data" in needs_data.stderr) == head.trains, (name, needs_data.stderr)


def test_the_command_line_lists_the_heads_without_importing_them():
    """`onnxfuse --help` / `inspect` start light: the table names heads by import path."""
    import subprocess
    import sys

    heavy = ("onnx_ir", "sklearn", "onnxfuse.heads.base")
    code = f"import sys, onnxfuse.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert shown.strip() == "[]", shown


def test_gate_takes_passthrough_as_what_it_does_anyway(regression_sources, tmp_path):
    """The gate always reads the raw features: `--passthrough` is accepted and changes no number."""
    sources, data = regression_sources
    plain, passed = tmp_path / "plain.onnx", tmp_path / "passthrough.onnx"
    merge(fusion_spec(sources, data, plain, fusion="gate"))
    merge(fusion_spec(sources, data, passed, fusion="gate", passthrough=True))
    x, _ = regression_task(100, seed=14)
    np.testing.assert_array_equal(
        ort_outputs(plain, {"features": x})["prediction"], ort_outputs(passed, {"features": x})["prediction"]
    )
