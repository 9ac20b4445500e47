"""Streaming hold-out metrics equal report.metrics on real data whatever the batch split, and are bit-identical when
the same batches arrive in the same order (they go into the file's metadata)."""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from onnxfuse import report
from onnxfuse.errors import OnnxfuseError
from onnxfuse.streaming import AUC_ROWS, Accumulator

CLASSIFICATION = ("cancer", "cancer_strings", "cancer_sparse", "wine", "wine_reversed")
CASES = (*CLASSIFICATION, "diabetes", "diabetes_1e6", "diabetes_1e8")


def _classifier(x: np.ndarray, y: np.ndarray) -> tuple[tuple, np.ndarray]:
    """Fit on every other row, predict every row: real probabilities, some of them wrong."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[::2], y[::2])
    return tuple(model.classes_.tolist()), model.predict_proba(x)


def _regressor(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return Ridge(alpha=1.0).fit(x[::2], y[::2]).predict(x)


@pytest.fixture(scope="session")
def cases() -> dict[str, tuple[str, tuple | None, np.ndarray, np.ndarray]]:
    """task, classes, target, prediction for each real data set, as report.metrics takes them."""
    cancer, wine, diabetes = load_breast_cancer(), load_wine(), load_diabetes()
    classes, probabilities = _classifier(cancer.data, cancer.target)
    named = cancer.target_names[cancer.target].astype(object)
    string_classes, string_probabilities = _classifier(cancer.data, named)
    wine_classes, wine_probabilities = _classifier(wine.data, wine.target)
    predicted = _regressor(diabetes.data, diabetes.target)
    spread = diabetes.target.std()
    return {
        "cancer": ("classification", classes, cancer.target, probabilities),
        "cancer_strings": ("classification", string_classes, named, string_probabilities),
        # integer labels too far apart for a lookup table: the searchsorted path
        "cancer_sparse": ("classification", (-7, 10**9), np.array([-7, 10**9])[cancer.target], probabilities),
        "wine": ("classification", wine_classes, wine.target, wine_probabilities),
        # numeric labels given in an unsorted class order, as an ONNX model may declare them
        "wine_reversed": ("classification", (30, 20, 10), np.array([10, 20, 30])[wine.target],
                          wine_probabilities[:, ::-1].copy()),
        "diabetes": ("regression", None, diabetes.target, predicted),
        # targets around 1e6 and 1e8 with spread 1: Σy² - (Σy)²/n cancels (at 1e8 entirely); the moments do not
        **{f"diabetes_{offset:.0e}".replace("+0", ""): (
            "regression", None, offset + (diabetes.target - diabetes.target.mean()) / spread,
            (offset + (predicted - diabetes.target.mean()) / spread)[:, None]) for offset in (1e6, 1e8)},
    }  # fmt: skip


def _keys(count: int, seed: int = 0) -> np.ndarray:
    keys = np.random.default_rng(seed).integers(0, np.iinfo(np.uint64).max, count, dtype=np.uint64, endpoint=True)
    assert len(np.unique(keys)) == count
    return keys


def _splits(count: int, pieces: int, seed: int) -> list[slice]:
    """`pieces` contiguous batches of random, uneven sizes covering every row."""
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, count), pieces - 1, replace=False))
    bounds = [0, *cuts.tolist(), count]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def _fed(case: tuple, batches: list[slice], keys: np.ndarray, *, auc_rows: int = AUC_ROWS) -> Accumulator:
    task, classes, target, prediction = case
    accumulator = Accumulator(task, classes, auc_rows=auc_rows)
    for batch in batches:
        accumulator.update(target[batch], prediction[batch], keys[batch])
    return accumulator


def _merged(case: tuple, batches: list[slice], keys: np.ndarray, *, auc_rows: int = AUC_ROWS) -> Accumulator:
    """Batches spread over three accumulators (as over Ray actors), merged back in order."""
    groups = [batches[:2], batches[2:5], batches[5:]]
    first, *others = [_fed(case, group, keys, auc_rows=auc_rows) for group in groups]
    for other in others:
        first.merge(other)
    return first


def _expected(case: tuple) -> dict[str, float | None]:
    task, classes, target, prediction = case
    return report.metrics(task, target, prediction, classes)


@pytest.mark.parametrize("name", CASES)
def test_result_equals_report_metrics_when_one_batch(cases: dict, name: str) -> None:
    case = cases[name]
    accumulator = _fed(case, [slice(None)], _keys(len(case[2])))
    assert accumulator.result() == _expected(case)
    assert accumulator.rows == len(case[2])
    assert not accumulator.auc_sampled


@pytest.mark.parametrize("name", CASES)
def test_result_equals_report_metrics_when_uneven_batches_merged(cases: dict, name: str) -> None:
    case = cases[name]
    keys = _keys(len(case[2]))
    batches = _splits(len(case[2]), 7, seed=1)
    assert len({b.stop - b.start for b in batches}) > 1
    fed, merged = _fed(case, batches, keys), _merged(case, batches, keys)
    assert fed.result() == merged.result() == _expected(case)
    assert fed.rows == merged.rows == len(case[2])


@pytest.mark.parametrize("name", CASES)
def test_result_bit_identical_when_same_batches_in_same_order(cases: dict, name: str) -> None:
    case = cases[name]
    keys = _keys(len(case[2]))
    batches = _splits(len(case[2]), 7, seed=2)
    first, second = _merged(case, batches, keys), _merged(case, batches, keys)
    assert pickle.dumps(first) == pickle.dumps(second)  # the whole state, not only the rounded result
    assert first.result() == second.result()
    other_split = _fed(case, _splits(len(case[2]), 5, seed=3), keys)
    assert other_split.result() == first.result()  # a different split: equal after rounding


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_roc_auc_equals_report_auc_over_smallest_keys_when_sampled(cases: dict, name: str) -> None:
    task, classes, target, prediction = case = cases[name]
    keys = _keys(len(target), seed=4)
    smallest = np.argsort(keys)[:120]  # recomputed independently: the 120 rows with the smallest keys
    sampled = report.metrics(task, target[smallest], prediction[smallest], classes)["roc_auc"]
    assert sampled is not None and sampled != _expected(case)["roc_auc"]
    results, samples = [], []
    for seed in (5, 6, 7):
        accumulator = _merged(case, _splits(len(target), 7, seed=seed), keys, auc_rows=120)
        assert accumulator.auc_sampled
        result = accumulator.result()
        assert result["roc_auc"] == sampled
        assert result["accuracy"] == _expected(case)["accuracy"] and result["log_loss"] == _expected(case)["log_loss"]
        results.append(result["roc_auc"])
        samples.append(pickle.dumps(accumulator._sample()))
    assert len(set(results)) == 1 and len(set(samples)) == 1  # the kept sample does not depend on the split
    np.testing.assert_array_equal(pickle.loads(samples[0])[0], np.sort(keys)[:120])


def test_update_keeps_first_rows_of_tied_keys_whatever_split(cases: dict) -> None:
    """Ties by key cannot happen with random 64-bit keys, but even then the sample is a stable sort's first rows."""
    case = cases["wine"]
    keys = np.random.default_rng(8).integers(0, 20, len(case[2])).astype(np.uint64)
    expected = np.argsort(keys, kind="stable")[:50]
    for seed in (9, 10):
        accumulator = _merged(case, _splits(len(case[2]), 7, seed=seed), keys, auc_rows=50)
        kept, index, probabilities = accumulator._sample()
        np.testing.assert_array_equal(kept, keys[expected])
        np.testing.assert_array_equal(index, case[2][expected])
        np.testing.assert_allclose(probabilities, case[3][expected], rtol=1e-12)


