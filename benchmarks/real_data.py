"""The data sets and source models of `fusion_quality.py`: real tables that ship with scikit-learn,
features on their natural scales, and two synthetic ones.

Each data set names two feature groups and a trainer for each; a trainer fits an ordinary
estimator on its group's rows and exports it to ONNX the way a team would (skl2onnx,
onnxmltools for LightGBM, `torch.onnx.export` for a torch MLP), so onnxfuse sees the files
people actually hand it. `split` gives the rows of one repetition: A's, B's (disjoint), the
merge's and an external test set that the merge never sees.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
from _children import repo_module

Trainer = Callable[[np.ndarray, np.ndarray, int], onnx.ModelProto]

SHARE_A, SHARE_B = 0.3, 0.3  # of all rows; the rest are the joint rows
TEST_SHARE = 0.3  # of the joint rows: the external test set, never given to the merge


@dataclasses.dataclass(frozen=True)
class Source:
    """One team's model: the columns it reads, how it is trained and exported, and what its output is."""

    label: str  # for the table: "A: logistic on mean *"
    columns: tuple[str, ...]
    train: Trainer
    form: str = "probabilities"  # "probabilities" or "logits" (raw, softmax to read); a regressor's is its prediction


@dataclasses.dataclass(frozen=True)
class DataSet:
    """A table, its task and its two sources; `why` says what the data set tests."""

    name: str
    task: str  # "classification" or "regression"
    load: Callable[[], tuple[pd.DataFrame, np.ndarray]]
    sources: Callable[[Sequence[str]], tuple[Source, Source]]  # from the table's column names
    why: str
    needs: str | None = None  # a module the data set needs; without it the data set is skipped, saying so
    reps: int = 3  # repetitions when --reps is not given: fewer where one repetition is slow


@dataclasses.dataclass(frozen=True)
class Rows:
    """The row indices of one repetition."""

    a: np.ndarray
    b: np.ndarray
    merge: np.ndarray
    test: np.ndarray


def split(y: np.ndarray, seed: int, *, stratify: bool) -> Rows:
    """Shuffle the rows (stratified for classification, so small test sets hold every class):
    30 % train A, 30 % train B, of the remaining joint rows 30 % are the external test set."""
    from sklearn.model_selection import train_test_split

    def cut(index: np.ndarray, share: float, salt: int) -> tuple[np.ndarray, np.ndarray]:
        return train_test_split(
            index, train_size=share, random_state=seed * 1000 + salt, stratify=y[index] if stratify else None
        )

    a, rest = cut(np.arange(len(y)), SHARE_A, 1)
    b, joint = cut(rest, SHARE_B / (1 - SHARE_A), 2)
    test, merge = cut(joint, TEST_SHARE, 3)
    return Rows(np.sort(a), np.sort(b), np.sort(merge), np.sort(test))


# ---- trainers: fit on one group's rows, export to ONNX ----


def _classifier_onnx(model, x: np.ndarray, *, zipmap: bool = False) -> onnx.ModelProto:
    """skl2onnx with a float32 input; zipmap=False gives a probabilities tensor, True the default ZipMap."""
    from skl2onnx import to_onnx

    options = None if zipmap else {id(model): {"zipmap": False}}
    return to_onnx(model, x[:1].astype(np.float32), options=options)


