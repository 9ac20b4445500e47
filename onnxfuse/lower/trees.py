"""Tree ensembles (TreeEnsembleClassifier/Regressor of ai.onnx.ml 1 and 3, TreeEnsemble of 5) as plain ai.onnx.

All trees are walked at once for every row: a tensor of node positions, one per (tree, row), and per level a
GatherElements of each node's feature, threshold and child pair, a comparison, and `pair + condition` for the
next position (a branch's false and true children sit side by side; leaves point to themselves), unrolled to
the deepest tree, the trees deeper than the level only. The node tables hold a few numbers per node, so the
file stays about the size of the original. Scores, labels and post-transforms follow onnxruntime's CPU kernels
(`tree_ensemble_aggregator.h`, `ml_common.h`, as onnxruntime 1.32 runs them), including their rules for binary
classifiers with one weight column; where onnxruntime and the spec disagree, or onnxruntime leaves an output
undefined, the node is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx

from onnxfuse.lower.base import Builder, Context, Lowered, attributes, refuse
from onnxfuse.lower.transforms import transform

FLOAT, DOUBLE = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE
MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ", "BRANCH_MEMBER")
# x > t is written t < x: OpenVINO's Greater and GreaterOrEqual hold for a NaN x (2026.4, CPU)
COMPARE = dict(zip(MODES, (("LessOrEqual", 1), ("Less", 1), ("LessOrEqual", -1), ("Less", -1), ("Equal", 1))))
# Which outcome of comparing x with the threshold (less, equal, greater, unordered = x is NaN) goes the true way.
TRUTH = dict(zip(MODES, ((1, 1, 0, 0), (1, 0, 0, 0), (0, 1, 1, 0), (0, 0, 1, 0), (0, 1, 0, 0), (1, 0, 1, 1))))
CUT = 0.75  # the finished trees are cut off once at most this share of the walked ones is left (a cut costs 3 ops)
AGGREGATES = ("AVERAGE", "SUM", "MIN", "MAX")
TRANSFORMS = ("NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT")


@dataclasses.dataclass(frozen=True)
class Forest:
    """The trees as node tables laid out so that a branch's false and true children sit side by side
    (`pair`, `pair + 1`): the next node is `pair[node] + condition`. Leaves have a NaN threshold, so their
    condition is false and they point to themselves."""

    feature: np.ndarray  # [M] feature index of each node (0 for leaves)
    threshold: np.ndarray  # [M] float64, NaN for leaves
    mode: tuple[str, ...]  # [M] one of MODES, or "LEAF"
    pair: np.ndarray  # [M] position of the false child (the true one follows); a leaf's own position
    missing_true: np.ndarray  # [M] bool: NaN goes the true way
    members: tuple[tuple[float, ...], ...]  # [M] the set of a BRANCH_MEMBER node, () otherwise
    roots: np.ndarray  # [T] the trees, deepest first
    depths: np.ndarray  # [T] comparisons on each tree's longest root-to-leaf path (descending)
    weights: np.ndarray  # [M, K] float64, the sum of each leaf's weights per target (0 where it has none)
    has: np.ndarray  # [M, K] bool: the node is a leaf with a weight for that target


def _as_array(values: dict, name: str, dtype=np.float64) -> np.ndarray:
    """`name` or `name_as_tensor` (v3's double variant), as one array."""
    tensor = values.get(f"{name}_as_tensor")
    if tensor is not None:
        return onnx.numpy_helper.to_array(tensor).astype(dtype).ravel()
    return np.asarray(values.get(name, []), dtype=dtype)


def _forest_v3(node: onnx.NodeProto, context: Context, prefix: str, n_targets: int) -> Forest:
    """The node tables of TreeEnsembleClassifier/Regressor 1 and 3, in onnxruntime's reading (trees start where
    the tree id changes; weights on branch nodes are ignored; every leaf needs one)."""
    a = attributes(node)
    trees, ids = np.asarray(a.get("nodes_treeids", []), np.int64), np.asarray(a.get("nodes_nodeids", []), np.int64)
    modes = list(a.get("nodes_modes", []))
    if len(modes) == 0 or any(m not in (*MODES[:6], "LEAF") for m in modes):
        raise refuse(context, node, f"nodes_modes {sorted(set(modes)) or 'empty'} (expected {MODES[:6]} or LEAF)")
    fields = ("treeids", "nodeids", "featureids", "truenodeids", "falsenodeids")
    if any(len(a.get(f"nodes_{f}", [])) != len(modes) for f in fields) or len(_as_array(a, "nodes_values")) != len(
        modes
    ):
        raise refuse(context, node, "nodes_* attributes of different lengths")
    index = {(int(t), int(i)): k for k, (t, i) in enumerate(zip(trees, ids))}
    if len(index) != len(modes):
        raise refuse(context, node, "a (tree id, node id) pair appears twice")

    def child(name: str) -> list[int]:
        found = [index.get((int(t), int(c))) for t, c, m in zip(trees, a.get(name, []), modes) if m != "LEAF"]
        if len(found) != sum(m != "LEAF" for m in modes) or None in found:
            raise refuse(context, node, f"{name} points to a node that is not in the tree")
        return found

    branches = [k for k, m in enumerate(modes) if m != "LEAF"]
    children = dict(zip(branches, zip(child("nodes_truenodeids"), child("nodes_falsenodeids"))))
    roots = [k for k in range(len(trees)) if k == 0 or trees[k] != trees[k - 1]]
    weights = [
        (index.get((int(t), int(n))), int(c), w)
        for t, n, c, w in zip(
            a.get(f"{prefix}_treeids", []),
            a.get(f"{prefix}_nodeids", []),
            a.get(f"{prefix}_ids", []),
            _as_array(a, f"{prefix}_weights"),
        )
    ]
    if any(k is None for k, _, _ in weights):
        raise refuse(context, node, f"{prefix}_nodeids names a node that is not in the tree")
    return _build(
        context,
        node,
        modes=modes,
        feature=np.asarray(a.get("nodes_featureids", []), np.int64),
        threshold=_as_array(a, "nodes_values"),
        missing=np.asarray(a.get("nodes_missing_value_tracks_true", []), np.int64),
        members=[()] * len(modes),
        children=children,
        roots=roots,
        weights=[(k, c, w) for k, c, w in weights if modes[k] == "LEAF"],
        n_targets=n_targets,
    )


def _forest_v5(node: onnx.NodeProto, context: Context) -> Forest:
    """The node tables of TreeEnsemble 5: branch nodes in nodes_*, leaves in leaf_*, set membership kept as sets."""
    a = attributes(node)
    codes = onnx.numpy_helper.to_array(a["nodes_modes"]).astype(np.int64).ravel()
    if np.any(codes > 6):
        raise refuse(context, node, f"nodes_modes {sorted(set(codes.tolist()))} (0 to 6 expected)")
    branches = len(codes)
    splits = onnx.numpy_helper.to_array(a["nodes_splits"]).astype(np.float64).ravel()
    sets = _member_sets(a, codes)
    targets = np.asarray(a.get("leaf_targetids", []), np.int64)
    leaf_weights = onnx.numpy_helper.to_array(a["leaf_weights"]).astype(np.float64).ravel()

    fields = ("featureids", "truenodeids", "falsenodeids", "trueleafs", "falseleafs")
    if (
        any(len(a.get(f"nodes_{f}", [])) != branches for f in fields)
        or len(splits) != branches
        or len(leaf_weights) != len(targets)
        or not all(0 <= r < branches for r in a.get("tree_roots", []))
    ):
        raise refuse(context, node, "nodes_*, leaf_* or tree_roots attributes that do not fit together")

    def child(k: int, side: str) -> int:
        target, leaf = int(a[f"nodes_{side}nodeids"][k]), a[f"nodes_{side}leafs"][k]
        if not 0 <= target < (len(targets) if leaf else branches):
            raise refuse(context, node, f"nodes_{side}nodeids[{k}] = {target} is out of range")
        return branches + target if leaf else target

    roots = []
    for r in a.get("tree_roots", []):
        single = a["nodes_truenodeids"][r] == a["nodes_falsenodeids"][r]
        if single and not (a["nodes_trueleafs"][r] and a["nodes_falseleafs"][r]):
            raise refuse(context, node, f"tree root {r} has equal children that are not both leaves (ambiguous)")
        roots.append(branches + r if single else r)
    return _build(
        context,
        node,
        modes=[MODES[c] for c in codes] + ["LEAF"] * len(targets),
        feature=np.concatenate([np.asarray(a["nodes_featureids"], np.int64), np.zeros(len(targets), np.int64)]),
        threshold=np.concatenate([splits, np.zeros(len(targets))]),
        missing=np.asarray(a.get("nodes_missing_value_tracks_true", []), np.int64),
        members=list(sets) + [()] * len(targets),
        children={k: (child(k, "true"), child(k, "false")) for k in range(branches)},
        roots=roots,
        weights=[(branches + k, int(t), w) for k, (t, w) in enumerate(zip(targets, leaf_weights))],
        n_targets=int(a.get("n_targets", 0)),
    )


def _member_sets(a: dict, codes: np.ndarray) -> list[tuple[float, ...]]:
    """membership_values split at its NaNs, one set per BRANCH_MEMBER node in order."""
    values = a.get("membership_values")
    flat = onnx.numpy_helper.to_array(values).astype(np.float64).ravel() if values is not None else np.zeros(0)
    groups, current = [], []
    for v in flat:
        if np.isnan(v):
            groups.append(tuple(current))
            current = []
        else:
            current.append(float(v))
    if current:
        groups.append(tuple(current))
    found = iter(groups)
    return [next(found, ()) if c == 6 else () for c in codes]


def _build(context: Context, node: onnx.NodeProto, **parts) -> Forest:
    """Lay the nodes out (roots first, then each branch's children as a false/true pair) and collect the leaf
    weights; a node two branches point to is copied, so the layout is a set of proper trees."""
    modes, children, n_targets = parts["modes"], parts["children"], parts["n_targets"]
    if n_targets < 1 or not parts["roots"]:
        raise refuse(context, node, "no trees or no targets")
    depths = np.asarray([_depth(context, node, children, [r]) for r in parts["roots"]], np.int64)
    order = np.argsort(-depths, kind="stable")
    old = [int(parts["roots"][t]) for t in order]  # position -> original node
    pair = [0] * len(old)
    k = 0
    while k < len(old):
        if old[k] in children:
            pair[k] = len(old)
            old += [children[old[k]][1], children[old[k]][0]]
            pair += [0, 0]
        else:
            pair[k] = k
        k += 1
        if len(old) > 4 * len(modes) + 4:
            raise refuse(context, node, "trees that share subtrees too often to lay out")
    weights, has = np.zeros((len(modes), n_targets)), np.zeros((len(modes), n_targets), bool)
    for leaf, target, w in parts["weights"]:
        if not 0 <= target < n_targets:
            raise refuse(context, node, f"a leaf weight for target/class {target} of {n_targets}")
        weights[leaf, target] += w
        has[leaf, target] = True
    leaves = [k for k in set(old) if k not in children]
    if not has[leaves].any(axis=1).all():
        raise refuse(context, node, "a leaf has no weight (onnxruntime refuses such a model)")
    is_leaf = np.asarray([k not in children for k in old])
    member = np.asarray([modes[k] == "BRANCH_MEMBER" for k in old])
    threshold = np.where(member, 0.0, np.asarray(parts["threshold"], np.float64)[old])  # x NaN <=> unordered
    if np.isnan(threshold[~is_leaf]).any():
        raise refuse(context, node, "a NaN threshold")
    missing = np.zeros(len(modes), bool)
    tracks = parts["missing"][: len(modes)]
    missing[: len(tracks)] = tracks == 1
    return Forest(
        feature=np.where(is_leaf, 0, parts["feature"][old]),
        threshold=np.where(is_leaf, np.nan, threshold),
        mode=tuple("LEAF" if leaf else modes[k] for k, leaf in zip(old, is_leaf)),
        pair=np.asarray(pair, np.int64),
        missing_true=missing[old] & ~is_leaf,
        members=tuple(parts["members"][k] for k in old),
        roots=np.arange(len(parts["roots"]), dtype=np.int64),
        depths=depths[order],
        weights=weights[old] * is_leaf[:, None],
        has=has[old] & is_leaf[:, None],
    )


def _depth(context: Context, node: onnx.NodeProto, children: dict, roots: Sequence[int]) -> int:
    """Comparisons on the deepest root-to-leaf path (refusing cycles)."""
    depth, level = 0, {int(r) for r in roots}
    while level:
        level = {c for k in level if k in children for c in children[k]}
        depth += bool(level)
        if depth > len(children):
            raise refuse(context, node, "a tree has a cycle")
    return depth


def _tree_sets(forest: Forest) -> list[list[int]]:
    """Each tree's leaves (positions)."""
    found = []
    for root in forest.roots:
        stack, leaves = [int(root)], []
        while stack:
            k = stack.pop()
            if forest.mode[k] == "LEAF":
                leaves.append(k)
            else:
                stack += [int(forest.pair[k]), int(forest.pair[k]) + 1]
        found.append(leaves)
    return found


def _walk(b: Builder, x: str, forest: Forest, dtype: type) -> tuple[str, str]:
    """The position of the leaf each row reaches in each tree, flat and tree-major ([trees, N] read row by row),
    and that [trees, N] shape; x is [N, F] of `dtype`. Level by level only the trees deeper than the level are
    walked (the trees are sorted deepest first; the finished ones are cut off the end). Tables are read with
    GatherElements on 1-D tensors: onnxruntime's Gather copies element by element and ran 5x slower."""
    index = np.int32 if len(forest.mode) < 2**31 else np.int64
    itype = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(index))
    roots, n_trees = forest.roots, len(forest.roots)
    rows = b.op("Slice", [b.op("Shape", [x]), b.const([0], "zero", np.int64), b.const([1], "one", np.int64)])
    grids: dict[int, str] = {}

    def grid(count: int) -> str:
        if count not in grids:
            grids[count] = b.op("Concat", [b.const([count], "trees", np.int64), rows], axis=0)
        return grids[count]

    flat, full = b.const([-1], "flat", np.int64), grid(n_trees)
    if not forest.depths[0]:
        return b.op(
            "Reshape", [b.op("Expand", [b.const(roots.astype(index).reshape(-1, 1), "roots"), full]), flat]
        ), full
    column = lambda table, hint: b.const(table[roots].reshape(-1, 1), hint)  # noqa: E731
    x_t = b.op("Transpose", [x], perm=[1, 0])
    x_f = b.op("GatherElements", [x_t, b.op("Expand", [column(forest.feature, "root_feature"), full])], axis=0)
    went = _branch(b, forest, x_f, column(forest.threshold.astype(dtype), "root_threshold"), roots, dtype)
    at = b.op(
        "Reshape", [b.op("Add", [column(forest.pair.astype(index), "root_pair"), b.op("Cast", [went], to=itype)]), flat]
    )
    done, active = [], n_trees
    if forest.depths[0] > 1:
        feature = b.const(forest.feature.astype(index), "feature")
        threshold = b.const(forest.threshold.astype(dtype), "threshold")
        pair = b.const(forest.pair.astype(index), "pair")
    for level in range(1, int(forest.depths[0])):
        count = int((forest.depths > level).sum())
        if count <= CUT * active:
            cut = b.op("Mul", [rows, b.const([count], "trees", np.int64)])
            done.append(b.op("Slice", [at, cut, b.op("Mul", [rows, b.const([active], "trees", np.int64)])]))
            at, active = b.op("Slice", [at, b.const([0], "zero", np.int64), cut]), count
        features = b.op("Reshape", [b.op("GatherElements", [feature, at], axis=0), grid(active)])
        x_f = b.op("Reshape", [b.op("GatherElements", [x_t, features], axis=0), flat])
        went = _branch(b, forest, x_f, b.op("GatherElements", [threshold, at], axis=0), at, dtype)
        at = b.op("Add", [b.op("GatherElements", [pair, at], axis=0), b.op("Cast", [went], to=itype)])
    return (b.op("Concat", [at, *reversed(done)], axis=0) if done else at), full


