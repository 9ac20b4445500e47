"""Linear models and the per-feature ops around them (LinearClassifier/Regressor, Scaler, Normalizer, Binarizer,
Imputer, ArrayFeatureExtractor, FeatureVectorizer) as plain ai.onnx, following onnxruntime's kernels exactly."""

from __future__ import annotations

import functools
from collections.abc import MutableMapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxfuse.lower.base import Builder, Context, Lowered, Rule, attributes, refuse
from onnxfuse.lower.transforms import probit, transform, transform_name

FLOAT = TensorProto.FLOAT
INTEGERS = (TensorProto.INT32, TensorProto.INT64)


def typed(rule: Rule) -> Rule:
    """The rule, then the types its plain nodes give the ml node's outputs, recorded in the context: onnx infers
    no shapes for most ml ops, so a rule behind another ml op (Imputer -> Scaler, skl2onnx's usual pipeline)
    would otherwise see neither rank nor type and refuse."""

    @functools.wraps(rule)
    def run(node: onnx.NodeProto, context: Context) -> Lowered:
        lowered = rule(node, context)
        if isinstance(context.types, MutableMapping):
            for name, kind in _inferred(node, context, lowered).items():
                if context.shape(name) is None:  # never replace what inference on the whole model knew
                    context.types[name] = kind
        return lowered

    return run


