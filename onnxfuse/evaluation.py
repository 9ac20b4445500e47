"""Labelled rows scored by a fused model and its sources: what the hold-out table, `evaluate` and the HTML report
show."""

from __future__ import annotations

import dataclasses

import numpy as np

FUSED = "fused"


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One set of labelled rows, each model's answers on them, and the figures.

    `outputs` maps a model's name (each source's `m{i} name`, `fused`, and the
    from-scratch baseline where there is one) to its probabilities `[N, C]` (columns
    in `classes` order) or its prediction `[N]`; `truth` holds the labels (values of
    `classes`) or the targets. `available`, `effects` and `weights` are `[N, M]`,
    one column per source in `sources` order, where known (`--explain`'s outputs).
    `summary` is the JSON report: `metrics` per model (`report.metrics`), `rows`,
    and after a merge the fusion metadata (`chosen`, `candidates`, `cv`, `patterns`).
    """

    task: str
    classes: tuple | None
    truth: np.ndarray
    outputs: dict[str, np.ndarray]
    sources: tuple[str, ...]
    summary: dict
    available: np.ndarray | None = None
    effects: np.ndarray | None = None
    weights: np.ndarray | None = None

    @property
    def classification(self) -> bool:
        return self.task == "classification"

    def class_index(self) -> np.ndarray:
        """`truth` as class positions (classification only)."""
        position = {c: i for i, c in enumerate(self.classes or ())}
        return np.array([position[v] for v in self.truth.tolist()], dtype=np.int64)