def _branch(b: Builder, forest: Forest, x_f: str, threshold: str, at: np.ndarray | str, dtype: type) -> str:
    """Whether each (row, tree) goes the true way at node `at` (the roots as constants, or a flat tensor)."""
    branch_modes = {m for m in forest.mode if m != "LEAF"}
    if isinstance(at, np.ndarray):
        gather = lambda table, hint: b.const(table[at].reshape(-1, 1), hint)  # noqa: E731
    else:
        gather = lambda table, hint: b.op("GatherElements", [b.const(table, hint), at], axis=0)  # noqa: E731
    if len(branch_modes) == 1 and not branch_modes & {"BRANCH_MEMBER", "BRANCH_NEQ"}:
        op, order = COMPARE[branch_modes.pop()]
        went = b.op(op, [x_f, threshold][::order])
        if forest.missing_true.any():
            went = b.op("Or", [went, b.op("And", [b.op("IsNaN", [x_f]), gather(forest.missing_true, "missing")])])
        return went
    ordered = b.op(
        "Where",
        [
            b.op("Less", [x_f, threshold]),
            b.const(0, "lt", np.int64),
            b.op("Where", [b.op("Equal", [x_f, threshold]), b.const(1, "eq", np.int64), b.const(2, "gt", np.int64)]),
        ],
    )
    code = b.op("Where", [b.op("IsNaN", [x_f]), b.const(3, "nan", np.int64), ordered])  # thresholds are not NaN
    table = np.asarray([TRUTH.get(m, (0, 0, 0, 0)) for m in forest.mode], bool)
    table[:, 3] |= forest.missing_true
    cell = b.op("Add", [gather(np.arange(len(forest.mode), dtype=np.int64) * 4, "truth_row"), code])
    truth = b.const(table.ravel(), "truth")
    went = (
        b.op("Gather", [truth, cell]) if isinstance(at, np.ndarray) else b.op("GatherElements", [truth, cell], axis=0)
    )
    if "BRANCH_MEMBER" in branch_modes:  # a member node's truth row holds only its missing-value track
        went = b.op("Or", [went, _member(b, forest, x_f, at, dtype)])
    return went


