"""`--explain` and availability against their numpy recomputation from the fitted head, with three sources.

Three real exports read three disjoint groups of columns (a scaler + logistic regression on a, b; LightGBM on c, d;
a gradient-boosting model on e), so a row can miss one, two or all groups, and the partly missing group of the
linear source turns its output NaN while LightGBM routes a NaN itself. The fused file's `available`,
`probabilities` / `prediction`, `source_effects` and `weights` are compared, on onnxruntime and the reference
evaluator, with what `availability`, the fitted head's `predict` and `explain.numpy_effects` compute from the
source files' own outputs.
"""

from __future__ import annotations

from pathlib import Path

import lightgbm
import numpy as np
import onnx
import onnxmltools
import pytest
from conftest import assert_runtimes_agree, ort_outputs, save, write_csv
from onnxmltools.convert.common.data_types import FloatTensorType
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from onnxfuse.availability import numpy_available, present
from onnxfuse.explain import numpy_effects
from onnxfuse.pipeline import merge
from onnxfuse.signals import Signals
from onnxfuse.spec import FuseSpec, ModelSpec

GROUPS = (("a", "b"), ("c", "d"), ("e",))
COLUMNS = ("a", "b", "c", "d", "e")


def task_rows(count: int, seed: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, 5)).astype(np.float32)
    logit = 1.2 * x[:, 0] - x[:, 1] + x[:, 2] + 0.8 * x[:, 3] + 0.6 * x[:, 4]
    if task == "regression":
        return x, (logit + 0.5 * rng.normal(size=count)).astype(np.float32)
    return x, (rng.random(count) < 1 / (1 + np.exp(-logit))).astype(np.int64)


def sources(folder: Path, task: str) -> list[Path]:
    """The three sources, each trained on rows of its own."""
    paths = []
    for number, group in enumerate(GROUPS):
        x, y = task_rows(1500, 10 + number, task)
        columns = [COLUMNS.index(c) for c in group]
        x = x[:, columns]
        if number == 1:
            cls = lightgbm.LGBMClassifier if task == "classification" else lightgbm.LGBMRegressor
            model = cls(n_estimators=40, verbose=-1, random_state=0).fit(x, y)
            proto = onnxmltools.convert_lightgbm(model, initial_types=[("input", FloatTensorType([None, len(group)]))],
                                                 zipmap=False)  # fmt: skip
        else:
            if task == "classification":
                model = make_pipeline(StandardScaler(), LogisticRegression()) if number == 0 else \
                    GradientBoostingClassifier(n_estimators=30, random_state=0)  # fmt: skip
            else:
                model = make_pipeline(StandardScaler(), Ridge()) if number == 0 else \
                    GradientBoostingRegressor(n_estimators=30, random_state=0)  # fmt: skip
            model.fit(x, y)
            options = {"zipmap": False} if task == "classification" else None
            proto = to_onnx(model, x[:1], options=options, target_opset=17)
        paths.append(save(proto, folder / f"s{number}.onnx"))
    return paths


def with_missing_groups(x: np.ndarray, seed: int) -> np.ndarray:
    """Rows missing each combination of groups (all of them included), and some with only `a` missing."""
    rng = np.random.default_rng(seed)
    x = x.copy()
    pattern = rng.integers(0, 8, size=len(x))  # bit g set: group g missing
    for g, group in enumerate(GROUPS):
        x[np.ix_((pattern >> g) & 1 == 1, [COLUMNS.index(c) for c in group])] = np.nan
    x[rng.random(len(x)) < 0.1, 0] = np.nan  # partly missing: the linear source's output turns NaN
    return x


def source_signals(paths: list[Path], x: np.ndarray, task: str) -> Signals:
    """The sources run alone on their columns, as the head reads them (and which are available): binary
    probabilities over the target's classes 0, 1 (the head reads P(1)), or the prediction."""
    per_model = []
    for path, group in zip(paths, GROUPS):
        name = onnx.load(str(path)).graph.input[0].name
        outputs = ort_outputs(path, {name: x[:, [COLUMNS.index(c) for c in group]]})
        if task == "classification":
            per_model.append(np.asarray(next(v for k, v in outputs.items() if "prob" in k), dtype=np.float32))
        else:
            per_model.append(np.asarray(next(iter(outputs.values())), dtype=np.float32).reshape(len(x), 1))
    feature_columns = tuple(tuple(COLUMNS.index(c) for c in group) for group in GROUPS)
    available = numpy_available(per_model, present(x, feature_columns, len(x)))
    columns = ((1,) if task == "classification" else (0,),) * len(GROUPS)
    flags = (task == "classification",) * len(GROUPS)
    return Signals(tuple(per_model), columns, flags, available, feature_columns)


@pytest.mark.parametrize(
    ("task", "fusion", "meta", "passthrough"),
    [
        ("classification", "stack", "linear", False),
        pytest.param("classification", "stack", "gbdt", True, marks=pytest.mark.slow),  # ~1 min: the slow env
        ("classification", "gate", "auto", False),
        ("classification", "mean", "auto", False),
        ("regression", "stack", "linear", False),
        ("regression", "gate", "auto", False),
    ],
)
def test_explain_outputs_equal_their_numpy_recomputation(tmp_path: Path, task, fusion, meta, passthrough) -> None:
    paths = sources(tmp_path, task)
    x, y = task_rows(1200, 1, task)
    data = write_csv(tmp_path / "joint.csv", {"x": with_missing_groups(x, 2), "y": y}, columns=COLUMNS)
    out = tmp_path / "fused.onnx"
    result = merge(FuseSpec(models=tuple(ModelSpec(p, g) for p, g in zip(paths, GROUPS)), output=out, data=data,
                            target="y", fusion=fusion, meta=meta, passthrough=passthrough, explain=True))  # fmt: skip
    test = with_missing_groups(task_rows(400, 3, task)[0], 4)
    fused = assert_runtimes_agree(out, {"features": test})
    signals = source_signals(paths, test, task)
    np.testing.assert_array_equal(fused["available"], signals.mask)
    assert (~signals.mask).all(axis=1).any() and signals.mask.all(axis=1).any()  # every pattern is exercised
    head, features = result.head, test if result.head.uses_features else None
    key = "probabilities" if task == "classification" else "prediction"
    assert np.isfinite(fused[key]).all() and np.isfinite(fused["source_effects"]).all()
    np.testing.assert_allclose(fused[key], head.predict(signals, features), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(fused["source_effects"], numpy_effects(head, signals, features), rtol=1e-4, atol=5e-5)
    assert (fused["source_effects"][~signals.mask] == 0).all()  # masking an unavailable source changes nothing
    if fusion in ("mean", "gate"):
        weights = getattr(head, "head", head).weights(signals, features)
        np.testing.assert_allclose(fused["weights"], weights, rtol=1e-4, atol=1e-6)
        sums = fused["weights"].sum(axis=1)
        np.testing.assert_allclose(sums[signals.mask.any(axis=1)], 1.0, atol=1e-5)
        assert (sums[~signals.mask.any(axis=1)] == 0).all()
    else:
        assert "weights" not in fused
    prior = fused[key][~signals.mask.any(axis=1)]
    np.testing.assert_allclose(prior, np.broadcast_to(prior[0], prior.shape))  # one answer for rows without a source
