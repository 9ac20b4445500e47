"""onnxfuse.lower.trees: tree ensembles rewritten into plain ai.onnx compute what onnxruntime's kernels compute.

Real exporter files (skl2onnx, onnxmltools for LightGBM and XGBoost) fitted on scikit-learn's bundled data sets,
with NaN cells where the model handles missing values, and onnx.helper graphs for the modes no exporter writes
(random trees whose thresholds are data values, so rows hit them exactly). Each lowered file runs in onnxruntime
and in onnx's ReferenceEvaluator against the original in onnxruntime."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from sklearn import datasets, ensemble, tree

from onnxfuse.lower import lower_model
from onnxfuse.lower.base import CannotLower

warnings.filterwarnings("ignore")
TOL = {"rtol": 1e-5, "atol": 1e-5}
ML = "ai.onnx.ml"


class GatherElements(OpRun):
    """onnx's reference GatherElements goes through np.choose, which takes at most 64 choices: the lowered node
    tables are longer, so the reference run uses the spec's definition (np.take_along_axis) instead."""

    def _run(self, data, indices, axis=None):
        indices = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(data, indices, axis=axis),)


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {model.graph.input[0].name: x})


def assert_same(expected: list, found: list, where: str) -> None:
    assert len(expected) == len(found), where
    for k, (e, f) in enumerate(zip(expected, found)):
        e, f = np.asarray(e), np.asarray(f)
        assert e.shape == f.shape and e.dtype == f.dtype, (
            f"{where} output {k}: {f.dtype}{f.shape} vs {e.dtype}{e.shape}"
        )
        if e.dtype.kind == "f":
            np.testing.assert_allclose(f, e, **TOL, err_msg=f"{where} output {k}")
        else:
            np.testing.assert_array_equal(f, e, err_msg=f"{where} output {k}")


def lowered_matches(model: onnx.ModelProto, x: np.ndarray) -> onnx.ModelProto:
    """Lower `model`, check the file, and compare onnxruntime and the reference evaluator with the original."""
    low = lower_model(model, "model 1 (test.onnx)")
    onnx.checker.check_model(low, full_check=True)
    assert all(n.domain != ML for n in low.graph.node)
    assert ML not in {o.domain for o in low.opset_import}
    consumed = {i for n in low.graph.node for i in n.input} | {o.name for o in low.graph.output}
    assert all(i.name in consumed for i in low.graph.initializer), "an unused constant"
    assert all(set(n.output) & consumed for n in low.graph.node), "a node nothing reads"
    expected = ort_run(model, x)
    assert_same(expected, ort_run(low, x), "onnxruntime")
    reference = ReferenceEvaluator(low, new_ops=[GatherElements]).run(None, {low.graph.input[0].name: x})
    assert_same(expected, [np.asarray(r) for r in reference], "reference evaluator")
    return low


def with_nan(x: np.ndarray, seed: int = 0, share: float = 0.1) -> np.ndarray:
    """x with about `share` of the cells of every third row set to NaN."""
    rng = np.random.default_rng(seed)
    x = x.copy()
    mask = (rng.random(x.shape) < share) & (np.arange(len(x)) % 3 == 0)[:, None]
    x[mask] = np.nan
    return x


def at_opset(model: onnx.ModelProto, version: int = 15) -> onnx.ModelProto:
    """onnxmltools writes the lowest opset its ops need (9, or no ai.onnx import at all for XGBoost); --ops core
    takes 13 or later, which onnxfuse's normalize stage converts to before lowering."""
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("", version))
        return model
    return onnx.version_converter.convert_version(model, version)


