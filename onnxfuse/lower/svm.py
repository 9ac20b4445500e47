"""SVMClassifier and SVMRegressor as plain ai.onnx, following onnxruntime's svmclassifier.cc / svmregressor.cc:
kernels against the support vectors, one-vs-one votes, and libsvm's pairwise coupling of probabilities (an ONNX
Loop doing onnxruntime's iterations, each row stopping where onnxruntime's does)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxfuse.lower.base import Builder, Context, Lowered, attributes, refuse
from onnxfuse.lower.linear import as_rows, typed
from onnxfuse.lower.transforms import transform, transform_name

FLOAT, DOUBLE, BOOL, INT64 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.BOOL, TensorProto.INT64
KERNELS = ("LINEAR", "POLY", "RBF", "SIGMOID")
COUPLING_ROUNDS = 100  # onnxruntime's (and libsvm's) cap on the coupling iterations


def kernel_values(b: Builder, node: onnx.NodeProto, rows: str, vectors: np.ndarray) -> str:
    """K(x, v) for each row and support vector: [N, V]."""
    attrs = attributes(node)
    kind = attrs.get("kernel_type", "LINEAR")
    if kind not in KERNELS:
        raise refuse(b.context, node, f"kernel_type {kind!r}")
    gamma, coef0, degree = (np.float32(v) for v in [*(attrs.get("kernel_params") or []), 0, 0, 0][:3])
    if kind == "RBF":  # the squared distance itself, not |x|^2 - 2x.v + |v|^2, which cancels on natural scales
        gaps = b.op("Sub", [b.op("Unsqueeze", [rows, b.const(np.array([1], dtype=np.int64), "axes")]),
                            b.const(vectors[np.newaxis], "support_vectors")])  # fmt: skip
        distance = b.reduce("ReduceSum", b.op("Mul", [gaps, gaps]), [2], keepdims=0)
        return b.op("Exp", [b.op("Mul", [distance, b.const(-gamma, "gamma")])])
    dot = b.op("MatMul", [rows, b.const(vectors.T.copy(), "support_vectors")])
    if kind == "LINEAR":
        return dot
    inner = b.op("Add", [b.op("Mul", [dot, b.const(gamma, "gamma")]), b.const(coef0, "coef0")])
    return b.op("Pow", [inner, b.const(degree, "degree")]) if kind == "POLY" else b.op("Tanh", [inner])


def svm_regressor(node: onnx.NodeProto, context: Context) -> Lowered:
    """coefficients . K(x, support vectors) + rho (or x . coefficients + rho without support vectors), [N, 1];
    one_class gives its sign as 1 / -1 (0 counts as -1)."""
    b, attrs = Builder(context, node), attributes(node)
    if attrs.get("post_transform", "NONE") != "NONE":
        raise refuse(context, node, "a post_transform (onnxruntime ignores it, the spec applies it)")
    coefficients = np.asarray(attrs.get("coefficients") or [], dtype=np.float32)
    vectors = np.asarray(attrs.get("support_vectors") or [], dtype=np.float32)
    count, rho = attrs.get("n_supports", 0), attrs.get("rho") or [0.0]
    if not coefficients.size or (count > 0 and (vectors.size % count or coefficients.size != count)):
        raise refuse(context, node, f"{coefficients.size} coefficients, {vectors.size} vector values for {count}")
    if count > 0:
        vectors = vectors.reshape(count, -1)
        values = kernel_values(b, node, as_rows(b, node, vectors.shape[1]), vectors)
    else:
        values = as_rows(b, node, len(coefficients))
    weights, bias = b.const(coefficients[np.newaxis], "coefficients"), b.const(np.float32([rho[0]]), "rho")
    if not attrs.get("one_class", 0):
        b.op("Gemm", [values, weights, bias], outputs=[node.output[0]], transB=1)
        return b.result()
    score = b.op("Gemm", [values, weights, bias], transB=1)
    positive = b.greater(score, b.const(np.float32(0)))
    b.op("Where", [positive, b.const(np.float32(1)), b.const(np.float32(-1))], outputs=[node.output[0]])
    return b.result()


def svm_classifier(node: onnx.NodeProto, context: Context) -> Lowered:
    """Label and scores as onnxruntime writes them, in its two modes: support vectors (one-vs-one scores,
    label by votes, probabilities by coupling when prob_a is given) or, without, linear scores x.W + rho[0]."""
    b, attrs = Builder(context, node), attributes(node)
    kind = transform_name(context, node)
    labels = attrs.get("classlabels_strings") or attrs.get("classlabels_ints") or []
    if len(labels) < 2:
        raise refuse(context, node, f"{len(labels)} class labels")
    classes = b.const(np.asarray(labels, dtype=object if attrs.get("classlabels_strings") else np.int64), "classes")
    out = {"label": node.output[0], "scores": node.output[1] if len(node.output) > 1 else ""}
    if sum(attrs.get("vectors_per_class") or []) > 0:
        _support_vector_mode(b, node, classes, out, kind)
    else:
        _linear_mode(b, node, classes, out, kind)
    return b.result()


def _linear_mode(b: Builder, node: onnx.NodeProto, classes: str, out: dict, kind: str) -> None:
    """Scores x.W^T + rho[0] per class; with two classes and no prob_a onnxruntime picks class 1 when the top
    score is >= 0.5 (all weights >= 0) or > 0 (otherwise), else the first top score."""
    attrs = attributes(node)
    count = len(attrs.get("classlabels_strings") or attrs.get("classlabels_ints"))
    weights = np.asarray(attrs.get("coefficients") or [], dtype=np.float32)
    if not weights.size or weights.size % count:
        raise refuse(b.context, node, f"{weights.size} coefficients for {count} classes")
    weights = weights.reshape(count, -1)
    rho = b.const(np.float32([(attrs.get("rho") or [0.0])[0]]), "rho")
    scores = b.op("Gemm", [as_rows(b, node, weights.shape[1]), b.const(weights, "coefficients"), rho], transB=1)
    winner = b.op("ArgMax", [scores], axis=1, keepdims=0)
    if count == 2 and not attrs.get("prob_a"):
        top = b.reduce("ReduceMax", scores, [1], keepdims=0)
        positive = bool((weights >= 0).all())
        bar = b.greater(top, b.const(np.float32(0.5 if positive else 0)), equal=positive)
        winner = b.op("Where", [bar, b.const(np.int64(1)), winner])
    if out["label"]:
        b.op("Gather", [classes, winner], outputs=[out["label"]])
    if out["scores"]:
        transform(b, scores, kind, out=out["scores"])


def _pairs(count: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(count - 1) for j in range(i + 1, count)]


def _pair_scores(b: Builder, node: onnx.NodeProto, kernels: str, per_class: list[int]) -> str:
    """[N, pairs]: pair (i, j) sums class i's kernels times coefficient row j - 1, class j's times row i, and
    rho. Like onnxruntime, each product is a float and the sum a double: natural-scale features make these
    sums cancel, and a float sum would drift from onnxruntime's by far more than rounding."""
    attrs, context = attributes(node), b.context
    coefficients = np.asarray(attrs.get("coefficients") or [], dtype=np.float32)
    count, total = len(per_class), sum(per_class)
    if coefficients.size != (count - 1) * total:
        raise refuse(context, node, f"{coefficients.size} coefficients for {count} classes and {total} vectors")
    coefficients = coefficients.reshape(count - 1, total)
    starts = np.cumsum([0, *per_class])
    sums = []  # per class c: [N, count - 1], its vectors' kernels against every coefficient row
    for c in range(count):
        bounds = [b.const(np.array([v], dtype=np.int64), hint) for v, hint in ((starts[c], "start"),
                  (starts[c + 1], "end"), (1, "axis"))]  # fmt: skip
        block = b.op("Unsqueeze", [b.op("Slice", [kernels, *bounds]), b.const(np.array([1], dtype=np.int64), "axes")])
        products = b.op("Mul", [block, b.const(coefficients[:, starts[c] : starts[c + 1]], "coefficients")])
        sums.append(b.reduce("ReduceSum", b.op("Cast", [products], to=DOUBLE), [2], keepdims=0))
    table = b.op("Concat", sums, axis=1)
    pairs = _pairs(count)
    left = b.const(np.array([i * (count - 1) + j - 1 for i, j in pairs], dtype=np.int64), "left")
    right = b.const(np.array([j * (count - 1) + i for i, j in pairs], dtype=np.int64), "right")
    both = b.op("Add", [b.op("Gather", [table, left], axis=1), b.op("Gather", [table, right], axis=1)])
    rho = b.const(np.float32(attrs["rho"]).astype(np.float64), "rho")
    return b.op("Cast", [b.op("Add", [both, rho])], to=FLOAT)


