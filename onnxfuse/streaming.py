"""Hold-out metrics accumulated batch by batch (a Parquet row group each, maybe in a Ray actor), as report.metrics.

Exact state: the count of correct predictions (an int); per-batch float64 sums (`np.sum`, pairwise) of -log p and of
(y - ŷ)², kept in lists and `math.fsum`'d at result time; the target's (n, mean, M2) combined by Chan et al.'s
parallel formula, so R²'s SStot never suffers the cancellation of Σy² - (Σy)²/n. ROC AUC is computed on a bounded
sample: the `auc_rows` rows with the smallest sampling keys (bottom-k), the same rows however the data was split.
Identical batches fed (and merged) in the same order give bit-identical results: they go into the file's metadata.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from onnxfuse.errors import OnnxfuseError
from onnxfuse.report import CLASSIFICATION_METRICS, REGRESSION_METRICS, _auc, _round

AUC_ROWS = 200_000
_EPS = float(np.finfo(np.float64).eps)  # sklearn's log_loss clips to [eps, 1 - eps] after report.metrics' clipping


class Accumulator:
    """Partial hold-out metrics over the rows seen so far; picklable, so partials travel back from Ray actors."""

    def __init__(self, task: str, classes: Sequence | None, *, auc_rows: int = AUC_ROWS) -> None:
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', not {task!r}")
        if auc_rows < 1:
            raise ValueError(f"auc_rows must be at least 1, not {auc_rows}")
        self.task = task
        self.classes = None if classes is None else tuple(classes)
        self.auc_rows = int(auc_rows)
        self._rows = 0
        self._labels = None if self.classes is None else len(self.classes)  # columns of the probabilities
        self._lookup = None if self.classes is None else {c: i for i, c in enumerate(self.classes)}
        self._sorted = _sorted_classes(self.classes)
        self._table = _class_table(self._sorted)
        self._correct = 0
        self._losses: list[float] = []  # per batch: Σ -log p(true class)
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # AUC candidates: keys, index, probabilities
        self._buffered = 0  # candidate rows in the chunks, pruned to auc_rows beyond 2 * auc_rows
        self._limit: np.uint64 | None = None  # once auc_rows are kept: only a smaller key can still enter
        self._mean = 0.0
        self._m2 = 0.0
        self._squares: list[float] = []  # per batch: Σ (y - ŷ)²

    @property
    def rows(self) -> int:
        """Rows seen, over every update and merge."""
        return self._rows

    @property
    def auc_sampled(self) -> bool:
        """True when the ROC AUC comes from fewer rows than were seen: the report says so."""
        return self.task == "classification" and self._rows > self.auc_rows

    def update(self, target: np.ndarray, prediction: np.ndarray, keys: np.ndarray) -> None:
        """Add one batch: labels (or float targets), [n, C] probabilities (or [n] / [n, 1] predictions), uint64
        sampling keys (uniform random, distinct), which only choose the rows the ROC AUC sample keeps."""
        target = np.asarray(target)
        prediction = np.asarray(prediction, dtype=np.float64)
        keys = np.array(keys, dtype=np.uint64)  # a copy: the AUC sample may keep it as is
        count = len(target)
        if len(prediction) != count or keys.shape != (count,):
            raise ValueError(f"a batch of {count} targets has {len(prediction)} predictions and {len(keys)} keys")
        if count == 0:
            return
        if self.task == "regression":
            self._update_regression(target, prediction)
        else:
            self._update_classification(target, prediction, keys)

    def merge(self, other: Accumulator) -> None:
        """Add a partial computed on other rows; merging the same partials in the same order gives the same bits."""
        if (other.task, other.classes, other.auc_rows) != (self.task, self.classes, self.auc_rows):
            raise ValueError("cannot merge accumulators of different tasks, classes or auc_rows")
        if other._rows == 0:
            return
        if self.task == "regression":
            self._squares.extend(other._squares)
            self._combine(other._rows, other._mean, other._m2)
            return
        self._check_labels(other._labels)
        self._rows += other._rows
        self._correct += other._correct
        self._losses.extend(other._losses)
        for chunk in other._chunks:  # other's rows come after ours: they lose ties; its candidates hold its sample
            self._keep(*chunk)

    def result(self) -> dict[str, float | None]:
        """The keys, rounding and semantics of report.metrics; every value None when no rows were seen."""
        names = CLASSIFICATION_METRICS if self.task == "classification" else REGRESSION_METRICS
        if self._rows == 0:
            return dict.fromkeys(names, None)
        if self.task == "regression":
            return self._regression_result()
        return {
            "accuracy": _round(self._correct / self._rows),
            "log_loss": _round(math.fsum(self._losses) / self._rows),
            "roc_auc": self._roc_auc(),
        }

    def _roc_auc(self) -> float | None:
        """report._auc on the kept sample; None when a class is missing from it (sklearn 1.9 answers nan and warns)."""
        _, index, probabilities = self._sample()
        if np.count_nonzero(np.bincount(index, minlength=self._labels)) < self._labels:
            return None
        return _auc(index, probabilities, list(range(self._labels)))

    def _update_classification(self, target: np.ndarray, prediction: np.ndarray, keys: np.ndarray) -> None:
        """Clip and renormalise as report.metrics does, then count, sum -log p and offer the rows to the sample."""
        if prediction.ndim != 2:
            raise ValueError(f"classification takes [n, C] probabilities, not shape {prediction.shape}")
        self._check_labels(prediction.shape[1])
        index = self._index_of(target)
        probabilities = np.clip(prediction, 1e-15, 1.0)
        probabilities /= _row_sums(probabilities)[:, None]
        self._rows += len(index)
        self._correct += int(np.count_nonzero(_row_argmax(probabilities) == index))
        true = probabilities.ravel().take(np.arange(0, probabilities.size, probabilities.shape[1]) + index)
        self._losses.append(float(-np.sum(np.log(np.clip(true, _EPS, 1.0 - _EPS)))))
        self._keep(keys, index, probabilities)

    def _update_regression(self, target: np.ndarray, prediction: np.ndarray) -> None:
        """Sum the squared errors and fold the batch's (n, mean, M2) into the running moments."""
        y = target.astype(np.float64).ravel()
        predicted = prediction.ravel()
        if len(predicted) != len(y):
            raise ValueError(f"regression takes one prediction per row, not shape {prediction.shape}")
        self._squares.append(float(np.sum((y - predicted) ** 2)))
        self._combine(len(y), *_moments(y))

    def _regression_result(self) -> dict[str, float | None]:
        """R² as sklearn's r2_score (force_finite: 1.0 or 0.0 for a constant target, nan under two rows), RMSE."""
        squares = math.fsum(self._squares)
        if self._rows < 2:
            r2 = math.nan
        elif self._m2 != 0.0:
            r2 = 1.0 - squares / self._m2
        else:
            r2 = 1.0 if squares == 0.0 else 0.0
        return {"r2": _round(r2), "rmse": _round(math.sqrt(squares / self._rows))}

    def _combine(self, count: int, mean: float, m2: float) -> None:
        """Chan et al.'s parallel update: deterministic in merge order, exact zero spread for a constant target."""
        total = self._rows + count
        if self._rows == 0:
            self._mean, self._m2 = mean, m2
        else:
            delta = mean - self._mean
            self._mean += delta * count / total
            self._m2 += m2 + delta * delta * self._rows * count / total
        self._rows = total

    def _check_labels(self, labels: int | None) -> None:
        """The probability columns must match the classes (or the first batch, when the classes are not known)."""
        if labels is None:
            return
        if self._labels is None:
            self._labels = labels
        elif labels != self._labels:
            raise ValueError(f"probabilities have {labels} columns, but {self._labels} classes were expected")

    def _index_of(self, target: np.ndarray) -> np.ndarray:
        """Class index per row: a table or searchsorted for numbers, a dict for the others; as is with no classes."""
        if self.classes is None:
            index = target.astype(np.int64).ravel()
            if len(index) and (index.min() < 0 or index.max() >= self._labels):
                raise OnnxfuseError(f"hold-out class index out of range 0..{self._labels - 1}")
            return index
        if self._table is not None and target.dtype.kind in "biu":
            low, table = self._table
            shifted = np.subtract(target.ravel(), low, dtype=np.int64)
            inside = shifted.view(np.uint64) < len(table)  # a label below the lowest class wraps around: outside
            index = table.take(shifted, mode="clip")
            unknown = ~inside | (index < 0)
            if unknown.any():
                raise self._unknown(target.ravel()[unknown][0])
            return index
        if self._sorted is not None and target.dtype.kind in "biuf":
            values, order = self._sorted
            position = np.minimum(np.searchsorted(values, target.ravel()), len(values) - 1)
            unknown = values[position] != target.ravel()
            if unknown.any():
                raise self._unknown(target.ravel()[unknown][0])
            return order[position]
        try:
            return np.array([self._lookup[v] for v in target.ravel().tolist()], dtype=np.int64)
        except KeyError as exc:
            raise self._unknown(exc.args[0]) from None

    def _unknown(self, label: object) -> OnnxfuseError:
        """A hold-out label the models do not know: the user's data or class declaration needs fixing."""
        return OnnxfuseError(f"hold-out label {label!r} is not among the models' classes {list(self.classes)}")

    def _keep(self, keys: np.ndarray, index: np.ndarray, probabilities: np.ndarray) -> None:
        """Bottom-k: offer rows to the AUC sample, which keeps the auc_rows smallest keys (ties to the earlier row)
        whatever the split; candidates are chunked and pruned only past 2 * auc_rows, so an update costs O(batch)."""
        rows = (keys, index, probabilities)
        if self._limit is not None:  # a tie with the auc_rows-th kept key loses: that row came first
            rows = _taken(rows, np.flatnonzero(keys < self._limit))
        if len(rows[0]) > self.auc_rows:  # the batch's own bottom-k: copy few rows (`_sample` sorts the rest)
            rows = _taken(rows, _bottom(rows[0], self.auc_rows))
        if len(rows[0]) == 0:
            return
        self._chunks.append(rows)
        self._buffered += len(rows[0])
        if self._buffered > 2 * self.auc_rows:
            self._chunks, self._buffered, self._limit = self._pruned()

    def _sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The kept rows (keys, class index, probabilities) in key order: the same arrays whatever the split."""
        if not self._chunks:
            return np.empty(0, np.uint64), np.empty(0, np.int64), np.empty((0, self._labels or 0), np.float64)
        joined = tuple(np.concatenate(parts) for parts in zip(*self._chunks, strict=True))  # in arrival order
        return _taken(joined, _bottom(joined[0], self.auc_rows))

    def _pruned(self) -> tuple[list, int, np.uint64 | None]:
        """The candidates cut to the sample (chunks, count, limit)."""
        sample = self._sample()
        limit = sample[0][-1] if len(sample[0]) == self.auc_rows else None
        return ([sample] if len(sample[0]) else []), len(sample[0]), limit

    def __getstate__(self) -> dict:
        """Pickle the pruned sample: small to send back from a Ray actor, the same bytes however it was split."""
        state = dict(self.__dict__)
        state["_chunks"], state["_buffered"], state["_limit"] = self._pruned()
        return state


def _taken(arrays: tuple[np.ndarray, ...], positions: np.ndarray) -> tuple[np.ndarray, ...]:
    """The rows at `positions` of each array (`take`: 15x faster than fancy indexing on a 2-D array)."""
    return tuple(array.take(positions, axis=0) for array in arrays)


def _sorted_classes(classes: tuple | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Numeric classes sorted, with each one's index: a vectorised label lookup for millions of rows."""
    if classes is None:
        return None
    values = np.asarray(classes)
    if values.dtype.kind not in "biuf" or len(values) == 0:
        return None
    order = np.argsort(values, kind="stable")
    return values[order], order.astype(np.int64)