def data(name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return x.astype(np.float32), y


def skl(model, x: np.ndarray, **options) -> onnx.ModelProto:
    from skl2onnx import to_onnx

    extra = {"options": {"zipmap": False}} if hasattr(model, "predict_proba") else {}
    return to_onnx(model, x[:1], target_opset={"": 17, ML: 3}, **extra, **options)


# -- real exporter files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "make", "dataset"),
    [
        (
            "random forest, binary, trees of different depths",
            lambda: ensemble.RandomForestClassifier(12, max_depth=None, min_samples_leaf=3, random_state=0),
            "breast_cancer",
        ),
        ("extra trees, 3 classes", lambda: ensemble.ExtraTreesClassifier(10, max_depth=6, random_state=0), "wine"),
        (
            "gradient boosting, binary (one class id, one base value)",
            lambda: ensemble.GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0),
            "breast_cancer",
        ),
        (
            "gradient boosting, 3 classes",
            lambda: ensemble.GradientBoostingClassifier(n_estimators=8, max_depth=2, random_state=0),
            "iris",
        ),
        (
            "random forest regressor",
            lambda: ensemble.RandomForestRegressor(10, max_depth=7, random_state=0),
            "diabetes",
        ),
        (
            "gradient boosting regressor",
            lambda: ensemble.GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=0),
            "diabetes",
        ),
    ],
)
def test_lower_sklearn_ensembles_match_onnxruntime(name: str, make, dataset: str) -> None:
    x, y = data(dataset)
    lowered_matches(skl(make().fit(x, y), x), x)


def test_lower_string_labels_match_onnxruntime() -> None:
    x, y = data("iris")
    labels = np.array(["setosa", "versicolor", "virginica"], dtype=object)[y]
    model = skl(ensemble.RandomForestClassifier(8, max_depth=4, random_state=0).fit(x, labels), x)
    lowered_matches(model, x)


def test_lower_multi_target_regressor_matches_onnxruntime() -> None:
    x, y = data("diabetes")
    targets = np.stack([y, x[:, 2] * 100, y * x[:, 3]], axis=1)
    lowered_matches(skl(ensemble.ExtraTreesRegressor(8, max_depth=6, random_state=0).fit(x, targets), x), x)


def test_lower_decision_tree_with_nan_matches_onnxruntime() -> None:
    x, y = data("breast_cancer")
    model = skl(tree.DecisionTreeClassifier(max_depth=6, random_state=0).fit(with_nan(x, 1), y), x)
    lowered_matches(model, with_nan(x, 2))


