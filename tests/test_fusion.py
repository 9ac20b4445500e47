"""Trained fusion: the fused model knows what its sources know together, and its head is the fitted one."""

from __future__ import annotations

import json
from pathlib import Path

import generators
import lightgbm
import numpy as np
import onnx
import onnxmltools
import pytest
from conftest import ort_outputs, run_cli, save
from generators import interaction_task
from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression

from onnxfuse.pipeline import merge
from onnxfuse.signals import Signals, class_placement, meta_columns
from onnxfuse.spec import FuseSpec, ModelSpec

COLUMNS = ("a", "b", "c", "d")


def write_data(path: Path, x: np.ndarray, target: np.ndarray, columns=COLUMNS, name: str = "y") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = {c: x[:, i] for i, c in enumerate(columns)} | {name: target}
    pq.write_table(pa.table(table), path)
    return path


def group_sources(folder: Path, x: np.ndarray, y: np.ndarray) -> list[Path]:
    """Model A (gradient boosting, skl2onnx, ZipMap) on a,b; model B (LightGBM via onnxmltools) on c,d."""
    return generators.group_sources(folder, (x, y), (x, y))


def spec(sources: list[Path], data: Path, out: Path, **options) -> FuseSpec:
    models = (ModelSpec(sources[0], ("a", "b")), ModelSpec(sources[1], ("c", "d")))
    return FuseSpec(models=models, output=out, data=data, target="y", **options)