def _inferred(node: onnx.NodeProto, context: Context, lowered: Lowered) -> dict[str, onnx.TypeProto]:
    known = [helper.make_value_info(name, context.types[name]) for name in node.input if name in context.types]
    graph = helper.make_graph(lowered.nodes, "rule", known, [], initializer=lowered.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", context.opset)])
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    return {v.name: v.type for v in inferred if v.name in node.output and v.type.tensor_type.elem_type}


def as_float(b: Builder, name: str) -> str:
    """The value as float, as the ml ops read every numeric input."""
    return name if b.context.elem_type(name) == FLOAT else b.op("Cast", [name], to=FLOAT)


def known_rank(context: Context, node: onnx.NodeProto, name: str) -> int:
    """The input's rank, for rules whose axis depends on it (refused when inference does not know it)."""
    shape = context.shape(name)
    if shape is None:
        raise refuse(context, node, f"the rank of input '{name}' is unknown")
    return len(shape)


def as_rows(b: Builder, node: onnx.NodeProto, width: int) -> str:
    """The op's input X as float [N, width]: a vector is one row, as onnxruntime reads it; rank > 2 is refused."""
    context, name = b.context, node.input[0]
    shape = context.shape(name)
    if shape is not None and len(shape) > 2:
        raise refuse(context, node, f"input '{name}' of rank {len(shape)} (the op takes rank 1 or 2)")
    return b.op("Reshape", [as_float(b, name), b.const(np.array([-1, width], dtype=np.int64), "shape")])


def _affine(b: Builder, node: onnx.NodeProto, targets: int, intercepts: list[float] | None) -> str:
    """X (rank 1 or 2, any numeric type) times coefficients^T plus intercepts: [N, targets] floats."""
    coefficients = attributes(node).get("coefficients", [])
    if not coefficients or len(coefficients) % targets:
        raise refuse(b.context, node, f"{len(coefficients)} coefficients for {targets} targets")
    weights = np.asarray(coefficients, dtype=np.float32).reshape(targets, -1)
    inputs = [as_rows(b, node, weights.shape[1]), b.const(weights, "coefficients")]
    if intercepts:
        inputs.append(b.const(np.asarray(intercepts, dtype=np.float32), "intercepts"))
    return b.op("Gemm", inputs, transB=1)


def linear_classifier(node: onnx.NodeProto, context: Context) -> Lowered:
    """Scores X.W^T + b; label by argmax (first maximum) or, with one score column, by score > 0; a second
    probability column 1 - s when one score column has two class labels, as onnxruntime writes it."""
    b, attrs = Builder(context, node), attributes(node)
    kind = transform_name(context, node)
    intercepts = attrs.get("intercepts") or []
    if not intercepts:
        raise refuse(context, node, "no intercepts (onnxruntime takes the class count from them)")
    labels = attrs.get("classlabels_strings") or attrs.get("classlabels_ints") or []
    strings = bool(attrs.get("classlabels_strings"))
    scores = _affine(b, node, len(intercepts), intercepts)
    label, probabilities = node.output[0], node.output[1] if len(node.output) > 1 else ""
    if len(intercepts) == 1:
        _binary(b, node, scores, labels, strings=strings, kind=kind)
        return b.result()
    if len(labels) != len(intercepts):
        raise refuse(context, node, f"{len(labels)} class labels for {len(intercepts)} score columns")
    if label:
        winner = b.op("ArgMax", [scores], axis=1, keepdims=0)
        classes = b.const(np.asarray(labels, dtype=object if strings else np.int64), "classes")
        b.op("Gather", [classes, winner], outputs=[label])
    if probabilities:
        transform(b, scores, kind, out=probabilities)
    return b.result()


def _binary(b: Builder, node: onnx.NodeProto, score: str, labels: list, *, strings: bool, kind: str) -> None:
    """One score column, as onnxruntime computes it: label = labels[1] if s > 0 else labels[0] (1/0 without two
    labels). With two labels the scores are [1 - p, p], p = sigmoid(s) under LOGISTIC, else s (PROBIT, which
    onnxruntime leaves half-written, is refused); without, the one column s, or probit(s) under PROBIT."""
    two = len(labels) == 2
    if node.output[0]:
        pair = list(labels) if two else (["0", "1"] if strings else [0, 1])
        positive = b.op("Cast", [b.greater(score, b.const(np.float32(0)))], to=TensorProto.INT64)
        flat = b.op("Reshape", [positive, b.const(np.array([-1], dtype=np.int64), "shape")])
        classes = b.const(np.asarray(pair, dtype=object if strings else np.int64), "classes")
        b.op("Gather", [classes, flat], outputs=[node.output[0]])
    if len(node.output) < 2 or not node.output[1]:
        return
    if two and kind == "PROBIT":
        raise refuse(b.context, node, "PROBIT on one score column with two class labels")
    if two:
        p = b.op("Sigmoid", [score]) if kind == "LOGISTIC" else score
        b.op("Concat", [b.op("Sub", [b.const(np.float32(1)), p]), p], outputs=[node.output[1]], axis=1)
    else:
        b.op("Identity", [probit(b, score) if kind == "PROBIT" else score], outputs=[node.output[1]])


def linear_regressor(node: onnx.NodeProto, context: Context) -> Lowered:
    """X.W^T + b over `targets` columns; onnxruntime drops intercepts of the wrong length and, for one target,
    applies only PROBIT."""
    b, attrs = Builder(context, node), attributes(node)
    kind = transform_name(context, node)
    targets = attrs.get("targets", 1)
    intercepts = attrs.get("intercepts") or []
    scores = _affine(b, node, targets, intercepts if len(intercepts) == targets else None)
    if targets == 1:
        b.op("Identity", [probit(b, scores) if kind == "PROBIT" else scores], outputs=[node.output[0]])
    else:
        transform(b, scores, kind, out=node.output[0])
    return b.result()


def scaler(node: onnx.NodeProto, context: Context) -> Lowered:
    """(x - offset) * scale in float, per column of the last axis or one pair for every cell."""
    b, attrs = Builder(context, node), attributes(node)
    scale, offset = attrs.get("scale") or [], attrs.get("offset") or []
    if not scale or len(scale) != len(offset):
        raise refuse(context, node, f"{len(scale)} scale and {len(offset)} offset values")
    if len(scale) > 1 and known_rank(context, node, node.input[0]) > 2:
        raise refuse(context, node, "per-column scale on an input of rank > 2 (onnxruntime indexes it by axis 1)")
    shifted = b.op("Sub", [as_float(b, node.input[0]), b.const(np.asarray(offset, dtype=np.float32), "offset")])
    b.op("Mul", [shifted, b.const(np.asarray(scale, dtype=np.float32), "scale")], outputs=[node.output[0]])
    return b.result()


def normalizer(node: onnx.NodeProto, context: Context) -> Lowered:
    """Each row (a vector: the whole) over its MAX, L1 or L2 norm; a row whose norm is 0 is copied."""
    b, norm = Builder(context, node), attributes(node).get("norm", "MAX")
    if norm not in ("MAX", "L1", "L2"):
        raise refuse(context, node, f"norm {norm!r}")
    rank = known_rank(context, node, node.input[0])
    if rank > 2:
        raise refuse(context, node, f"input of rank {rank} (onnxruntime takes rank 1 or 2)")
    axis = rank - 1
    x = as_float(b, node.input[0])
    zero = b.const(np.float32(0))
    squares = b.op("Mul", [x, x]) if norm == "L2" else None
    if norm == "MAX":
        total = b.reduce("ReduceMax", x, [axis])
    else:
        total = b.reduce("ReduceSum", squares or b.op("Abs", [x]), [axis])
    empty = b.op("Equal", [total, zero])
    divisor = b.op("Where", [empty, b.const(np.float32(1)), total])  # no 0/0 even in the discarded branch
    if squares:
        root = b.op("Sqrt", [b.op("Div", [squares, divisor])])
        scaled = b.op("Where", [b.op("Less", [x, zero]), b.op("Neg", [root]), root])
    else:
        scaled = b.op("Div", [x, divisor])
    b.op("Where", [empty, x, scaled], outputs=[node.output[0]])
    return b.result()


def binarizer(node: onnx.NodeProto, context: Context) -> Lowered:
    """1 where x > threshold else 0, in the input's type (integers compared as floats, as C++ promotes them)."""
    b = Builder(context, node)
    threshold = attributes(node).get("threshold", 1.0)
    kind = context.elem_type(node.input[0])
    if kind is None:
        raise refuse(context, node, f"the type of input '{node.input[0]}' is unknown")
    x = node.input[0] if kind == TensorProto.DOUBLE else as_float(b, node.input[0])
    dtype = np.float64 if kind == TensorProto.DOUBLE else np.float32
    above = b.greater(x, b.const(dtype(np.float32(threshold)), "threshold"))
    b.op("Cast", [above], outputs=[node.output[0]], to=kind)
    return b.result()


NUMPY = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.INT32: np.int32,
         TensorProto.INT64: np.int64}  # fmt: skip