def _support_vector_mode(b: Builder, node: onnx.NodeProto, classes: str, out: dict, kind: str) -> None:
    attrs, context = attributes(node), b.context
    per_class = list(attrs["vectors_per_class"])
    count = len(attrs.get("classlabels_strings") or attrs.get("classlabels_ints"))
    rho, prob_a = attrs.get("rho") or [], attrs.get("prob_a") or []
    pairs = _pairs(count)
    vectors = np.asarray(attrs.get("support_vectors") or [], dtype=np.float32)
    if len(per_class) != count or len(rho) != len(pairs) or vectors.size % sum(per_class):
        raise refuse(context, node, "vectors_per_class, rho or support_vectors not matching the class count")
    vectors = vectors.reshape(sum(per_class), -1)
    kernels = kernel_values(b, node, as_rows(b, node, vectors.shape[1]), vectors)
    scores = _pair_scores(b, node, kernels, per_class)
    if out["label"]:
        b.op("Gather", [classes, _voted(b, scores, count)], outputs=[out["label"]])
    if not out["scores"]:
        return
    if prob_a:
        transform(b, _coupled(b, node, scores, count), kind, out=out["scores"])
    elif count > 2:
        transform(b, scores, kind, out=out["scores"])
    elif kind == "PROBIT":
        raise refuse(context, node, "PROBIT on a binary SVM without prob_a (onnxruntime leaves a column unwritten)")
    elif kind == "NONE":
        b.op("Concat", [b.op("Neg", [scores]), scores], outputs=[out["scores"]], axis=1)
    else:  # [1 - p, p], p = sigmoid(s) under LOGISTIC, the score itself under the softmaxes
        p = b.op("Sigmoid", [scores]) if kind == "LOGISTIC" else scores
        b.op("Concat", [b.op("Sub", [b.const(np.float32(1)), p]), p], outputs=[out["scores"]], axis=1)


