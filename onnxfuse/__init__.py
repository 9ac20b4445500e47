"""onnxfuse: merge trained ONNX models into one verified, portable ONNX file."""

from __future__ import annotations

__version__ = "0.1.0"
