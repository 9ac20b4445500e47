"""Every option of a merge, once, as frozen dataclasses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

FUSIONS = ("stack", "mean", "vote", "gate")
METAS = ("linear", "mlp", "gbdt")
TASKS = ("auto", "classification", "regression")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One source model: its file and, optionally, the data columns its input takes."""

    path: Path
    features: tuple[str, ...] | None = None
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class FuseSpec:
    """A whole `onnxfuse merge` request, as the CLI or a spec file states it."""

    models: tuple[ModelSpec, ...]
    output: Path
    data: Path | None = None
    target: str | None = None
    fusion: str = "stack"
    meta: str = "linear"
    task: str = "auto"
    passthrough: bool = False
    holdout: float = 0.2
    seed: int = 0
    target_opset: int | None = None
    max_ir_version: int | None = None
    keep_model_outputs: bool = False
    optimize: bool = True
    ort: bool = False
    report: Path | None = None