@pytest.fixture
def histgb_exportable(monkeypatch: pytest.MonkeyPatch) -> None:
    """skl2onnx 1.20 passes a Python bool for a leaf's missing-value flag, which onnx 1.23 refuses as an int
    attribute: the flag is handed on as int, the converter otherwise unchanged."""
    from skl2onnx.common import tree_ensemble

    add_node = tree_ensemble.add_node

    def as_int(*args, nodes_missing_value_tracks_true=0, **kwargs):
        return add_node(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    monkeypatch.setattr(tree_ensemble, "add_node", as_int)


@pytest.mark.usefixtures("histgb_exportable")
@pytest.mark.parametrize(
    ("kind", "dataset"), [("Classifier", "breast_cancer"), ("Classifier", "wine"), ("Regressor", "diabetes")]
)
def test_lower_histgb_with_missing_tracks_matches_onnxruntime(kind: str, dataset: str) -> None:
    x, y = data(dataset)
    fitted = getattr(ensemble, f"HistGradientBoosting{kind}")(max_iter=12, max_depth=4, random_state=0)
    model = skl(fitted.fit(with_nan(x, 3), y), x)
    tracks = [a.ints for n in model.graph.node for a in n.attribute if a.name == "nodes_missing_value_tracks_true"]
    assert any(1 in t for t in tracks)
    lowered_matches(model, with_nan(x, 4))


def lightgbm_model(estimator, x: np.ndarray) -> onnx.ModelProto:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    types = [("X", FloatTensorType([None, x.shape[1]]))]
    return at_opset(onnxmltools.convert_lightgbm(estimator, initial_types=types, zipmap=False))


@pytest.mark.parametrize(
    ("kind", "dataset"), [("Classifier", "breast_cancer"), ("Classifier", "iris"), ("Regressor", "diabetes")]
)
def test_lower_lightgbm_matches_onnxruntime(kind: str, dataset: str) -> None:
    import lightgbm

    x, y = data(dataset)
    fitted = getattr(lightgbm, f"LGBM{kind}")(n_estimators=20, num_leaves=12, verbose=-1, random_state=0, n_jobs=1)
    lowered_matches(lightgbm_model(fitted.fit(with_nan(x, 5), y), x), with_nan(x, 6))


@pytest.mark.parametrize("dataset", ["breast_cancer", "wine"])
def test_lower_xgboost_matches_onnxruntime(dataset: str) -> None:
    import onnxmltools
    import xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    x, y = data(dataset)
    fitted = xgboost.XGBClassifier(n_estimators=15, max_depth=3, random_state=0, n_jobs=1).fit(with_nan(x, 7), y)
    model = at_opset(onnxmltools.convert_xgboost(fitted, initial_types=[("X", FloatTensorType([None, x.shape[1]]))]))
    lowered_matches(model, with_nan(x, 8))


# -- onnx.helper graphs for the modes no exporter writes ---------------------------------------------------------


def grow(rng: np.random.Generator, x: np.ndarray, depth: int, modes: tuple[str, ...], missing: float) -> list:
    """One random tree as a node list: (feature, threshold, mode, true, false, missing) or None for a leaf.
    Thresholds are values of x, so some rows equal them; depth 0 is a single leaf."""
    nodes: list = []

    def add(level: int) -> int:
        k = len(nodes)
        nodes.append(None)
        if level == depth or (level > 0 and rng.random() < 0.3):
            return k
        feature = int(rng.integers(x.shape[1]))
        column = x[:, feature][~np.isnan(x[:, feature])]
        true, false = add(level + 1), add(level + 1)
        nodes[k] = (feature, float(rng.choice(column)), str(rng.choice(modes)), true, false, rng.random() < missing)
        return k

    add(0)
    return nodes


def v3_node(trees: list[list], weights, *, op: str, **attrs) -> onnx.NodeProto:
    """TreeEnsembleClassifier/Regressor from node lists; `weights(tree, node)` gives a leaf's [(target, w)]."""
    fields: dict[str, list] = {
        k: []
        for k in (
            "treeids",
            "nodeids",
            "featureids",
            "values",
            "modes",
            "truenodeids",
            "falsenodeids",
            "missing_value_tracks_true",
        )
    }
    prefix = "class" if op == "TreeEnsembleClassifier" else "target"
    leaf: dict[str, list] = {k: [] for k in ("treeids", "nodeids", "ids", "weights")}
    for t, nodes in enumerate(trees):
        for k, n in enumerate(nodes):
            f, v, mode, true, false, miss = n if n else (0, 0.0, "LEAF", 0, 0, False)
            for key, value in zip(fields, (t, k, f, v, mode, true, false, int(miss))):
                fields[key].append(value)
            if n is None:
                for target, w in weights(t, k):
                    for key, value in zip(leaf, (t, k, target, w)):
                        leaf[key].append(value)
    return helper.make_node(
        op,
        ["X"],
        ["Y", "Z"] if prefix == "class" else ["Y"],
        domain=ML,
        **{f"nodes_{k}": v for k, v in fields.items()},
        **{f"{prefix}_{k}": v for k, v in leaf.items()},
        **attrs,
    )


def model_of(node: onnx.NodeProto, x_type: int, width: int, outputs: list, *, opset: int = 17, ml: int = 3):
    inputs = [helper.make_tensor_value_info("X", x_type, [None, width])]
    graph = helper.make_graph([node], "trees", inputs, [helper.make_tensor_value_info(*o) for o in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(ML, ml)])


def forest(seed: int, x: np.ndarray, modes=("BRANCH_LEQ",), missing: float = 0.0, depths=(0, 1, 3, 5)) -> list:
    rng = np.random.default_rng(seed)
    return [grow(rng, x, d, modes, missing) for d in depths]


def leaf_weights(seed: int, targets: int, *, low: float = -1.0, high: float = 1.0, dense: bool = True):
    """A weights(tree, node) function: every target on every leaf (dense), or a random nonempty subset."""
    rng = np.random.default_rng(seed)
    table: dict = {}

    def weights(t: int, k: int) -> list:
        if (t, k) not in table:
            chosen = range(targets) if dense else sorted(rng.choice(targets, rng.integers(1, targets + 1), False))
            table[t, k] = [(int(c), float(rng.uniform(low, high))) for c in chosen]
        return table[t, k]

    return weights


IRIS = data("iris")[0]
ROWS = np.concatenate([with_nan(IRIS, 9, 0.2), IRIS + 0.05])
ALL_MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ")


@pytest.mark.parametrize("modes", [(m,) for m in ALL_MODES] + [ALL_MODES])
@pytest.mark.parametrize("missing", [0.0, 0.5])
@pytest.mark.parametrize("opset", [13, 21])
def test_lower_branch_modes_match_onnxruntime(modes: tuple[str, ...], missing: float, opset: int) -> None:
    node = v3_node(forest(1, IRIS, modes, missing), leaf_weights(2, 1), op="TreeEnsembleRegressor", n_targets=1)
    lowered_matches(model_of(node, TensorProto.FLOAT, 4, [("Y", TensorProto.FLOAT, [None, 1])], opset=opset), ROWS)


@pytest.mark.parametrize("aggregate", ["SUM", "AVERAGE", "MIN", "MAX"])
@pytest.mark.parametrize(
    ("targets", "post", "dense"),
    [(1, "NONE", True), (3, "NONE", False), (3, "LOGISTIC", False), (3, "SOFTMAX", True), (3, "SOFTMAX_ZERO", False)],
)
@pytest.mark.parametrize("opset", [13, 21])
def test_lower_regressor_aggregates_and_transforms(
    aggregate: str, targets: int, post: str, dense: bool, opset: int
) -> None:
    base = {"base_values": [0.25, -0.5, 0.0][:targets]} if aggregate != "MAX" else {}
    node = v3_node(
        forest(3, IRIS),
        leaf_weights(4, targets, dense=dense),
        op="TreeEnsembleRegressor",
        n_targets=targets,
        aggregate_function=aggregate,
        post_transform=post,
        **base,
    )
    model = model_of(node, TensorProto.FLOAT, 4, [("Y", TensorProto.FLOAT, [None, targets])], opset=opset)
    lowered_matches(model, ROWS)


@pytest.mark.parametrize("targets", [1, 2])
def test_lower_regressor_probit_matches_onnxruntime(targets: int) -> None:
    node = v3_node(
        forest(5, IRIS),
        leaf_weights(6, targets, low=0.05, high=0.95),
        op="TreeEnsembleRegressor",
        n_targets=targets,
        aggregate_function="AVERAGE",
        post_transform="PROBIT",
    )
    lowered_matches(model_of(node, TensorProto.FLOAT, 4, [("Y", TensorProto.FLOAT, [None, targets])]), ROWS)


@pytest.mark.parametrize("x_type", [TensorProto.INT64, TensorProto.INT32])
def test_lower_integer_input_is_compared_as_float(x_type: int) -> None:
    """onnxruntime has integer kernels for the classifier only."""
    counts = np.round(IRIS * 10)
    node = v3_node(
        forest(7, counts, ALL_MODES), leaf_weights(8, 3), op="TreeEnsembleClassifier", classlabels_int64s=[0, 1, 2]
    )
    outputs = [("Y", TensorProto.INT64, [None]), ("Z", TensorProto.FLOAT, [None, 3])]
    lowered_matches(model_of(node, x_type, 4, outputs), counts.astype(helper.tensor_dtype_to_np_dtype(x_type)))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_lower_double_input_compares_in_double(as_tensor: bool) -> None:
    """Double rows against float thresholds (v1) or double ones (v3's *_as_tensor), rows nudged by one ulp."""
    x = datasets.load_diabetes(return_X_y=True)[0]
    trees = forest(9, x, ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_EQ"), 0.3, depths=(2, 4, 6))
    node = v3_node(trees, leaf_weights(10, 1), op="TreeEnsembleRegressor", n_targets=1)
    for name in ("nodes_values", "target_weights") if as_tensor else ():
        old = next(a for a in node.attribute if a.name == name)
        node.attribute.remove(old)
        node.attribute.append(
            helper.make_attribute(
                f"{name}_as_tensor", helper.make_tensor("t", TensorProto.DOUBLE, [len(old.floats)], list(old.floats))
            )
        )
    f32 = x.astype(np.float32).astype(np.float64)
    rows = np.concatenate([with_nan(x, 11), np.nextafter(x, np.inf), np.nextafter(f32, np.inf), f32])
    lowered_matches(model_of(node, TensorProto.DOUBLE, 10, [("Y", TensorProto.FLOAT, [None, 1])]), rows)


def test_lower_shared_subtrees_and_unordered_node_ids() -> None:
    """Two branches pointing to one subtree (onnxruntime follows the pointers), node ids listed out of order."""
    nodes = [  # (node id, feature, threshold, mode, true id, false id); the subtree at 2 is reached twice
        (5, 2, 2.5, "BRANCH_LEQ", 1, 3),
        (1, 0, 5.0, "BRANCH_LT", 2, 4),
        (3, 3, 1.7, "BRANCH_GT", 2, 6),
        (2, 1, 3.0, "BRANCH_GTE", 7, 0),
    ]
    leaves = {4: 0.5, 6: -1.0, 7: 2.0, 0: 3.5}  # onnxruntime wants node ids below the number of nodes
    ids = [n[0] for n in nodes] + list(leaves)
    node = helper.make_node(
        "TreeEnsembleRegressor",
        ["X"],
        ["Y"],
        domain=ML,
        n_targets=1,
        nodes_treeids=[0] * len(ids),
        nodes_nodeids=ids,
        nodes_featureids=[n[1] for n in nodes] + [0] * len(leaves),
        nodes_values=[n[2] for n in nodes] + [0.0] * len(leaves),
        nodes_modes=[n[3] for n in nodes] + ["LEAF"] * len(leaves),
        nodes_truenodeids=[n[4] for n in nodes] + [0] * len(leaves),
        nodes_falsenodeids=[n[5] for n in nodes] + [0] * len(leaves),
        target_treeids=[0] * len(leaves),
        target_nodeids=list(leaves),
        target_ids=[0] * len(leaves),
        target_weights=list(leaves.values()),
    )
    lowered_matches(model_of(node, TensorProto.FLOAT, 4, [("Y", TensorProto.FLOAT, [None, 1])]), ROWS)


def classifier(trees: list, weights, labels: list, **attrs) -> onnx.ModelProto:
    key = "classlabels_strings" if isinstance(labels[0], str) else "classlabels_int64s"
    node = v3_node(trees, weights, op="TreeEnsembleClassifier", **{key: labels}, **attrs)
    label_type = TensorProto.STRING if isinstance(labels[0], str) else TensorProto.INT64
    outputs = [("Y", label_type, [None]), ("Z", TensorProto.FLOAT, [None, len(labels)])]
    return model_of(node, TensorProto.FLOAT, 4, outputs, opset=13)  # the lowest opset --ops core takes


@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"])
@pytest.mark.parametrize("labels", [[3, 5, 9, 11], ["a", "b", "c", "d"]])
def test_lower_multiclass_transforms_and_labels(post: str, labels: list) -> None:
    low, high = (0.01, 0.24) if post == "PROBIT" else (-1.0, 1.0)
    weights = leaf_weights(12, 4, low=low, high=high, dense=post != "SOFTMAX_ZERO")
    trees = forest(13, IRIS, depths=(1, 2, 3, 4))
    base = {"base_values": [0.0, 0.0, 0.05, 0.0]} if post != "SOFTMAX_ZERO" else {}
    lowered_matches(classifier(trees, weights, labels, post_transform=post, **base), ROWS)


def one_class_weights(seed: int, class_id: int, low: float, high: float):
    rng = np.random.default_rng(seed)
    return lambda t, k: [(class_id, float(rng.uniform(low, high)))]


@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX"])
@pytest.mark.parametrize(("low", "high"), [(0.0, 0.3), (-0.4, 0.4)])
@pytest.mark.parametrize("base", [[], [0.1], [0.1, -0.2]])
@pytest.mark.parametrize("class_id", [0, 1])
def test_lower_binary_with_one_weight_column_follows_onnxruntime(
    post: str, low: float, high: float, base: list, class_id: int
) -> None:
    """onnxruntime's two-class rules: [1 - p, p] with weights >= 0 (label by p > 0.5), [-p, p] or logistic pairs
    with signed weights (label by p > 0), two plain columns when class 1 has the weights."""
    model = classifier(
        forest(14, IRIS, depths=(2, 3, 4)),
        one_class_weights(15, class_id, low, high),
        [4, 7],
        post_transform=post,
        **({"base_values": base} if base else {}),
    )
    lowered_matches(model, ROWS)


@pytest.mark.parametrize("labels", [[0, 1], ["no", "yes"]])
@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "PROBIT"])
def test_lower_binary_with_two_weight_columns(labels: list, post: str) -> None:
    low, high = (0.05, 0.3) if post == "PROBIT" else (-1.0, 1.0)
    lowered_matches(
        classifier(forest(16, IRIS), leaf_weights(17, 2, low=low, high=high), labels, post_transform=post), ROWS
    )


