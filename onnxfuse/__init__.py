"""onnxfuse: merge trained ONNX models into one verified, portable ONNX file.

`merge(models, data, target=...)` returns a verified `MergeResult` (nothing written unless asked);
`FusedModel(path)` scores a fused file on data whose columns it takes by name.
"""

from __future__ import annotations

__version__ = "0.1.0"

from onnxfuse.api import MergeResult, merge
from onnxfuse.errors import OnnxfuseError, OnnxfuseWarning
from onnxfuse.fused_model import FusedModel
from onnxfuse.spec import ModelSpec

__all__ = ["FusedModel", "MergeResult", "ModelSpec", "OnnxfuseError", "OnnxfuseWarning", "__version__", "merge"]
