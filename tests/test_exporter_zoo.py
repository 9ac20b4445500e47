"""Breadth: forty-two real exports (skl2onnx, onnxmltools LightGBM/XGBoost, CatBoost, torch.onnx dynamo and
legacy) merged with every fusion head. No merge ends in an internal error, each refusal is the expected one
line, and every written file is valid, verified and gives true probability distributions.

Slow (a few minutes): tox env `zoo`, marker `zoo`.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_checker_and_portable, assert_one_error_line, assert_runtimes_agree, ort_outputs, run_cli

pytestmark = pytest.mark.zoo

ROWS, SOURCE_ROWS = 2400, 1200  # sources learn from the first rows, the merge fuses on the others
FUSIONS = ("stack", "mean", "vote", "gate")
# exports whose class output holds decision scores: stacking reads them, mean/vote/gate must refuse
SCORES = {"skl_lr_raw", "skl_lr3_raw", "skl_svc_noprob"}
# exports onnx's reference evaluator computes otherwise (multi-class SVM probabilities): verified around, one warning
EVALUATOR_DIFFERS = {"skl_svc3"}


def _table() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 6)).astype(np.float32)
    logit = x[:, 0] - x[:, 1] + x[:, 2] + 0.5 * x[:, 3] + x[:, 0] * x[:, 2]
    return {
        "x": x,
        "y": (logit > 0).astype(np.int64),
        "y3": np.digitize(logit, [-1.0, 1.0]).astype(np.int64),
        "yr": (2 * x[:, 0] - x[:, 2] + 0.3 * x[:, 4] + 0.1 * rng.normal(size=ROWS)).astype(np.float32),
    }


def _sklearn_exports(a: np.ndarray, t: dict[str, np.ndarray]) -> dict[str, tuple[str, onnx.ModelProto]]:
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, SVR

    def forest() -> RandomForestClassifier:
        return RandomForestClassifier(10, max_depth=5, random_state=0).fit(a, t["y3"])

    def lr(label: str = "y") -> LogisticRegression:
        return LogisticRegression().fit(a, t[label])

    plain, wide = {"zipmap": False}, a.astype(np.float64)
    return {
        "skl_lr": ("y", to_onnx(lr(), a[:1])),
        "skl_lr_nozip": ("y", to_onnx(lr(), a[:1], options=plain)),
        "skl_lr_raw": ("y", to_onnx(lr(), a[:1], options={**plain, "raw_scores": True})),
        "skl_lr3_raw": ("y3", to_onnx(lr("y3"), a[:1], options={**plain, "raw_scores": True})),
        "skl_lr_class_labels": ("y", to_onnx(lr(), a[:1], options={**plain, "output_class_labels": True})),
        "skl_rf_columns": ("y3", to_onnx(forest(), a[:1], options={"zipmap": "columns"})),
        "skl_rf3": ("y3", to_onnx(forest(), a[:1])),
        "skl_gb": ("y", to_onnx(GradientBoostingClassifier(n_estimators=20, random_state=0).fit(a, t["y"]), a[:1])),
        "skl_svc": ("y", to_onnx(SVC(probability=True, random_state=0).fit(a[:400], t["y"][:400]), a[:1])),
        "skl_svc_noprob": ("y", to_onnx(SVC(random_state=0).fit(a[:400], t["y"][:400]), a[:1])),
        "skl_svc3": ("y3", to_onnx(SVC(probability=True, random_state=0).fit(a[:400], t["y3"][:400]), a[:1])),
        "skl_knn": ("y", to_onnx(KNeighborsClassifier().fit(a, t["y"]), a[:1])),
        "skl_nb": ("y", to_onnx(GaussianNB().fit(a, t["y"]), a[:1])),
        "skl_mlp": ("y", to_onnx(MLPClassifier((16,), max_iter=300, random_state=0).fit(a, t["y"]), a[:1])),
        "skl_pipeline": ("y", to_onnx(make_pipeline(StandardScaler(), LogisticRegression()).fit(a, t["y"]), a[:1])),
        "skl_double": ("y", to_onnx(LogisticRegression().fit(wide, t["y"]), wide[:1], options=plain)),
        "skl_linear_regression": ("yr", to_onnx(LinearRegression().fit(a, t["yr"]), a[:1])),
        "skl_ridge": ("yr", to_onnx(Ridge().fit(a, t["yr"]), a[:1])),
        "skl_forest_regressor": ("yr", to_onnx(RandomForestRegressor(10, max_depth=5).fit(a, t["yr"]), a[:1])),
        "skl_svr": ("yr", to_onnx(SVR().fit(a[:400], t["yr"][:400]), a[:1])),
    }


def _boosting_exports(a: np.ndarray, t: dict[str, np.ndarray], folder: Path) -> dict[str, tuple[str, onnx.ModelProto]]:
    import catboost
    import lightgbm
    import onnxmltools
    import xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    initial = [("X", FloatTensorType([None, a.shape[1]]))]

    def lgbm(estimator, label: str, **options) -> tuple[str, onnx.ModelProto]:
        return label, onnxmltools.convert_lightgbm(estimator.fit(a, t[label]), initial_types=initial, **options)

    def xgb(estimator, label: str) -> tuple[str, onnx.ModelProto]:
        return label, onnxmltools.convert_xgboost(estimator.fit(a, t[label]), initial_types=initial)

    exports = {
        "lgbm": lgbm(lightgbm.LGBMClassifier(n_estimators=20, verbose=-1), "y"),
        "lgbm3": lgbm(lightgbm.LGBMClassifier(n_estimators=20, verbose=-1), "y3", zipmap=False),
        "lgbm_regressor": lgbm(lightgbm.LGBMRegressor(n_estimators=20, verbose=-1), "yr"),
        "xgb": xgb(xgboost.XGBClassifier(n_estimators=20, max_depth=3), "y"),
        "xgb3": xgb(xgboost.XGBClassifier(n_estimators=20, max_depth=3), "y3"),
        "xgb_regressor": xgb(xgboost.XGBRegressor(n_estimators=20, max_depth=3), "yr"),
    }
    options = {"iterations": 30, "verbose": 0, "random_seed": 0, "allow_writing_files": False}
    for name, label, estimator in (
        ("catboost", "y", catboost.CatBoostClassifier(**options)),
        ("catboost3", "y3", catboost.CatBoostClassifier(**options)),
        ("catboost_regressor", "yr", catboost.CatBoostRegressor(**options)),
    ):
        estimator.fit(a, t[label]).save_model(str(folder / f"{name}.onnx"), format="onnx")
        exports[name] = (label, onnx.load(str(folder / f"{name}.onnx")))
    return exports


def _torch_exports(a: np.ndarray, t: dict[str, np.ndarray]) -> dict[str, tuple[str, onnx.ModelProto]]:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(a.shape[1], 16), torch.nn.ReLU())
            self.head = torch.nn.Linear(16, width)

        def forward(self, x):
            return self.head(self.body(x))

    def trained(width: int, target: np.ndarray, loss: Callable):
        net, inputs = Net(width), torch.from_numpy(a)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.03)
        for _ in range(100):
            optimizer.zero_grad()
            loss(net(inputs), torch.from_numpy(target)).backward()
            optimizer.step()
        return net.eval()

    class Wrap(torch.nn.Module):
        def __init__(self, net, mode: str) -> None:
            super().__init__()
            self.net, self.mode = net, mode
            self.register_buffer("classes", torch.tensor([0, 1, 2]))

        def forward(self, x):
            z = self.net(x)
            return {
                "softmax": lambda: torch.softmax(z, 1),
                "log_softmax": lambda: torch.log_softmax(z, 1),
                "sigmoid": lambda: torch.sigmoid(z),
                "argmax": lambda: (z, z.argmax(1)),
                "gathernd": lambda: (self.classes[z.argmax(1)], torch.softmax(z, 1)),
                "index_select": lambda: (torch.index_select(self.classes, 0, z.argmax(1)), torch.softmax(z, 1)),
                "embedding": lambda: (z, self.net.body(x)),
            }[self.mode]()

    def export(module, *, dynamo: bool = True) -> onnx.ModelProto:
        example = (torch.from_numpy(a[:4]),)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamo:
                dynamic = ({0: torch.export.Dim.DYNAMIC},)
                return torch.onnx.export(module, example, dynamo=True, dynamic_shapes=dynamic).model_proto
            buffer = io.BytesIO()
            axes = {"x": {0: "batch"}}
            torch.onnx.export(module, example, buffer, dynamo=False, input_names=["x"], dynamic_axes=axes)
            return onnx.load_from_string(buffer.getvalue())

    cross_entropy = torch.nn.functional.cross_entropy
    two, three = trained(2, t["y"], cross_entropy), trained(3, t["y3"], cross_entropy)
    one = trained(1, t["y"].astype(np.float32).reshape(-1, 1), torch.nn.functional.binary_cross_entropy_with_logits)
    regressor = trained(1, t["yr"].reshape(-1, 1), torch.nn.functional.mse_loss)
    return {
        "torch_logits2": ("y", export(two)),
        "torch_logits3": ("y3", export(three)),
        "torch_softmax3": ("y3", export(Wrap(three, "softmax"))),
        "torch_log_softmax3": ("y3", export(Wrap(three, "log_softmax"))),
        "torch_sigmoid": ("y", export(Wrap(one, "sigmoid"))),
        "torch_logit1": ("y", export(one)),
        "torch_argmax3": ("y3", export(Wrap(three, "argmax"))),
        "torch_gathernd3": ("y3", export(Wrap(three, "gathernd"))),
        "torch_index_select3": ("y3", export(Wrap(three, "index_select"))),
        "torch_embedding3": ("y3", export(Wrap(three, "embedding"))),
        "torch_regressor": ("yr", export(regressor)),
        "torch_legacy_softmax3": ("y3", export(Wrap(three, "softmax"), dynamo=False)),
        "torch_legacy_logits2": ("y", export(two, dynamo=False)),
    }


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> tuple[Path, dict[str, str], dict[str, np.ndarray]]:
    """Every export on columns a,b,c; a partner on d,e,f per target; the fusion rows as CSV."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression, Ridge

    folder = tmp_path_factory.mktemp("zoo")
    t = _table()
    a, b = t["x"][:SOURCE_ROWS, :3], t["x"][SOURCE_ROWS:, 3:]
    head = {k: v[:SOURCE_ROWS] for k, v in t.items()}
    exports = {**_sklearn_exports(a, head), **_boosting_exports(a, head, folder), **_torch_exports(a, head)}
    targets = {}
    for name, (label, proto) in exports.items():
        (folder / f"{name}.onnx").write_bytes(proto.SerializeToString())
        targets[name] = label
    tail = {k: v[SOURCE_ROWS:] for k, v in t.items()}
    partners = {
        "y": to_onnx(LogisticRegression().fit(b, tail["y"]), b[:1], options={"zipmap": False}),
        "y3": to_onnx(LogisticRegression().fit(b, tail["y3"]), b[:1], options={"zipmap": False}),
        "yr": to_onnx(Ridge().fit(b, tail["yr"]), b[:1]),
    }
    for label, proto in partners.items():
        (folder / f"partner_{label}.onnx").write_bytes(proto.SerializeToString())
    lines = ["a,b,c,d,e,f,y,y3,yr"]
    for row, y, y3, yr in zip(tail["x"], tail["y"], tail["y3"], tail["yr"]):
        lines.append(",".join(f"{v:.6f}" for v in row) + f",{y},{y3},{yr:.6f}")
    (folder / "fusion.csv").write_text("\n".join(lines) + "\n")
    return folder, targets, tail