def v5_node(trees: list[list], weights, *, x_type: int, member: bool = False, **attrs) -> onnx.NodeProto:
    """TreeEnsemble (ai.onnx.ml 5) from node lists; with `member`, EQ nodes become sets of two or three values."""
    np_type = helper.tensor_dtype_to_np_dtype(x_type)
    codes = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5}
    branch: dict[str, list] = {
        k: []
        for k in (
            "featureids",
            "splits",
            "modes",
            "truenodeids",
            "trueleafs",
            "falsenodeids",
            "falseleafs",
            "missing_value_tracks_true",
        )
    }
    leaf_targets, leaf_values, roots, sets = [], [], [], []
    for t, nodes in enumerate(trees):
        ids = _v5_ids(nodes, len(branch["modes"]), len(leaf_targets))
        if ids[nodes[0][3]] == ids[nodes[0][4]]:  # a root with equal child ids reads as a single leaf: shift
            leaf_targets.append(0)
            leaf_values.append(0.0)
            ids = _v5_ids(nodes, len(branch["modes"]), len(leaf_targets))
        roots.append(ids[0])
        for k, n in enumerate(nodes):
            if n is None:
                for target, w in weights(t, k)[:1]:
                    leaf_targets.append(target)
                    leaf_values.append(w)
                continue
            f, v, mode, true, false, miss = n
            code = 6 if member and mode == "BRANCH_EQ" else codes[mode]
            if code == 6:
                sets += [*[v, v + 0.1 * (k % 3), v - 0.2][: 2 + k % 2], np.nan]  # two or three values, then NaN
            for key, value in zip(
                branch, (f, v, code, ids[true], nodes[true] is None, ids[false], nodes[false] is None, int(miss))
            ):
                branch[key].append(int(value) if key != "splits" else value)
    return helper.make_node(
        "TreeEnsemble",
        ["X"],
        ["Y"],
        domain=ML,
        tree_roots=roots,
        leaf_targetids=leaf_targets,
        leaf_weights=helper.make_tensor("w", x_type, [len(leaf_values)], np.asarray(leaf_values, np_type)),
        nodes_splits=helper.make_tensor(
            "s", x_type, [len(branch["splits"])], np.asarray(branch.pop("splits"), np_type)
        ),
        nodes_modes=helper.make_tensor("m", TensorProto.UINT8, [len(branch["modes"])], branch.pop("modes")),
        **(
            {"membership_values": helper.make_tensor("v", x_type, [len(sets)], np.asarray(sets, np_type))}
            if sets
            else {}
        ),
        **{f"nodes_{k}": v for k, v in branch.items()},
        **attrs,
    )