@pytest.fixture(scope="module")
def seed_task(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    folder = tmp_path_factory.mktemp("seed_task")
    x_sources, y_sources = interaction_task(20_000, seed=1)
    sources = group_sources(folder, x_sources, y_sources)
    x, y = interaction_task(12_000, seed=2)
    return sources, write_data(folder / "joint.parquet", x, y)


def accuracies(fusion: dict) -> dict[str, float]:
    return {name: values.get("accuracy") for name, values in fusion["holdout"]["metrics"].items()}


@pytest.mark.slow  # the tox 'slow' environment (CI runs it): --meta auto on 12,000 rows
def test_merge_stack_beats_the_better_source_when_groups_interact(seed_task, tmp_path):
    sources, data = seed_task
    result = merge(spec(sources, data, tmp_path / "fused.onnx"))
    scores = accuracies(result.fusion)
    better_source = max(scores["m1 a"], scores["m2 b"])
    assert scores["fused"] > better_source + 0.05, scores
    onnx.checker.check_model(str(tmp_path / "fused.onnx"), full_check=True)


@pytest.mark.slow  # the tox 'slow' environment (CI runs it): boosting tuned on 12,000 rows
def test_merge_gbdt_passthrough_matches_a_model_on_all_features(seed_task, tmp_path):
    sources, data = seed_task
    result = merge(spec(sources, data, tmp_path / "fused.onnx", meta="gbdt", passthrough=True))
    scores = accuracies(result.fusion)
    assert scores["fused"] >= scores["baseline (gbdt on raw features)"] - 0.01, scores
    assert scores["fused"] > max(scores["m1 a"], scores["m2 b"]) + 0.1, scores


@pytest.mark.slow  # the tox 'slow' environment (CI runs it): --meta auto, ~30 s
def test_merge_beats_sources_and_baseline_when_fusion_data_is_small(tmp_path):
    x_sources, y_sources = interaction_task(20_000, seed=3, within_groups=True)
    sources = group_sources(tmp_path, x_sources, y_sources)
    x, y = interaction_task(2_000, seed=4, within_groups=True)
    result = merge(spec(sources, write_data(tmp_path / "small.parquet", x, y), tmp_path / "fused.onnx"))
    scores = accuracies(result.fusion)
    assert scores["fused"] > max(scores["m1 a"], scores["m2 b"]), scores
    assert scores["fused"] > next(v for k, v in scores.items() if k.startswith("baseline")), scores


def source_signals(sources: list[Path], x: np.ndarray, classes: tuple) -> Signals:
    """What each source file says, run alone in onnxruntime on columns a, b and c, d: the head's input, computed
    independently, with which sources are available on each row (some column held, the output finite)."""
    from onnxfuse.availability import numpy_available, present
    from onnxfuse.load import load_model
    from onnxfuse.normalize import normalize
    from onnxfuse.roles import output_role

    models, _ = normalize([load_model(ModelSpec(p), i) for i, p in enumerate(sources, start=1)])
    per_model, columns = [], []
    for model, path, cols in zip(models, sources, ([0, 1], [2, 3])):
        role = output_role(model)
        outputs = ort_outputs(path, {model.proto.graph.input[0].name: x[:, cols]})
        probabilities = outputs[role.probabilities]
        if isinstance(probabilities, list):  # ZipMap
            probabilities = np.array([[row[c] for c in role.classes] for row in probabilities], dtype=np.float32)
        per_model.append(probabilities @ class_placement(role, classes))
        columns.append(meta_columns(role, classes))
    groups = ((0, 1), (2, 3))
    available = numpy_available(per_model, present(x, groups, len(x)))
    return Signals(tuple(per_model), tuple(columns), (True,) * len(per_model), available, groups)  # probabilities


@pytest.mark.parametrize(
    "options",
    [{"fusion": "stack"}, {"fusion": "stack", "meta": "mlp", "passthrough": True}, {"fusion": "stack", "meta": "gbdt"},
     {"fusion": "gate"}, {"fusion": "mean"}],
    ids=["linear", "mlp_passthrough", "gbdt", "gate", "fitted_mean"],
)  # fmt: skip
def test_fused_head_equals_the_fitted_head(seed_task, tmp_path, options):
    sources, data = seed_task
    out = tmp_path / "fused.onnx"
    result = merge(spec(sources, data, out, holdout=0.2, **options))
    x, _ = interaction_task(12_000, seed=2)
    x = x[:500]
    fused = ort_outputs(out, {"features": x})
    expected = result.head.predict(source_signals(sources, x, result.classes), x)
    np.testing.assert_allclose(fused["probabilities"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fused["label"], np.array(result.classes)[np.argmax(expected, axis=1)])


def test_merge_fuses_sources_that_know_different_classes(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(6000, 4)).astype(np.float32)
    y = np.where(x[:, 0] + x[:, 1] > 0, 1, 0) + 2 * (x[:, 2] > 0.5)  # classes 0..3
    low, high = y < 2, y >= 2
    first = LogisticRegression().fit(x[low][:, :2], y[low])  # knows {0, 1}
    second = LogisticRegression().fit(x[high][:, 2:], y[high])  # knows {2, 3}
    sources = [
        save(to_onnx(first, x[:1, :2]), tmp_path / "low.onnx"),
        save(to_onnx(second, x[:1, :2]), tmp_path / "high.onnx"),
    ]
    data = write_data(tmp_path / "four.parquet", x, y)
    out = tmp_path / "fused.onnx"
    result = merge(spec(sources, data, out, meta="gbdt", passthrough=True))
    assert result.classes == (0, 1, 2, 3)
    fused = ort_outputs(out, {"features": x[:200]})
    assert fused["probabilities"].shape == (200, 4)
    assert set(np.unique(fused["label"])) == {0, 1, 2, 3}
    assert accuracies(result.fusion)["fused"] > 0.8


@pytest.mark.slow  # the tox 'slow' environment (CI runs it): --meta auto, 4,000 rows, three classes
def test_merge_stacks_string_labels(tmp_path):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4000, 4)).astype(np.float32)
    names = np.array(["cat", "dog", "eel"], dtype=object)
    y = names[np.digitize(x[:, 0] + x[:, 2], [-0.6, 0.6])]
    first = LogisticRegression().fit(x[:, :2], y)
    second = GradientBoostingClassifier(n_estimators=20, random_state=0).fit(x[:, 2:], y)
    sources = [
        save(to_onnx(first, x[:1, :2]), tmp_path / "s1.onnx"),
        save(to_onnx(second, x[:1, :2]), tmp_path / "s2.onnx"),
    ]
    csv = tmp_path / "strings.csv"
    csv.write_text("a,b,c,d,y\n" + "".join(f"{r[0]},{r[1]},{r[2]},{r[3]},{t}\n" for r, t in zip(x.tolist(), y)))
    out = tmp_path / "fused.onnx"
    result = run_cli(
        "merge", *sources, "--features", "a,b", "--features", "c,d", "--data", csv, "--target", "y", "-o", out
    )
    assert result.exit_code == 0, result.stderr
    model = onnx.load(str(out))
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.STRING
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["onnxfuse.classes"] == ["cat", "dog", "eel"]
    assert meta["onnxfuse.fusion"]["method"] == "stack"
    fused = ort_outputs(out, {"features": x[:300]})
    assert np.mean(fused["label"] == y[:300]) > 0.8


