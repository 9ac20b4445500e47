"""The fusion heads, one module each, and the one table that names them (`--fusion NAME`).

Adding a head: write its module (a `Fusion` that fits a `Head`, see `base`) and add it to FUSIONS.
The table names each head's class by import path, so the command line lists the heads without
importing them (and onnx, onnx-ir, scikit-learn with them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onnxfuse.heads.base import Fusion

FUSIONS: dict[str, str] = {
    "stack": "onnxfuse.heads.stack:Stack",
    "mean": "onnxfuse.heads.mean:Mean",
    "vote": "onnxfuse.heads.vote:Vote",
    "gate": "onnxfuse.heads.gate:LearnedGate",
}
METAS = ("auto", "linear", "mlp", "gbdt")  # the stacking head's learners (see heads.learners); auto: heads.auto


def fusion(name: str) -> Fusion:
    """The head `--fusion name` chooses; its module is imported here."""
    module, _, cls = FUSIONS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