def _v5_ids(nodes: list, branches: int, leaves: int) -> dict[int, int]:
    """Each node's index in nodes_* (branches) or leaf_* (leaves), numbering on from the trees before."""
    found, counts = {}, [branches, leaves]
    for k, n in enumerate(nodes):
        found[k] = counts[n is None]
        counts[n is None] += 1
    return found


@pytest.mark.filterwarnings("ignore:divide by zero")  # PROBIT of an unscored target's 0 is -inf in both runtimes
@pytest.mark.parametrize("x_type", [TensorProto.FLOAT, TensorProto.DOUBLE])
@pytest.mark.parametrize(("aggregate", "post"), [(1, 0), (0, 3), (2, 0), (3, 4)])
@pytest.mark.parametrize("member", [False, True])
def test_lower_tree_ensemble_v5_matches_onnxruntime(x_type: int, aggregate: int, post: str, member: bool) -> None:
    trees = forest(18, IRIS, ALL_MODES, 0.4, depths=(1, 2, 3, 5))
    low, high = (0.05, 0.95) if post == 4 else (-1.0, 1.0)
    node = v5_node(
        trees,
        leaf_weights(19, 2, low=low, high=high, dense=False),
        x_type=x_type,
        member=member,
        n_targets=2,
        aggregate_function=aggregate,
        post_transform=post,
    )
    model = model_of(node, x_type, 4, [("Y", x_type, [None, 2])], opset=21, ml=5)
    lowered_matches(model, ROWS.astype(helper.tensor_dtype_to_np_dtype(x_type)))