def _voted(b: Builder, scores: str, count: int) -> str:
    """The class with the most one-vs-one wins (pair (i, j) votes i when its score is > 0), first on a tie."""
    first, second = np.zeros((2, len(_pairs(count)), count), dtype=np.float32)
    for p, (i, j) in enumerate(_pairs(count)):
        first[p, i], second[p, j] = 1, 1
    won = b.op("Cast", [b.greater(scores, b.const(np.float32(0)))], to=FLOAT)
    votes = b.op("Add", [b.op("MatMul", [won, b.const(first - second, "votes")]), b.const(second.sum(axis=0), "base")])
    return b.op("ArgMax", [votes], axis=1, keepdims=0)


def _coupled(b: Builder, node: onnx.NodeProto, scores: str, count: int) -> str:
    """Class probabilities [N, classes] from the pair scores: sigmoid pair probabilities clipped to
    [1e-7, 1 - 1e-7], then onnxruntime's multiclass_probability (libsvm's coupling) on them."""
    attrs, f = attributes(node), np.float32
    prob_a, prob_b = attrs["prob_a"], attrs.get("prob_b") or []
    if len(prob_a) != len(_pairs(count)) or len(prob_b) != len(prob_a):
        raise refuse(b.context, node, f"{len(prob_a)} prob_a and {len(prob_b)} prob_b for {count} classes")
    v = b.op("Add", [b.op("Mul", [scores, b.const(f(prob_a), "prob_a")]), b.const(f(prob_b), "prob_b")])
    half = b.op("Div", [b.const(f(1)), b.op("Add", [b.const(f(1)), b.op("Exp", [b.op("Neg", [b.op("Abs", [v])])])])])
    logistic = b.op("Where", [b.op("Less", [v, b.const(f(0))]), b.op("Sub", [b.const(f(1)), half]), half])
    low = b.op("Max", [b.op("Sub", [b.const(f(1)), logistic]), b.const(f(1e-7))])
    pair = b.op("Min", [low, b.const(f(1) - f(1e-7))])
    r = {}
    for p, (i, j) in enumerate(_pairs(count)):
        r[i, j] = b.op("Gather", [pair, b.const(np.array([p], dtype=np.int64), "pair")], axis=1)
        r[j, i] = b.op("Sub", [b.const(f(1)), r[i, j]])
    q = [[_q_entry(b, r, i, j, count) for j in range(count)] for i in range(count)]
    return _coupling_loop(b, node, q)