def _member(b: Builder, forest: Forest, x_f: str, at: np.ndarray | str, dtype: type) -> str:
    """x in the node's set: the sets padded with NaN into one [M, S] table (NaN matches nothing)."""
    width = max(len(s) for s in forest.members)
    sets = np.full((len(forest.mode), width), np.nan)
    for k, values in enumerate(forest.members):
        sets[k, : len(values)] = values
    if isinstance(at, np.ndarray):
        values = b.const(sets[at].astype(dtype).reshape(len(at), 1, width), "member_sets")
    else:
        values = b.op("Gather", [b.const(sets.astype(dtype), "member_sets"), at])
    hits = b.op(
        "Cast",
        [b.op("Equal", [b.op("Unsqueeze", [x_f, b.const([-1], "last", np.int64)]), values])],
        to=onnx.TensorProto.INT32,
    )
    return b.op("Less", [b.const(np.int32(0), "none"), b.reduce("ReduceMax", hits, [-1], keepdims=0)])


def _aggregate(b: Builder, walked: tuple[str, str], forest: Forest, how: str, dtype: type) -> str:
    """[N, K] leaf weights aggregated over the trees as onnxruntime does (a target no reached leaf scores is 0)."""
    leaf, grid = walked
    n_trees, width = len(forest.roots), forest.weights.shape[1]
    fill = {"MIN": np.inf, "MAX": -np.inf}.get(how, 0.0)
    table = b.const(np.where(forest.has, forest.weights, fill).astype(dtype).ravel(), "leaf_weights")
    if width == 1:
        gathered = b.op("Reshape", [b.op("GatherElements", [table, leaf], axis=0), grid])
    else:
        wide = b.op("Unsqueeze", [b.op("Cast", [leaf], to=onnx.TensorProto.INT64), b.const([-1], "last", np.int64)])
        first = b.op("Mul", [wide, b.const(np.int64(width), "width")])
        cells = b.op("Add", [first, b.const(np.arange(width, dtype=np.int64), "targets")])
        shape = b.op("Concat", [grid, b.const([width], "width", np.int64)], axis=0)
        cells = b.op("Reshape", [cells, b.const([-1], "flat", np.int64)])
        gathered = b.op("Reshape", [b.op("GatherElements", [table, cells], axis=0), shape])
    op = {"MIN": "ReduceMin", "MAX": "ReduceMax"}.get(how, "ReduceSum")
    scores = b.reduce(op, gathered, [0], keepdims=0)
    if width == 1:
        scores = b.op("Unsqueeze", [scores, b.const([1], "axis", np.int64)])
    if how in ("MIN", "MAX") and not all(_always(forest)):
        scores = b.op("Where", [b.op("IsInf", [scores]), b.const(np.zeros(1, dtype), "zero"), scores])
    if how == "AVERAGE":
        scores = b.op("Div", [scores, b.const(np.asarray(n_trees, dtype), "trees")])
    return scores