# -- refusals ---------------------------------------------------------------------------------------------------


def assert_refused(model: onnx.ModelProto, *words: str) -> None:
    with pytest.raises(CannotLower) as error:
        lower_model(model, "model 1 (test.onnx)")
    for word in ("model 1 (test.onnx)", "--ops standard", *words):
        assert word in str(error.value)


@pytest.mark.parametrize("post", [1, 2])
def test_lower_refuses_v5_softmax_and_logistic_codes(post: int) -> None:
    """onnxruntime reads post_transform 1 as LOGISTIC and 2 as SOFTMAX, the spec the other way round."""
    node = v5_node(
        forest(20, IRIS, depths=(2, 3)), leaf_weights(21, 2), x_type=TensorProto.FLOAT, n_targets=2, post_transform=post
    )
    assert_refused(
        model_of(node, TensorProto.FLOAT, 4, [("Y", TensorProto.FLOAT, [None, 2])], opset=21, ml=5),
        f"post_transform {post}",
    )


def test_lower_refuses_a_transform_onnxruntime_ignores_on_one_target() -> None:
    node = v3_node(
        forest(22, IRIS), leaf_weights(23, 1), op="TreeEnsembleRegressor", n_targets=1, post_transform="LOGISTIC"
    )
    assert_refused(model_of(node, TensorProto.FLOAT, 4, [("Y", TensorProto.FLOAT, [None, 1])]), "LOGISTIC")