@pytest.mark.parametrize("name", ["cancer", "wine"])
def test_roc_auc_none_when_class_missing_from_sample(cases: dict, name: str) -> None:
    case = cases[name]
    target = case[2]
    order = np.lexsort((np.random.default_rng(11).random(len(target)), target))  # class 0 rows first, shuffled
    keys = np.empty(len(target), dtype=np.uint64)
    keys[order] = np.arange(len(target), dtype=np.uint64)
    accumulator = _fed(case, _splits(len(target), 7, seed=12), keys, auc_rows=int(np.sum(target != target.max())))
    assert accumulator.auc_sampled
    assert accumulator.result() == {**_expected(case), "roc_auc": None}


def test_accumulator_continues_identically_after_pickle_round_trip(cases: dict) -> None:
    for name in ("cancer_strings", "diabetes"):
        _, _, target, prediction = case = cases[name]
        keys = _keys(len(target), seed=13)
        batches = _splits(len(target), 7, seed=14)
        accumulator = _fed(case, batches[:3], keys, auc_rows=100)
        copy = pickle.loads(pickle.dumps(accumulator))
        for batch in batches[3:]:
            accumulator.update(target[batch], prediction[batch], keys[batch])
            copy.update(target[batch], prediction[batch], keys[batch])
        assert pickle.dumps(copy) == pickle.dumps(accumulator)
        assert copy.result() == accumulator.result() == _fed(case, batches, keys, auc_rows=100).result()