def _always(forest: Forest) -> list[bool]:
    """Per target: some tree has a weight for it on every leaf, so every row scores it."""
    trees = _tree_sets(forest)
    return [any(forest.has[sorted(t), k].all() for t in trees) for k in range(forest.weights.shape[1])]


def _input(b: Builder, node: onnx.NodeProto, context: Context, allowed: Sequence[int]) -> tuple[str, type]:
    """The node's input as [N, F] float (int inputs cast as onnxruntime compares them) or double, and its dtype."""
    kind = context.elem_type(node.input[0])
    shape = context.shape(node.input[0])
    if kind not in allowed:
        raise refuse(context, node, f"input type {onnx.TensorProto.DataType.Name(kind or 0)}")
    doubles = [a.name for a in node.attribute if a.name.endswith("_as_tensor") and a.t.data_type == DOUBLE]
    if doubles and kind != DOUBLE and node.op_type != "TreeEnsemble":
        raise refuse(
            context,
            node,
            f"double {doubles[0]} with a {onnx.TensorProto.DataType.Name(kind)} input "
            "(onnxruntime cannot load it; compare in float or double?)",
        )
    if shape is not None and len(shape) != 2:
        raise refuse(context, node, f"a {len(shape)}-D input (the rewrite takes [N, F])")
    if kind == DOUBLE:
        return node.input[0], np.float64
    if kind == FLOAT:
        return node.input[0], np.float32
    return b.op("Cast", [node.input[0]], to=FLOAT), np.float32