def test_lower_refuses_probit_on_one_score_column() -> None:
    model = classifier(forest(24, IRIS), one_class_weights(25, 0, 0.1, 0.2), [0, 1], post_transform="PROBIT")
    assert_refused(model, "one score column")


def test_lower_refuses_a_class_only_some_rows_score() -> None:
    def weights(t: int, k: int) -> list:
        return [(0, 0.5), (1, 0.1)] if t == 0 else [(0, 0.2)] + ([(2, 0.3)] if k % 2 else [])

    model = classifier(forest(26, IRIS, depths=(2, 3)), weights, [0, 1, 2])
    assert_refused(model, "only some rows")


def test_lower_refuses_two_other_int_labels_without_one_weight_column() -> None:
    """onnxruntime labels such rows 0 or 1, not the classes."""
    assert_refused(classifier(forest(33, IRIS), leaf_weights(34, 2), [3, 7]), "other than [0, 1]")


def test_lower_refuses_a_v5_root_with_equal_children() -> None:
    """onnxruntime reads such a root as a single leaf, the reference evaluator as a branch."""
    node = v5_node(forest(35, IRIS, depths=(2, 3)), leaf_weights(36, 1), x_type=TensorProto.FLOAT, n_targets=1)
    attrs = {a.name: a for a in node.attribute}
    root = attrs["tree_roots"].ints[0]
    attrs["nodes_trueleafs"].ints[root], attrs["nodes_truenodeids"].ints[root] = 1, 0
    attrs["nodes_falseleafs"].ints[root], attrs["nodes_falsenodeids"].ints[root] = 0, 0
    model = model_of(node, TensorProto.FLOAT, 4, [("Y", TensorProto.FLOAT, [None, 1])], opset=21, ml=5)
    assert_refused(model, "equal children")