def torch_net(x: np.ndarray, target: np.ndarray, *, outputs: int, loss: str = "cross_entropy"):
    """A small MLP trained briefly in torch (150 Adam steps on `loss`), in eval mode."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 16), torch.nn.ReLU(), torch.nn.Linear(16, outputs))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.03)
    inputs, truth = torch.from_numpy(x), torch.from_numpy(target)
    for _ in range(150):
        optimizer.zero_grad()
        getattr(torch.nn.functional, loss)(net(inputs), truth).backward()
        optimizer.step()
    return net.eval()


def export_torch(net, path: Path, x: np.ndarray) -> Path:
    """torch.onnx (dynamo, dynamic batch, input `x`)."""
    import torch

    dynamic = ({0: torch.export.Dim.DYNAMIC},)
    program = torch.onnx.export(
        net, (torch.from_numpy(x[:4]),), dynamo=True, input_names=["x"], dynamic_shapes=dynamic, verbose=False
    )
    program.save(str(path))
    return path


def torch_export(path: Path, x: np.ndarray, target: np.ndarray, *, outputs: int, loss: str) -> Path:
    """A small MLP trained briefly in torch and exported with torch.onnx (dynamo, dynamic batch)."""
    return export_torch(torch_net(x, target, outputs=outputs, loss=loss), path, x)


def torch_regressor(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    return torch_export(path, x, y.astype(np.float32).reshape(-1, 1), outputs=1, loss="mse_loss")


@pytest.mark.slow  # the tox 'slow' environment (CI runs it): three exporters, torch.onnx among them
def test_merge_stacks_regressors_from_three_exporters(tmp_path):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(5000, 5)).astype(np.float32)
    y = (np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.5 * x[:, 3] - x[:, 4] + 0.1 * rng.normal(size=5000)).astype(
        np.float32
    )
    forest = RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0).fit(x[:, :2], y)
    booster = lightgbm.LGBMRegressor(n_estimators=40, verbose=-1).fit(x[:, 1:3], y)
    sources = [
        save(to_onnx(forest, x[:1, :2], target_opset=18), tmp_path / "forest.onnx"),
        save(onnxmltools.convert_lightgbm(booster, initial_types=[("X", MLFloat([None, 2]))]), tmp_path / "lgbm.onnx"),
        torch_regressor(tmp_path / "torch.onnx", x[:, 3:5], y),
    ]
    data = write_data(tmp_path / "reg.parquet", x, y, columns=("a", "b", "c", "d", "e"))
    out = tmp_path / "fused.onnx"
    models = (ModelSpec(sources[0], ("a", "b")), ModelSpec(sources[1], ("b", "c")), ModelSpec(sources[2], ("d", "e")))
    result = merge(FuseSpec(models=models, output=out, data=data, target="y"))
    metrics = result.fusion["holdout"]["metrics"]
    assert metrics["fused"]["r2"] > max(metrics[name]["r2"] for name in ("m1 forest", "m2 lgbm", "m3 torch")) + 0.1
    model = onnx.load(str(out))
    assert [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output] == [
        ("prediction", onnx.TensorProto.FLOAT)
    ]
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx.ml"}
    fused = ort_outputs(out, {"features": x[:100]})
    assert fused["prediction"].shape == (100,)


def torch_classifier(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """Logits only, as torch.onnx exports a classifier: no labels, no class list."""
    return torch_export(path, x, y, outputs=2, loss="cross_entropy")


@pytest.mark.slow  # the tox 'slow' environment (CI runs it): a torch.onnx export and a --meta auto merge, ~1 min
def test_merge_stacks_torch_logits_with_labelled_classifiers(seed_task, tmp_path):
    sources, data = seed_task
    x, y = interaction_task(8_000, seed=11)
    logits = torch_classifier(tmp_path / "torch.onnx", x[:, [0, 2]], y)
    models = (ModelSpec(sources[0], ("a", "b")), ModelSpec(sources[1], ("c", "d")), ModelSpec(logits, ("a", "c")))
    out = tmp_path / "fused.onnx"
    result = merge(FuseSpec(models=models, output=out, data=data, target="y"))
    metrics = result.fusion["holdout"]["metrics"]
    assert metrics["m3 torch"]["accuracy"] > 0.6, "logits over the target's 0..C-1 are a classifier with metrics"
    assert metrics["fused"]["accuracy"] > max(metrics["m1 a"]["accuracy"], metrics["m2 b"]["accuracy"]) + 0.05
    mean = run_cli(
        "merge",
        sources[0],
        logits,
        "--features",
        "a,b",
        "--features",
        "a,c",
        "--fusion",
        "mean",
        "-o",
        tmp_path / "m.onnx",
    )
    assert mean.exit_code == 2 and "unlabeled scores" in mean.stderr and "--declare 2:classes=" in mean.stderr