def _regressor(node: onnx.NodeProto, context: Context) -> Lowered:
    """TreeEnsembleRegressor 1 and 3: Y [N, n_targets] float."""
    a = attributes(node)
    b = Builder(context, node)
    x, dtype = _input(b, node, context, (FLOAT, DOUBLE, onnx.TensorProto.INT64, onnx.TensorProto.INT32))
    forest = _forest_v3(node, context, "target", int(a.get("n_targets", 0)))
    how, post = a.get("aggregate_function", "SUM"), a.get("post_transform", "NONE")
    _check(context, node, how, post, forest)
    scores = _aggregate(b, _walk(b, x, forest, dtype), forest, how, dtype)
    _finish_regression(b, node, scores, base=_as_array(a, "base_values"), post=post, forest=forest, dtype=dtype)
    return b.result()


def _ensemble(node: onnx.NodeProto, context: Context) -> Lowered:
    """TreeEnsemble 5: Y [N, n_targets] of the input's type; post_transform by onnxruntime's numbering, which swaps
    SOFTMAX and LOGISTIC against the spec, so those two are refused."""
    a = attributes(node)
    b = Builder(context, node)
    x, dtype = _input(b, node, context, (FLOAT, DOUBLE))
    kinds = {a[name].data_type for name in ("nodes_splits", "leaf_weights") if name in a}
    if kinds != {DOUBLE if dtype is np.float64 else FLOAT}:
        raise refuse(context, node, "nodes_splits or leaf_weights of another type than the input")
    forest = _forest_v5(node, context)
    how_code, post_code = int(a.get("aggregate_function", 1)), int(a.get("post_transform", 0))
    if post_code in (1, 2) or not 0 <= post_code <= 4 or not 0 <= how_code <= 3:
        raise refuse(
            context,
            node,
            f"post_transform {post_code} (onnxruntime reads 1 as LOGISTIC and 2 as SOFTMAX, "
            "the spec the other way round)"
            if post_code in (1, 2)
            else f"aggregate_function {how_code} or post_transform {post_code}",
        )
    how, post = AGGREGATES[how_code], TRANSFORMS[post_code]
    _check(context, node, how, post, forest)
    scores = _aggregate(b, _walk(b, x, forest, dtype), forest, how, dtype)
    _finish_regression(b, node, scores, base=np.zeros(0), post=post, forest=forest, dtype=dtype, same_type=True)
    return b.result()