def test_the_auc_sample_keeps_its_own_copy_of_the_caller_s_arrays(cases: dict) -> None:
    """The sample keeps a batch's rows as they come (it sorts only when it prunes): a caller that reuses its
    buffers for the next batch must not change the rows already kept."""
    _, classes, target, prediction = case = cases["wine"]
    keys = _keys(len(target), seed=16)
    batches = _splits(len(target), 7, seed=17)  # batches under auc_rows: kept as they come, until pruned
    expected = _fed(case, batches, keys, auc_rows=50)
    reused_keys, reused_prediction = np.empty_like(keys), np.empty_like(prediction)
    accumulator = Accumulator("classification", classes, auc_rows=50)
    for batch in batches:
        count = batch.stop - batch.start
        reused_keys[:count], reused_prediction[:count] = keys[batch], prediction[batch]
        accumulator.update(target[batch], reused_prediction[:count], reused_keys[:count])
    assert pickle.dumps(accumulator) == pickle.dumps(expected)
    assert accumulator.result() == expected.result()


def test_result_all_none_when_no_rows() -> None:
    classification = Accumulator("classification", ("a", "b"))
    classification.update(np.array([], dtype=object), np.empty((0, 2)), np.empty(0, dtype=np.uint64))
    classification.merge(Accumulator("classification", ("a", "b")))
    assert classification.result() == {"accuracy": None, "log_loss": None, "roc_auc": None}
    assert classification.rows == 0 and not classification.auc_sampled
    assert Accumulator("regression", None).result() == {"r2": None, "rmse": None}


@pytest.mark.parametrize(("target", "prediction"), [
    (np.ones(5), np.ones(5)),  # perfect on a constant target: 1.0
    (np.ones(5), np.zeros(5)),  # wrong on a constant target: 0.0
    (np.full(6, 3.0), np.array([3.0, 3.0, 3.0, 3.0, 3.0, 2.0])),
])  # fmt: skip
def test_result_equals_report_metrics_when_constant_target(target: np.ndarray, prediction: np.ndarray) -> None:
    keys = _keys(len(target))
    accumulator = _fed(("regression", None, target, prediction), _splits(len(target), 3, seed=15), keys)
    assert accumulator.result() == report.metrics("regression", target, prediction, None)


@pytest.mark.filterwarnings("ignore:R\\^2 score is not well-defined")
def test_r2_nan_like_report_metrics_when_one_row() -> None:
    accumulator = Accumulator("regression", None)
    accumulator.update(np.array([2.0]), np.array([1.5]), _keys(1))
    expected = report.metrics("regression", np.array([2.0]), np.array([1.5]), None)
    assert math.isnan(accumulator.result()["r2"]) and math.isnan(expected["r2"])
    assert accumulator.result()["rmse"] == expected["rmse"] == 0.5


@pytest.mark.parametrize(("classes", "target"), [
    ((0, 1), np.array([0, 2])),
    ((3, 4), np.array([3, 2])),  # below the lowest class
    ((0, 10**9), np.array([0, 5])),
    (("a", "b"), np.array(["a", "c"])),
])  # fmt: skip
def test_update_raises_when_label_not_among_classes(classes: tuple, target: np.ndarray) -> None:
    with pytest.raises(OnnxfuseError, match="is not among the models' classes"):
        Accumulator("classification", classes).update(target, np.full((2, 2), 0.5), _keys(2))


def test_merge_raises_when_classes_differ() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        Accumulator("classification", (0, 1)).merge(Accumulator("classification", (0, 1, 2)))