def test_lower_refuses_double_thresholds_with_float_input() -> None:
    node = v3_node(forest(27, IRIS), leaf_weights(28, 1), op="TreeEnsembleRegressor", n_targets=1)
    old = next(a for a in node.attribute if a.name == "nodes_values")
    node.attribute.remove(old)
    node.attribute.append(
        helper.make_attribute(
            "nodes_values_as_tensor", helper.make_tensor("t", TensorProto.DOUBLE, [len(old.floats)], list(old.floats))
        )
    )
    assert_refused(model_of(node, TensorProto.FLOAT, 4, [("Y", TensorProto.FLOAT, [None, 1])]), "double")


# -- other runtimes ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def portable_files(tmp_path_factory) -> dict[str, tuple[str, np.ndarray, list, bool]]:
    """A few lowered files: path, rows, the original's outputs in onnxruntime, and whether tract can return the
    label (onnxmltools ends it with a Cast to int64, which tract's Python API cannot hand back)."""
    import lightgbm

    root = tmp_path_factory.mktemp("portable")
    x, y = data("breast_cancer")
    rf = skl(ensemble.RandomForestClassifier(20, max_depth=8, random_state=0).fit(x, y), x)
    gb = skl(ensemble.GradientBoostingClassifier(n_estimators=20, random_state=0).fit(x, y), x)
    xi, yi = data("iris")
    boosted = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=8, verbose=-1, n_jobs=1)
    lgb = lightgbm_model(boosted.fit(xi, yi), xi)
    lgb_nan = lightgbm_model(boosted.fit(with_nan(x, 31), y), x)
    xd, yd = data("diabetes")
    rfr = skl(ensemble.RandomForestRegressor(20, max_depth=8, random_state=0).fit(xd, yd), xd)
    trees = forest(29, IRIS, ALL_MODES, 0.4, (1, 2, 4))
    v5 = v5_node(trees, leaf_weights(30, 2, dense=False), x_type=TensorProto.FLOAT, member=True, n_targets=2)
    v5 = model_of(v5, TensorProto.FLOAT, 4, [("Y", TensorProto.FLOAT, [None, 2])], opset=21, ml=5)
    greater = v3_node(
        forest(37, IRIS, ("BRANCH_GT",), 0.3), leaf_weights(38, 1), op="TreeEnsembleRegressor", n_targets=1
    )
    greater = model_of(greater, TensorProto.FLOAT, 4, [("Y", TensorProto.FLOAT, [None, 1])])
    found = {}
    for name, model, rows, labels in [
        ("gt_missing_nan", greater, ROWS, True),
        ("rf_binary", rf, x, True),
        ("gb_binary", gb, x, True),
        ("lgbm_3class", lgb, xi, False),
        ("lgbm_binary_nan", lgb_nan, with_nan(x, 32), False),
        ("rf_regressor", rfr, xd, True),
        ("v5_member_nan", v5, ROWS, True),
    ]:
        path = root / f"{name}.onnx"
        onnx.save(lower_model(model, name), str(path))
        found[name] = (str(path), rows, ort_run(model, rows), labels)
    return found


def test_lowered_files_run_on_openvino(portable_files) -> None:
    openvino = pytest.importorskip("openvino")
    core = openvino.Core()
    for name, (path, rows, expected, _) in portable_files.items():
        compiled = core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        results = compiled({0: rows})
        assert_same(expected, [results[compiled.output(k)] for k in range(len(expected))], f"openvino {name}")


def test_lowered_files_run_on_tract(portable_files) -> None:
    tract = pytest.importorskip("tract")
    for name, (path, rows, expected, labels) in portable_files.items():
        model = tract.onnx().load(path)
        model.set_input_fact(0, f"{len(rows)},{rows.shape[1]},f32")  # tract needs the input's shape
        found = model.into_model().into_runnable().run([rows])
        checked = range(len(expected)) if labels else [len(expected) - 1]  # the scores are the last output
        assert_same([expected[k] for k in checked], [found[k].to_numpy() for k in checked], f"tract {name}")