def _check(context: Context, node: onnx.NodeProto, how: str, post: str, forest: Forest) -> None:
    if how not in AGGREGATES or post not in TRANSFORMS:
        raise refuse(context, node, f"aggregate_function {how!r} or post_transform {post!r}")
    if how in ("MIN", "MAX") and not np.isfinite(forest.weights).all():
        raise refuse(context, node, f"an infinite leaf weight with aggregate_function {how}")


def _finish_regression(
    b: Builder,
    node: onnx.NodeProto,
    scores: str,
    *,
    base: np.ndarray,
    post: str,
    forest: Forest,
    dtype: type,
    same_type: bool = False,
) -> None:
    """Base values and post_transform as onnxruntime: with one target only PROBIT applies (others refused).
    The output is float (v1/v3) or the input's type (`same_type`, v5); transforms are computed in float."""
    width, context = forest.weights.shape[1], b.context
    kind = DOUBLE if same_type and dtype is np.float64 else FLOAT
    if len(base) not in (0, width):
        raise refuse(context, node, f"{len(base)} base_values for {width} targets")
    if width == 1 and post not in ("NONE", "PROBIT"):
        raise refuse(context, node, f"post_transform {post} on one target (onnxruntime ignores it, the spec does not)")
    if len(base):
        scores = b.op("Add", [scores, b.const(base.reshape(1, -1).astype(dtype), "base_values")])
    if post == "NONE":
        b.op("Cast", [scores], outputs=[node.output[0]], to=kind)
        return
    floats = b.op("Cast", [scores], to=FLOAT)
    if kind == FLOAT:
        transform(b, floats, post, node.output[0])
    else:
        b.op("Cast", [transform(b, floats, post)], outputs=[node.output[0]], to=kind)