def _q_entry(b: Builder, r: dict, i: int, j: int, count: int) -> str:
    """Q[i][i] = sum over k != i of r[k][i]^2 (in index order, as onnxruntime adds), Q[i][j] = -r[j][i] r[i][j]."""
    if i != j:
        return b.op("Neg", [b.op("Mul", [r[j, i], r[i, j]])])
    squares = [b.op("Mul", [r[k, i], r[k, i]]) for k in range(count) if k != i]
    total = squares[0]
    for square in squares[1:]:
        total = b.op("Add", [total, square])
    return total


def _coupling_loop(b: Builder, node: onnx.NodeProto, q: list[list[str]]) -> str:
    """p from 1/k through up to 100 rounds; a round first measures max |Qp - pQp| and freezes a row once it is
    below 0.005 / k, as onnxruntime breaks out of its loop, then updates p class by class."""
    f, count = np.float32, len(q)
    rows = [b.op("Concat", q[i], axis=1) for i in range(count)]
    matrix = b.op("Reshape", [b.op("Concat", rows, axis=1), b.const(np.array([-1, count, count], dtype=np.int64))])
    start = b.op("Expand", [b.const(np.full((1, count), f(1) / f(count)), "uniform"), b.op("Shape", [rows[0]])])
    running = b.op("ConstantOfShape", [b.op("Shape", [q[0][0]])], value=helper.make_tensor("", BOOL, [1], [False]))
    body = Builder(b.context, node)
    names = {key: b.context.fresh(f"{body.prefix}/coupling_{key}") for key in ("round", "go", "p", "done")}
    p, done = names["p"], names["done"]
    columns = body.op("Unsqueeze", [p, body.const(np.array([1], dtype=np.int64), "axes")])
    qp = body.reduce("ReduceSum", body.op("Mul", [matrix, columns]), [2], keepdims=0)
    pqp = body.reduce("ReduceSum", body.op("Mul", [p, qp]), [1])
    error = body.reduce("ReduceMax", body.op("Abs", [body.op("Sub", [qp, pqp])]), [1])
    stop = body.op("Or", [done, body.op("Less", [error, body.const(f(0.005) / f(count), "eps")])])
    updated = p
    for i in range(count):
        qp_i = body.op("Gather", [qp, body.const(np.array([i], dtype=np.int64), "class")], axis=1)
        diff = body.op("Div", [body.op("Sub", [pqp, qp_i]), q[i][i]])
        grow = body.op("Add", [body.const(f(1)), diff])
        step = body.op("Mul", [diff, body.const(np.eye(count, dtype=np.float32)[i : i + 1], "unit")])
        updated = body.op("Div", [body.op("Add", [updated, step]), grow])
        inner = body.op("Add", [body.op("Mul", [diff, q[i][i]]), body.op("Mul", [body.const(f(2)), qp_i])])
        pqp = body.op("Div", [body.op("Div", [body.op("Add", [pqp, body.op("Mul", [diff, inner])]), grow]), grow])
        qp = body.op("Div", [body.op("Add", [qp, body.op("Mul", [diff, rows[i]])]), grow])
    kept = body.op("Where", [stop, p, updated])
    left = body.reduce("ReduceMax", body.op("Cast", [body.op("Not", [stop])], to=FLOAT), [0, 1], keepdims=0)
    go = body.greater(left, body.const(f(0)))
    graph = helper.make_graph(
        body.nodes, b.context.fresh(f"{body.prefix}/coupling"),
        [helper.make_tensor_value_info(names["round"], INT64, []), helper.make_tensor_value_info(names["go"], BOOL, []),
         helper.make_tensor_value_info(p, FLOAT, [None, count]), helper.make_tensor_value_info(done, BOOL, [None, 1])],
        [helper.make_tensor_value_info(go, BOOL, []), helper.make_tensor_value_info(kept, FLOAT, [None, count]),
         helper.make_tensor_value_info(stop, BOOL, [None, 1])],
    )  # fmt: skip
    b.initializers.extend(body.initializers)  # the body reads them from the outer scope
    rounds, first = b.const(np.int64(COUPLING_ROUNDS), "rounds"), b.const(np.bool_(True), "go")
    return b.op("Loop", [rounds, first, start, running], outputs=2, body=graph)[0]


RULES = {"SVMClassifier": typed(svm_classifier), "SVMRegressor": typed(svm_regressor)}