def logistic(x: np.ndarray, y: np.ndarray, seed: int) -> onnx.ModelProto:
    """StandardScaler + LogisticRegression: the plain model a team ships first."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed)).fit(x, y)
    return _classifier_onnx(model, x)


def forest(x: np.ndarray, y: np.ndarray, seed: int) -> onnx.ModelProto:
    """A random forest, exported with the default ZipMap (onnxfuse reads both output styles)."""
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(n_estimators=200, min_samples_leaf=2, random_state=seed, n_jobs=1).fit(x, y)
    return _classifier_onnx(model, x, zipmap=True)


def boosting(x: np.ndarray, y: np.ndarray, seed: int) -> onnx.ModelProto:
    """scikit-learn gradient boosting, default ZipMap: model A of the original seed-like task."""
    from sklearn.ensemble import GradientBoostingClassifier

    model = GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=seed).fit(x, y)
    return _classifier_onnx(model, x, zipmap=True)


def lightgbm(x: np.ndarray, y: np.ndarray, seed: int) -> onnx.ModelProto:
    """LightGBM via onnxmltools (ZipMap output): model B of the original seed-like task."""
    import lightgbm as lgb
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = lgb.LGBMClassifier(n_estimators=60, verbose=-1, random_state=seed, n_jobs=1).fit(x, y)
    return onnxmltools.convert_lightgbm(model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))])


def torch_mlp(x: np.ndarray, y: np.ndarray, seed: int) -> onnx.ModelProto:
    """A small torch MLP (standardisation folded into its first layer) exported with `torch.onnx.export`
    returning raw logits, no softmax: the case the issue names."""
    import torch

    torch.manual_seed(seed)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    classes = int(y.max()) + 1
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, classes))
    inputs = torch.tensor((x - mean) / std, dtype=torch.float32)
    target = torch.tensor(y, dtype=torch.int64)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(inputs), target).backward()
        optimizer.step()
    with torch.no_grad():  # fold (x - mean) / std into the first layer: the model reads raw pixels
        first = net[0]
        first.bias -= first.weight @ torch.tensor(mean / std, dtype=torch.float32)
        first.weight /= torch.tensor(std, dtype=torch.float32)
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net, (torch.zeros(2, x.shape[1]),), input_names=["input"], output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("N")},), dynamo=True, verbose=False,
        )  # fmt: skip
    return program.model_proto


def ridge(x: np.ndarray, y: np.ndarray, seed: int) -> onnx.ModelProto:
    """StandardScaler + RidgeCV regression."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))).fit(x, y)
    return to_onnx(model, x[:1].astype(np.float32))


def boosting_regressor(x: np.ndarray, y: np.ndarray, seed: int) -> onnx.ModelProto:
    """scikit-learn gradient boosting regression, shallow: the other team's tree model."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingRegressor

    model = GradientBoostingRegressor(
        n_estimators=100, max_depth=2, learning_rate=0.05, subsample=0.8, random_state=seed
    ).fit(x, y)
    return to_onnx(model, x[:1].astype(np.float32))


# ---- the tables ----


def _sklearn(loader: Callable[..., object], **options: object) -> tuple[pd.DataFrame, np.ndarray]:
    bunch = loader(as_frame=True, **options)
    return bunch.data.astype(np.float64), bunch.target.to_numpy()


def _breast_cancer() -> tuple[pd.DataFrame, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    return _sklearn(load_breast_cancer)


def _digits() -> tuple[pd.DataFrame, np.ndarray]:
    from sklearn.datasets import load_digits

    return _sklearn(load_digits)


def _wine() -> tuple[pd.DataFrame, np.ndarray]:
    from sklearn.datasets import load_wine

    return _sklearn(load_wine)


def _diabetes() -> tuple[pd.DataFrame, np.ndarray]:
    from sklearn.datasets import load_diabetes

    frame, y = _sklearn(load_diabetes, scaled=False)
    return frame, y.astype(np.float64)


NATURAL_ROWS = 8000


def _natural_scales() -> tuple[pd.DataFrame, np.ndarray]:
    """Columns as a real table has them (income ~ 5e4 lognormal, a 600 +- 100 score, epoch seconds
    ~ 1.7e9, ages, tenure in months); the label's logit is linear in their standardised versions plus
    one income x score interaction across the two groups. A raw-feature head that does not scale
    its inputs sees a timestamp a million times larger than the rest: the `--passthrough` trap."""
    rng = np.random.default_rng(20261202)
    n = NATURAL_ROWS
    frame = pd.DataFrame({
        "income": rng.lognormal(np.log(5e4), 0.5, n),
        "age": rng.integers(18, 80, n).astype(np.float64),
        "score": rng.normal(600, 100, n).round(),
        "signup_ts": np.round(1.7e9 + rng.normal(0, 3e7, n)),
        "tenure_months": rng.gamma(2.0, 12.0, n).round(),
    })  # fmt: skip

    def z(values: np.ndarray) -> np.ndarray:
        return (values - values.mean()) / values.std()

    income = z(np.log(frame["income"].to_numpy()))
    score, age, ts, tenure = (z(frame[c].to_numpy()) for c in ("score", "age", "signup_ts", "tenure_months"))
    logit = 1.0 * income + 0.6 * age + 1.1 * score - 0.8 * ts + 0.5 * tenure + 0.8 * income * score
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return frame, y


SEED_LIKE_ROWS = 20_000


def _seed_like() -> tuple[pd.DataFrame, np.ndarray]:
    """tests/generators.interaction_task: N(0, 1) columns a..d, an a*c interaction neither source sees."""
    x, y = repo_module("tests/generators.py").interaction_task(SEED_LIKE_ROWS, seed=3)
    return pd.DataFrame(x.astype(np.float64), columns=["a", "b", "c", "d"]), y


def _by_prefix(columns: Sequence[str], prefix: str) -> tuple[str, ...]:
    return tuple(c for c in columns if c.startswith(prefix))


def _half(columns: Sequence[str], left: bool) -> tuple[str, ...]:
    """digits' `pixel_R_C` columns of the left (C 0-3) or right (C 4-7) half of the 8x8 image."""
    return tuple(c for c in columns if (int(c.rsplit("_", 1)[1]) < 4) == left)