def _classifier(node: onnx.NodeProto, context: Context) -> Lowered:
    """TreeEnsembleClassifier 1 and 3: label [N] (int64 or string) and scores Z [N, classes] float."""
    a = attributes(node)
    b = Builder(context, node)
    x, dtype = _input(b, node, context, (FLOAT, DOUBLE, onnx.TensorProto.INT64, onnx.TensorProto.INT32))
    labels = list(a.get("classlabels_strings") or a.get("classlabels_int64s") or [])
    forest = _forest_v3(node, context, "class", len(labels))
    post = a.get("post_transform", "NONE")
    _check(context, node, "SUM", post, forest)
    scores = _aggregate(b, _walk(b, x, forest, dtype), forest, "SUM", dtype)
    scored, never = _always(forest), (~forest.has.any(axis=0)).tolist()
    base = _as_array(a, "base_values")
    if len(labels) > 2:
        _multiclass(b, node, scores, labels=labels, base=base, scored=scored, never=never, post=post, dtype=dtype)
    else:
        ids = np.asarray(a.get("class_ids", []))
        weights = _as_array(a, "class_weights")
        one_column = len(labels) == 2 and len(set(ids.tolist())) == 1
        rule = (one_column, bool((weights >= 0).all()))
        _binary(b, node, scores, labels=labels, base=base, scored=(scored, never), post=post, dtype=dtype, rule=rule)
    return b.result()


def _multiclass(
    b: Builder,
    node: onnx.NodeProto,
    scores: str,
    *,
    labels: list,
    base: np.ndarray,
    scored: list,
    never: list,
    post: str,
    dtype: type,
) -> None:
    """More than two classes: base values added where given, the label the first highest scored class."""
    width = len(labels)
    if len(base) > width:
        raise refuse(b.context, node, f"{len(base)} base_values for {width} classes")
    counted = [s or k < len(base) for k, s in enumerate(scored)]
    if not any(counted) or any(not c and not n for c, n in zip(counted, never)):
        raise refuse(b.context, node, "a class that only some rows score (onnxruntime drops it from the argmax then)")
    if len(base):
        padded = np.zeros(width)
        padded[: len(base)] = base
        scores = b.op("Add", [scores, b.const(padded.reshape(1, -1).astype(dtype), "base_values")])
    dropped = np.where(counted, 0.0, -np.inf).astype(dtype).reshape(1, -1)
    ranked = scores if all(counted) else b.op("Add", [scores, b.const(dropped, "unscored")])
    _label(b, node, b.op("ArgMax", [ranked], axis=1, keepdims=0), labels)
    transform(b, b.op("Cast", [scores], to=FLOAT), post, node.output[1])