EXPORTS = (
    "skl_lr", "skl_lr_nozip", "skl_lr_raw", "skl_lr3_raw", "skl_lr_class_labels", "skl_rf_columns", "skl_rf3",
    "skl_gb", "skl_svc", "skl_svc_noprob", "skl_svc3", "skl_knn", "skl_nb", "skl_mlp", "skl_pipeline", "skl_double",
    "skl_linear_regression", "skl_ridge", "skl_forest_regressor", "skl_svr",
    "lgbm", "lgbm3", "lgbm_regressor", "xgb", "xgb3", "xgb_regressor", "catboost", "catboost3", "catboost_regressor",
    "torch_logits2", "torch_logits3", "torch_softmax3", "torch_log_softmax3", "torch_sigmoid", "torch_logit1",
    "torch_argmax3", "torch_gathernd3", "torch_index_select3", "torch_embedding3", "torch_regressor",
    "torch_legacy_softmax3", "torch_legacy_logits2",
)  # fmt: skip


REGRESSORS = {name for name in EXPORTS if "regress" in name or name in ("skl_ridge", "skl_svr")}
CASES = [(name, fusion) for name in EXPORTS for fusion in FUSIONS if not (name in REGRESSORS and fusion == "vote")]


@pytest.mark.parametrize(("name", "fusion"), CASES, ids=[f"{name}-{fusion}" for name, fusion in CASES])
def test_merge_reads_every_common_export_with_every_fusion(zoo, name: str, fusion: str, tmp_path: Path) -> None:
    folder, targets, tail = zoo
    label = targets[name]
    assert (label == "yr") == (name in REGRESSORS), "vote is left out for regressors only"
    out = tmp_path / "fused.onnx"

    result = run_cli(
        "merge", folder / f"{name}.onnx", folder / f"partner_{label}.onnx", "--features", "a,b,c", "--features",
        "d,e,f", "--data", folder / "fusion.csv", "--target", label, "--fusion", fusion, "-o", out,
    )  # fmt: skip

    if name in SCORES and fusion != "stack":
        assert_one_error_line(result, f"model 1 ({name}.onnx)", "scores, not probabilities", "--fusion stack")
        assert not out.exists()
        return
    assert result.exit_code == 0, f"{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert_checker_and_portable(out)
    dtype = np.float64 if name == "skl_double" else np.float32
    feeds = {"features": tail["x"][:64].astype(dtype)}
    if name in EVALUATOR_DIFFERS and fusion != "vote":  # vote reads the labels, on which the runtimes agree
        assert f"warning: model 1 ({name}.onnx): onnx's reference evaluator" in result.stderr
        fused = ort_outputs(out, feeds)
    else:
        fused = assert_runtimes_agree(out, feeds)
    if label == "yr":
        assert np.isfinite(fused["prediction"]).all()
        return
    probabilities = fused["probabilities"]
    assert probabilities.shape == (64, 3 if label == "y3" else 2)
    assert probabilities.min() >= 0 and probabilities.max() <= 1 + 1e-6
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    if fusion == "stack":
        assert run_cli("verify", out, folder / f"{name}.onnx", folder / f"partner_{label}.onnx").exit_code == 0