def _class_table(ordered: tuple[np.ndarray, np.ndarray] | None) -> tuple[int, np.ndarray] | None:
    """Integer classes spanning a small range: index by a table lookup, 3x faster than searchsorted (-1: unknown)."""
    if ordered is None or ordered[0].dtype.kind not in "biu":
        return None
    values, order = ordered
    low, high = int(values[0]), int(values[-1])
    if high - low >= 1 << 16:
        return None
    table = np.full(high - low + 1, -1, dtype=np.int64)
    table[values.astype(np.int64) - low] = order
    return low, table


def _row_sums(probabilities: np.ndarray) -> np.ndarray:
    """probabilities.sum(axis=1), bit for bit (numpy adds rows under 8 columns in order), without its slow reduction
    over a short axis."""
    if probabilities.shape[1] >= 8:
        return probabilities.sum(axis=1)
    total = probabilities[:, 0].copy()
    for column in range(1, probabilities.shape[1]):
        total += probabilities[:, column]
    return total


def _row_argmax(probabilities: np.ndarray) -> np.ndarray:
    """np.argmax(axis=1) (the first of equal maxima), column by column: several times faster for a few classes."""
    if probabilities.shape[1] >= 8:
        return np.argmax(probabilities, axis=1)
    best = probabilities[:, 0].copy()
    chosen = np.zeros(len(best), dtype=np.int64)
    for column in range(1, probabilities.shape[1]):
        np.copyto(chosen, column, where=probabilities[:, column] > best)
        np.maximum(best, probabilities[:, column], out=best)
    return chosen


def _moments(y: np.ndarray) -> tuple[float, float]:
    """A batch's mean and M2 = Σ(y - mean)², two-pass with the compensating term; exactly 0 for a constant batch."""
    if y.min() == y.max():
        return float(y[0]), 0.0
    mean = float(np.mean(y))
    residual = y - mean
    m2 = float(np.sum(residual * residual)) - float(np.sum(residual)) ** 2 / len(y)
    return mean, max(m2, 0.0)


def _bottom(keys: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k smallest keys in key order, ties broken by position (a stable sort, without sorting all)."""
    if len(keys) > k:
        kth = np.partition(keys, k - 1)[k - 1]
        below = np.flatnonzero(keys < kth)
        tied = np.flatnonzero(keys == kth)[: k - len(below)]
        chosen = np.sort(np.concatenate([below, tied]))
    else:
        chosen = np.arange(len(keys))
    return chosen[np.argsort(keys[chosen], kind="stable")]
