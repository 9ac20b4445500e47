"""Case (ii): three sources on generated data, ZipMap off, fused with the stack linear head.

skl2onnx RandomForest on a,b, onnxmltools LightGBM on c,d and skl2onnx LogisticRegression on b,e,
each trained on 20,000 seeded rows of its own, fused on 4,000 more.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _children import repo_module

from cases import Case, Source, build

FUSION_ROWS = 4000
SOURCE_ROWS = 20_000
SEED = 0
PLAN = (("rf", ("a", "b")), ("lgbm", ("c", "d")), ("lr", ("b", "e")))


def logit(x: np.ndarray) -> np.ndarray:
    a, b, c, d, e = x.T.astype(np.float64)
    return 1.0 * a - 0.8 * b + 0.9 * c + 0.8 * np.tanh(2 * d) - 0.6 * e + 1.2 * a * c


def three_source_case(folder: Path, threads: int) -> Case:
    generators = repo_module("tests/generators.py")
    columns = generators.COLUMNS  # a, b, c, d, e
    rng = np.random.default_rng(SEED)
    sources = []
    for index, (name, features) in enumerate(PLAN, start=1):
        x, y = generators.bernoulli_rows(rng, (SOURCE_ROWS, len(columns)), logit)
        picked = x[:, [columns.index(f) for f in features]]
        estimator, proto = _fitted(name, picked, y, threads)
        path = generators.save(proto, folder / f"{name}.onnx")
        sources.append(Source(f"m{index} {name}", path, features, estimator))
    x, y = generators.bernoulli_rows(rng, (FUSION_ROWS, len(columns)), logit)
    data = generators.write_csv(folder / "fusion.csv", {"x": x, "y": y}, digits=".9g")
    note = (
        f"sources trained on {SOURCE_ROWS:,} rows each (RF 50 trees depth 8, LightGBM 100 trees 15 leaves, LR), "
        f"fused on {FUSION_ROWS:,} rows; all exported with ZipMap off"
    )
    title = "(ii) three sources: RF(a,b) + LightGBM(c,d) + LR(b,e)"
    return build("ii", title, sources, data=data, folder=folder, notes=(note,))


def _fitted(name: str, x: np.ndarray, y: np.ndarray, threads: int) -> tuple[object, object]:
    """The source's estimator fitted on (x, y), and its ONNX export with ZipMap off."""
    import lightgbm
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    if name == "lgbm":
        estimator = lightgbm.LGBMClassifier(
            n_estimators=100, num_leaves=15, random_state=SEED, verbose=-1, n_jobs=threads
        ).fit(x, y)
        initial = [("input", FloatTensorType([None, 2]))]
        return estimator, onnxmltools.convert_lightgbm(estimator, initial_types=initial, zipmap=False)
    if name == "rf":
        estimator = RandomForestClassifier(n_estimators=50, max_depth=8, random_state=SEED).fit(x, y)
    else:
        estimator = LogisticRegression(max_iter=1000).fit(x, y)
    return estimator, to_onnx(estimator, x[:1], target_opset=18, options={"zipmap": False})