def _label(b: Builder, node: onnx.NodeProto, index: str, labels: list) -> None:
    b.op("Gather", [b.const(np.asarray(labels), "labels"), index], outputs=[node.output[0]], axis=0)


def _binary(
    b: Builder,
    node: onnx.NodeProto,
    scores: str,
    *,
    labels: list,
    base: np.ndarray,
    scored: tuple,
    post: str,
    dtype: type,
    rule: tuple[bool, bool],
) -> None:
    """Two classes, onnxruntime's rules (tree_ensemble_aggregator.h, FinalizeScores): a class no leaf scores is
    written as 0; without class 1 scores and with at most one base value, one score p is written as [1 - p, p]
    (weights >= 0), [-p, p], or logistic(-p), logistic(p); with one weight column the label compares the score
    of class 1 (else class 0) with 0.5 (weights >= 0) or 0."""
    (always, never), context = scored, b.context
    if len(labels) != 2 or len(base) > 2:
        raise refuse(context, node, f"{len(labels)} class labels and {len(base)} base_values")
    has1 = _status(context, node, always[1], never[1], "class 1")
    has0 = _status(context, node, always[0], never[0] or (has1 and not len(base)), "class 0")
    column = lambda k: b.op("Gather", [scores, b.const([k], f"class{k}", np.int64)], axis=1)  # noqa: E731
    plus = lambda v, k: b.op("Add", [v, b.const(np.asarray(base[k], dtype), "base")])  # noqa: E731
    s0 = column(0)
    zero = lambda: b.op("Expand", [b.const(np.zeros((1, 1), dtype), "zero"), b.op("Shape", [s0])])  # noqa: E731
    if len(base) == 2 and has1:  # onnxruntime adds base_values[1] to the class-0 score here, as written
        s1 = plus(s0, 1)
        s0 = b.op("Neg", [s1]) if has0 else zero()
    elif len(base) == 2:
        s0, s1 = plus(s0, 0) if has0 else zero(), zero()
    else:
        s1 = column(1) if has1 else None
        if len(base) == 1:
            s0 = plus(s0, 0) if has0 else zero()
    one_column, all_positive = rule
    if not one_column and labels != [0, 1] and not isinstance(labels[0], str):
        raise refuse(
            context, node, "two int64 labels other than [0, 1] without one weight column (onnxruntime returns 0/1 then)"
        )
    cut = b.const(np.asarray(0.5 if one_column and all_positive else 0.0, dtype), "cut")
    above = b.op("Cast", [b.op("Less", [cut, s1 if has1 else s0])], to=onnx.TensorProto.INT64)
    _label(b, node, b.op("Reshape", [above, b.const([-1], "flat", np.int64)]), labels)
    if has1 or len(base) == 2:
        transform(b, b.op("Cast", [b.op("Concat", [s0, s1], axis=1)], to=FLOAT), post, node.output[1])
    elif post == "PROBIT":
        raise refuse(context, node, "PROBIT on one score column for two classes (onnxruntime writes one of the two)")
    else:
        _one_column(
            b, b.op("Cast", [s0], to=FLOAT), node.output[1], post=post, all_positive=one_column and all_positive
        )


def _status(context: Context, node: onnx.NodeProto, always: bool, never: bool, what: str) -> bool:
    if not always and not never:
        raise refuse(context, node, f"{what} is scored on some rows only (onnxruntime's output shape varies then)")
    return always


def _one_column(b: Builder, p: str, out: str, *, post: str, all_positive: bool) -> None:
    """The [N, 2] scores onnxruntime writes from one score p (other transforms than LOGISTIC are not applied)."""
    if post == "LOGISTIC":
        b.op("Sigmoid", [b.op("Concat", [b.op("Neg", [p]), p], axis=1)], outputs=[out])
    elif all_positive:
        b.op("Concat", [b.op("Sub", [b.const(np.float32(1), "one"), p]), p], outputs=[out], axis=1)
    else:
        b.op("Concat", [b.op("Neg", [p]), p], outputs=[out], axis=1)


RULES = {
    "TreeEnsembleClassifier": _classifier,
    "TreeEnsembleRegressor": _regressor,
    "TreeEnsemble": _ensemble,
}