def imputer(node: onnx.NodeProto, context: Context) -> Lowered:
    """Cells equal to the replaced value (NaN matching NaN) take the imputed value of their column (or the
    first imputed value when the count is not the column count), in the input's type."""
    b, attrs = Builder(context, node), attributes(node)
    kind = context.elem_type(node.input[0])
    if kind not in NUMPY:
        raise refuse(context, node, f"input '{node.input[0]}' of unknown or unsupported type")
    floats = kind not in INTEGERS
    values = attrs.get("imputed_value_floats" if floats else "imputed_value_int64s") or []
    if not values:
        raise refuse(context, node, f"no imputed_value_{'floats' if floats else 'int64s'} for this input type")
    values = _imputed_per_cell(context, node, values)
    replaced = attrs.get("replaced_value_float", 0.0) if floats else attrs.get("replaced_value_int64", 0)
    x, dtype = node.input[0], NUMPY[kind]
    if floats and np.isnan(replaced):
        match = b.op("IsNaN", [x])
    else:
        match = b.op("Equal", [x, b.const(dtype(replaced), "replaced")])
    b.op("Where", [match, b.const(np.asarray(values, dtype=dtype), "imputed"), x], outputs=[node.output[0]])
    return b.result()


def _imputed_per_cell(context: Context, node: onnx.NodeProto, values: list) -> list:
    """onnxruntime's choice: one value per column of axis 1 when the counts agree, else the first value."""
    if len(values) == 1:
        return values
    shape = context.shape(node.input[0])
    if shape is None or len(shape) > 2 or not isinstance(shape[-1], int):
        raise refuse(context, node, f"{len(values)} imputed values on an input whose column count is not known")
    return values if len(values) == shape[-1] else values[:1]