DATASETS: dict[str, DataSet] = {
    d.name: d
    for d in (
        DataSet(
            "breast_cancer", "classification", _breast_cancer,
            lambda cols: (
                Source("A: logistic on mean *", _by_prefix(cols, "mean "), logistic),
                Source("B: forest on worst *", _by_prefix(cols, "worst "), forest),
            ),
            "binary, 569 rows. mean/worst: alone each is ~94-96 % accurate (the `error` columns reach ~85 %, "
            "too weak to be a comparable source); the groups are strongly correlated, so fusion gains little",
        ),
        DataSet(
            "digits", "classification", _digits,
            lambda cols: (
                Source("A: logistic on left half", _half(cols, True), logistic),
                Source("B: LightGBM on right half", _half(cols, False), lightgbm),
            ),
            "10 classes, 1797 rows, pixel counts 0-16; each half alone is a weak digit reader",
        ),
        DataSet(
            "digits_torch", "classification", _digits,
            lambda cols: (
                Source("A: logistic on left half", _half(cols, True), logistic),
                Source("B: torch MLP on right half (raw logits)", _half(cols, False), torch_mlp, "logits"),
            ),
            "digits with B a torch MLP whose ONNX output is raw logits, no softmax",
            needs="torch",
        ),
        DataSet(
            "wine", "classification", _wine,
            lambda cols: (
                Source("A: logistic on first 7", tuple(cols[:7]), logistic),
                Source("B: forest on last 6", tuple(cols[7:]), forest),
            ),
            "3 classes, 178 rows: the test set is ~22 rows, one row is 0.045 of accuracy",
        ),
        DataSet(
            "diabetes", "regression", _diabetes,
            lambda cols: (
                Source("A: ridge on age, sex, bmi, bp", ("age", "sex", "bmi", "bp"), ridge),
                Source("B: boosting on s1..s6", tuple(f"s{i}" for i in range(1, 7)), boosting_regressor),
            ),
            "regression, 442 rows, unscaled (age in years, bp in mm Hg, s1..s6 serum values)",
        ),
        DataSet(
            "natural_scales", "classification", _natural_scales,
            lambda cols: (
                Source("A: logistic on income, age, tenure", ("income", "age", "tenure_months"), logistic),
                Source("B: boosting on score, signup_ts", ("score", "signup_ts"), boosting),
            ),
            f"synthetic binary, {NATURAL_ROWS} rows: income ~5e4, score ~600, epoch seconds ~1.7e9 (the "
            "--passthrough trap), an income x score interaction across the groups",
        ),
        DataSet(
            "seed_like", "classification", _seed_like,
            lambda cols: (
                Source("A: boosting on a, b", ("a", "b"), boosting),
                Source("B: LightGBM on c, d", ("c", "d"), lightgbm),
            ),
            f"the original synthetic task, {SEED_LIKE_ROWS} rows of N(0, 1): an a*c interaction neither source sees",
        ),
    )
}  # fmt: skip


def write_source(source: Source, x: np.ndarray, y: np.ndarray, seed: int, path: Path) -> Path:
    """Train `source` on its columns of these rows and write its ONNX file."""
    path.write_bytes(source.train(x, y, seed).SerializeToString())
    return path


def source_outputs(path: Path, x: np.ndarray, task: str, form: str) -> np.ndarray:
    """What the source's ONNX file says for rows `x`: class probabilities [N, C] (a ZipMap's dicts
    or a tensor; raw logits through a softmax), or a regressor's prediction [N]."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = np.float64 if session.get_inputs()[0].type == "tensor(double)" else np.float32
    outputs = session.run(None, {session.get_inputs()[0].name: x.astype(dtype)})
    if task == "regression":
        return np.asarray(outputs[0], dtype=np.float64).reshape(len(x))
    for value in outputs:
        if isinstance(value, list):  # ZipMap: one {class: probability} dict per row
            keys = sorted(value[0])
            return np.array([[row[k] for k in keys] for row in value], dtype=np.float64)
    matrix = next(np.asarray(v, dtype=np.float64) for v in outputs if np.asarray(v).ndim == 2)
    if form == "logits":
        shifted = np.exp(matrix - matrix.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return matrix
