"""The ml ops' `post_transform`s as plain ai.onnx, with onnxruntime's own formulas (linear models, SVMs and trees
share them)."""

from __future__ import annotations

import numpy as np
import onnx

from onnxfuse.lower.base import Builder, Context, attributes, refuse

TRANSFORMS = ("NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT")


def probit(b: Builder, value: str) -> str:
    """sqrt(2) * erfinv(2p - 1) with onnxruntime's closed-form erfinv approximation (Winitzki, a = 0.147)."""
    f = np.float32
    x = b.op("Sub", [b.op("Mul", [value, b.const(f(2))]), b.const(f(1))])
    sign = b.op("Where", [b.op("Less", [x, b.const(f(0))]), b.const(f(-1)), b.const(f(1))])
    log = b.op("Log", [b.op("Mul", [b.op("Sub", [b.const(f(1)), x]), b.op("Add", [b.const(f(1)), x])])])
    v = b.op("Add", [b.const(f(2) / (f(np.pi) * f(0.147))), b.op("Mul", [log, b.const(f(0.5))])])
    v2 = b.op("Mul", [log, b.const(f(1) / f(0.147))])
    v3 = b.op("Sub", [b.op("Sqrt", [b.op("Sub", [b.op("Mul", [v, v]), v2])]), v])
    return b.op("Mul", [b.op("Mul", [sign, b.op("Sqrt", [v3])]), b.const(f(np.sqrt(2)))])


def softmax_zero(b: Builder, scores: str) -> str:
    """onnxruntime's SOFTMAX_ZERO over the last axis: scores within 1e-7 of zero are left out of the exponentials
    (they stay at score * exp(-max))."""
    f = np.float32
    peak = b.reduce("ReduceMax", scores, [-1])
    exps = b.op("Exp", [b.op("Sub", [scores, peak])])
    nonzero = b.greater(b.op("Abs", [scores]), b.const(f(1e-7)))
    scaled = b.op("Mul", [scores, b.op("Exp", [b.op("Neg", [peak])])])
    values = b.op("Where", [nonzero, exps, scaled])
    total = b.reduce("ReduceSum", b.op("Where", [nonzero, values, b.const(f(0))]), [-1])
    return b.op("Div", [values, total])


def transform(b: Builder, scores: str, kind: str, out: str | None = None) -> str:
    """A post_transform over [N, C] scores (C >= 2, or one score under PROBIT), as onnxruntime applies it."""
    outputs = [out] if out else 1
    if kind == "NONE":
        return b.op("Identity", [scores], outputs=outputs)
    if kind == "LOGISTIC":
        return b.op("Sigmoid", [scores], outputs=outputs)
    if kind == "SOFTMAX":
        return b.op("Softmax", [scores], outputs=outputs, axis=-1)
    done = softmax_zero(b, scores) if kind == "SOFTMAX_ZERO" else probit(b, scores)
    return b.op("Identity", [done], outputs=outputs)


def transform_name(context: Context, node: onnx.NodeProto) -> str:
    kind = attributes(node).get("post_transform", "NONE")
    if kind not in TRANSFORMS:
        raise refuse(context, node, f"post_transform {kind!r}")
    return kind
