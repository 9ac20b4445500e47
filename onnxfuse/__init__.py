"""onnxfuse: merge trained ONNX models into one verified, portable ONNX file.

`merge(models, data, target=...)` returns a verified `MergeResult` (nothing written unless asked);
`FusedModel(path)` scores a fused file on data whose columns it takes by name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# imported on first use (PEP 562), so the command line and `import onnxfuse.cli` start light
_EXPORTS = {
    "merge": "onnxfuse.api",
    "MergeResult": "onnxfuse.api",
    "FusedModel": "onnxfuse.fused_model",
    "ModelSpec": "onnxfuse.spec",
    "OnnxfuseError": "onnxfuse.errors",
    "OnnxfuseWarning": "onnxfuse.errors",
}
__all__ = ["FusedModel", "MergeResult", "ModelSpec", "OnnxfuseError", "OnnxfuseWarning", "__version__", "merge"]

if TYPE_CHECKING:
    from onnxfuse.api import MergeResult, merge
    from onnxfuse.errors import OnnxfuseError, OnnxfuseWarning
    from onnxfuse.fused_model import FusedModel
    from onnxfuse.spec import ModelSpec


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'onnxfuse' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
