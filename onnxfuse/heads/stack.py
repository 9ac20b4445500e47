"""`--fusion stack` (the default): a scikit-learn meta-learner on the sources' signals, converted by skl2onnx.

Rules: the meta-learner reads each source's `meta_columns` (P(positive) for a
binary target, as scikit-learn's StackingClassifier; the source's classes
otherwise; a regressor's prediction; raw scores) and, with `--passthrough`, the
raw features with NaN read as the column mean. `--meta` chooses its family
(linear, mlp, gbdt). It combines any sources, classifiers and regressors alike,
and is the one head that reads unlabeled scores. The converted head (zipmap off,
at the graph's opsets) is attached under `fusion/head/`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnxfuse.heads.base import Fusion, LabelSpace, Standardizer, imputed_features
from onnxfuse.roles import OutputRole
from onnxfuse.signals import Signals
from onnxfuse.support import ML, PREFIX, add_constant, add_node, as_float, flatten


class Stack(Fusion):
    name = "stack"
    trains = True
    options = ("meta", "passthrough")
    reads_scores = True

    def check_sources(self, roles: Sequence[OutputRole], task: str) -> None:
        """A meta-learner reads whatever the sources output."""

    def needs_features(self, spec) -> bool:
        return spec.passthrough

    def fit(self, signals: Signals, features, target: np.ndarray, space: LabelSpace, spec) -> Stacked:
        standardizer = Standardizer.fit(features) if spec.passthrough else None
        extra = standardizer.impute(features) if standardizer is not None else None
        estimator = fit_estimator(spec.meta, space.task, meta_matrix(signals, extra), target, seed=spec.seed)
        return Stacked(estimator, spec.meta, signals.meta_columns, standardizer)

    def baseline_family(self, spec) -> str:
        return spec.meta


@dataclasses.dataclass(frozen=True)
class Stacked:
    """A fitted stacking head (a `Head`): the estimator, and the imputation of passthrough features."""

    estimator: object
    meta: str
    meta_columns: tuple[tuple[int, ...], ...]
    standardizer: Standardizer | None = None  # set with --passthrough

    @property
    def uses_features(self) -> bool:
        return self.standardizer is not None

    def predict(self, signals: Signals, features: np.ndarray | None) -> np.ndarray:
        extra = self.standardizer.impute(features) if self.standardizer is not None else None
        x = meta_matrix(signals, extra)
        if hasattr(self.estimator, "predict_proba"):
            return self.estimator.predict_proba(x)
        return self.estimator.predict(x)

    def metadata(self) -> dict:
        return {"meta": self.meta, "passthrough": self.uses_features}

    def build(self, model: ir.Model, signals: Sequence[ir.Value], space: LabelSpace, versions) -> dict:
        from skl2onnx import to_onnx  # only stacking needs the converter

        from onnxfuse.normalize import unify_versions
        from onnxfuse.splice import attach

        graph = model.graph
        columns = []
        for m, (signal, chosen) in enumerate(zip(signals, self.meta_columns)):
            indices = add_constant(graph, f"m{m + 1}/meta_columns", np.array(chosen, dtype=np.int64))
            columns.append(add_node(graph, "Gather", [signal, indices], {"axis": 1}, f"m{m + 1}/meta"))
        if self.standardizer is not None:
            columns.append(imputed_features(graph, self.standardizer))
        meta = add_node(graph, "Concat", columns, {"axis": 1}, "meta_input") if len(columns) > 1 else columns[0]
        width = sum(len(c) for c in self.meta_columns) + (len(self.standardizer.mean) if self.uses_features else 0)
        classify = space.task == "classification"
        proto = to_onnx(
            self.estimator,
            np.zeros((1, width), dtype=np.float32),
            target_opset={"": versions.opset, ML: versions.ml_opset},
            options={"zipmap": False} if classify else None,
        )
        label = f"the --meta {self.meta} head"
        proto = unify_versions(proto, label, versions)
        outputs = attach(model, proto, prefix=f"{PREFIX}head/", inputs={proto.graph.input[0].name: meta}, label=label)
        if classify:
            return {"label": outputs["label"], "probabilities": outputs["probabilities"]}
        return {"prediction": flatten(graph, as_float(graph, outputs["variable"], "head/prediction_float"))}


def meta_matrix(signals: Signals, features: np.ndarray | None) -> np.ndarray:
    """The meta-learner's input: each source's chosen columns, then the raw features."""
    blocks = [s[:, list(cols)] for s, cols in zip(signals.per_model, signals.meta_columns)]
    if features is not None:
        blocks.append(features)
    return np.concatenate(blocks, axis=1).astype(np.float32)


def fit_estimator(family: str, task: str, x: np.ndarray, y: np.ndarray, *, seed: int):
    """A scikit-learn estimator of `family` (see METAS) that skl2onnx converts."""
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classify = task == "classification"
    if family == "linear":
        estimator = LogisticRegression(max_iter=2000) if classify else Ridge(alpha=1.0)
    elif family == "mlp":
        cls = MLPClassifier if classify else MLPRegressor
        estimator = make_pipeline(StandardScaler(), cls(hidden_layer_sizes=(32,), max_iter=500, random_state=seed))
    else:
        cls = GradientBoostingClassifier if classify else GradientBoostingRegressor
        estimator = cls(n_estimators=150, max_depth=3, learning_rate=0.1, random_state=seed)
    return estimator.fit(x, y)