def array_feature_extractor(node: onnx.NodeProto, context: Context) -> Lowered:
    """X's last axis at the (flattened) indices; a vector X gives a [1, k] result, as in onnxruntime."""
    b = Builder(context, node)
    indices = b.op("Reshape", [node.input[1], b.const(np.array([-1], dtype=np.int64), "shape")])
    shape = context.shape(node.input[0])
    if shape is None:  # e.g. behind an ml op without shape inference: the [1, k] case decided at run time
        picked = b.op("Gather", [node.input[0], indices], axis=-1)
        b.op("Reshape", [picked, _picked_shape(b, node.input[0], indices)], outputs=[node.output[0]])
    elif len(shape) > 1:
        b.op("Gather", [node.input[0], indices], outputs=[node.output[0]], axis=len(shape) - 1)
    else:
        picked = b.op("Gather", [node.input[0], indices], axis=0)
        b.op("Unsqueeze", [picked, b.const(np.array([0], dtype=np.int64), "axes")], outputs=[node.output[0]])
    return b.result()


def _picked_shape(b: Builder, data: str, indices: str) -> str:
    """X's shape with the last axis the index count, and [1, count] for a vector: [1, *shape] from position
    min(rank - 1, 1) up to its last entry, then the count."""
    one = b.const(np.array([1], dtype=np.int64), "one")
    padded = b.op("Concat", [one, b.op("Shape", [data])], axis=0)
    rank = b.op("Shape", [b.op("Shape", [data])])
    start = b.op("Min", [b.op("Sub", [rank, one]), one])
    prefix = b.op("Slice", [padded, start, b.const(np.array([-1], dtype=np.int64), "end")])
    return b.op("Concat", [prefix, b.op("Shape", [indices])], axis=0)


def feature_vectorizer(node: onnx.NodeProto, context: Context) -> Lowered:
    """The inputs as float rows side by side, each cut or zero-padded to its `inputdimensions` width."""
    b = Builder(context, node)
    widths = attributes(node).get("inputdimensions") or []
    if len(widths) != len(node.input):
        raise refuse(context, node, f"{len(widths)} inputdimensions for {len(node.input)} inputs")
    parts = [_vector_part(b, node, name, width) for name, width in zip(node.input, widths)]
    b.op("Concat", parts, outputs=[node.output[0]], axis=1)
    return b.result()


def _vector_part(b: Builder, node: onnx.NodeProto, name: str, width: int) -> str:
    shape = b.context.shape(name)
    tail = shape[:1] if shape is not None and len(shape) == 1 else (shape or [None])[1:]
    if shape is None or not all(isinstance(d, int) for d in tail):
        raise refuse(b.context, node, f"input '{name}' of unknown width")
    as_rows = np.array([1 if len(shape) == 1 else 0, -1], dtype=np.int64)
    rows = b.op("Reshape", [as_float(b, name), b.const(as_rows, "shape")])
    actual = int(np.prod(tail))
    if actual > width:
        bounds = ((0, "starts"), (width, "ends"), (1, "axes"))
        return b.op("Slice", [rows, *(b.const(np.array([v], dtype=np.int64), hint) for v, hint in bounds)])
    if actual < width:
        return b.op("Pad", [rows, b.const(np.array([0, 0, 0, width - actual], dtype=np.int64), "pads")])
    return rows


RULES = {
    op: typed(rule)
    for op, rule in {
        "LinearClassifier": linear_classifier,
        "LinearRegressor": linear_regressor,
        "Scaler": scaler,
        "Normalizer": normalizer,
        "Binarizer": binarizer,
        "Imputer": imputer,
        "ArrayFeatureExtractor": array_feature_extractor,
        "FeatureVectorizer": feature_vectorizer,
    }.items()
}
