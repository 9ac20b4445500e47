"""The inference benchmark's cases: what every case holds, how its fused files are made, and its competitors.

A case module (`example`, `three_sources`) trains or loads its source models and calls `build`,
which merges them twice (optimized, the default, and `--no-optimize`) with `onnxfuse.pipeline.merge`.
The competitors are built from a case alone: `separate_sessions` (each source file in its own
onnxruntime session, what (a) runs before its head) and `stacking_classifier` ((b), scikit-learn's
StackingClassifier over the original estimators).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from harness import session

from onnxfuse.pipeline import FuseResult, merge
from onnxfuse.spec import FuseSpec, ModelSpec

if TYPE_CHECKING:
    import onnxruntime as ort
    from sklearn.ensemble import StackingClassifier

    from onnxfuse.roles import OutputRole


@dataclasses.dataclass(frozen=True)
class Source:
    """One source model as users would run it: its file, its columns of `features`, its fitted estimator."""

    name: str
    path: Path
    features: tuple[str, ...]
    estimator: object


@dataclasses.dataclass(frozen=True)
class Case:
    """Everything one case needs: sources, fused files, the merge's result, the fusion rows."""

    key: str
    title: str
    sources: tuple[Source, ...]  # the files the fused model was merged from
    plain_sources: tuple[Source, ...]  # the same estimators with ZipMap off, for (a)
    fused: Path
    unoptimized: Path
    result: FuseResult  # of the optimized merge
    x: np.ndarray  # fusion rows, float32, columns in result.features order
    y: np.ndarray
    notes: tuple[str, ...] = ()


def build(
    key: str,
    title: str,
    sources: Sequence[Source],
    *,
    data: Path,
    folder: Path,
    plain_sources: Sequence[Source] | None = None,
    notes: Sequence[str] = (),
) -> Case:
    """Merge `sources` on `data` (target `y`) into `folder`, optimized and `--no-optimize`; read the fusion rows."""
    models = tuple(ModelSpec(s.path, s.features) for s in sources)
    fused, unoptimized = folder / "fused.onnx", folder / "fused_no_optimize.onnx"
    result, merge_s = _merge(FuseSpec(models=models, output=fused, data=data, target="y", meta="linear"))
    _, plain_s = _merge(FuseSpec(models=models, output=unoptimized, data=data, target="y", meta="linear",
                                 optimize=False))
    x, y = read_csv(data, result.features, "y")
    notes = (*notes, f"merge {merge_s:.2f} s (optimized), {plain_s:.2f} s (--no-optimize)")
    plain = tuple(plain_sources or sources)
    return Case(key, title, tuple(sources), plain, fused, unoptimized, result, x, y, notes)


def _merge(spec: FuseSpec) -> tuple[FuseResult, float]:
    start = time.perf_counter()
    return merge(spec), time.perf_counter() - start


def read_csv(path: Path, columns: Sequence[str], target: str) -> tuple[np.ndarray, np.ndarray]:
    """The named float columns (float32, as onnxfuse feeds them) and the integer target of a CSV."""
    header = path.read_text().split("\n", 1)[0].strip().split(",")
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    x = np.stack([table[:, header.index(c)] for c in columns], axis=1).astype(np.float32)
    return x, table[:, header.index(target)].astype(np.int64)


@dataclasses.dataclass(frozen=True)
class SourceSession:
    """One source file in its own session: its columns of `features` in, its probabilities out."""

    session: ort.InferenceSession
    input_name: str
    output_name: str
    columns: list[int]
    classes: tuple
    zipmap: bool

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: x[:, self.columns]})[0]
        if self.zipmap:  # a list of {class: probability} dicts
            out = np.array([[row[c] for c in self.classes] for row in out], dtype=np.float32)
        return out


def separate_sessions(
    sources: Sequence[Source], features: Sequence[str], threads: int
) -> tuple[list[SourceSession], list[OutputRole]]:
    """A session per source file, and its role as onnxfuse reads it (load -> normalize -> output_role)."""
    from onnxfuse.load import load_model
    from onnxfuse.normalize import normalize
    from onnxfuse.roles import output_role

    loaded = tuple(load_model(ModelSpec(s.path, s.features), i) for i, s in enumerate(sources, start=1))
    roles = [output_role(model) for model in normalize(loaded)[0]]
    runners = []
    for source, role in zip(sources, roles):
        sess = session(source.path, threads)
        name = role.probabilities or ""  # a cut ZipMap keeps its output's name: in the file, a list of dicts
        zipmap = {o.name: o for o in sess.get_outputs()}[name].type.startswith("seq")
        columns = [list(features).index(f) for f in source.features]
        runners.append(SourceSession(sess, sess.get_inputs()[0].name, name, columns, tuple(role.classes or ()), zipmap))
    return runners, roles


class Columns:
    """A picklable column picker for FunctionTransformer: `x[:, columns]`."""

    def __init__(self, columns: Sequence[int]) -> None:
        self.columns = list(columns)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x[:, self.columns]


def stacking_classifier(case: Case) -> StackingClassifier:
    """(b): StackingClassifier(cv="prefit") over the original fitted estimators, final LR fitted on the rows."""
    from sklearn.ensemble import StackingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    features = case.result.features
    picked = [FunctionTransformer(Columns([features.index(f) for f in s.features])) for s in case.sources]
    estimators = [(s.name.split()[0], make_pipeline(p, s.estimator)) for s, p in zip(case.sources, picked)]
    stack = StackingClassifier(estimators, final_estimator=LogisticRegression(max_iter=2000), cv="prefit")
    return stack.fit(case.x, case.y)
