"""Source dropout: the rows a stacking head is fitted on, with seeded copies in which sources are masked.

Rules: besides every row as it is, the head sees copies of the rows with only
one source left, and (from three sources) with one source masked
(`availability.dropout_patterns`), each intersected with what the row really has;
a copy that masks nothing new or leaves no source is not made. At most
DROPOUT_ROWS copies in all: a pattern gets a seeded sample of the rows when the
rows are many. Cross-validation scores the head on the real rows of each held-out
fold only, and trains it on the training rows and their copies (`copy_folds`).
A masked source's signal is read as its `fills` value (its mean signal on the rows
where it is available) and an indicator column says it is masked (see `stack`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from onnxfuse.availability import dropout_patterns, masked_features
from onnxfuse.signals import Signals

DROPOUT_ROWS = 200_000


def copy_folds(
    origin: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each fold's training rows with their copies (`Augmented.origin`); its held-out rows as they are."""
    return [(np.flatnonzero(np.isin(origin, train)), held) for train, held in splits]


def dropout_rows(signals: Signals, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(origin, kept): the real rows first, then the copies; `origin[i]` is the real row row i copies and
    `kept[i]` (`[M]` bool) the sources it keeps (see the module's rules)."""
    rows = len(signals.per_model[0])
    mask = signals.mask
    patterns = dropout_patterns(mask.shape[1])
    rng = np.random.default_rng(seed)
    copies, masks = [np.arange(rows)], [mask]
    for pattern in patterns:
        kept = mask & pattern
        useful = np.flatnonzero(kept.any(axis=1) & (kept != mask).any(axis=1))
        share = DROPOUT_ROWS // len(patterns)
        if len(useful) > share:
            useful = np.sort(rng.choice(useful, share, replace=False))
        copies.append(useful)
        masks.append(kept[useful])
    return np.concatenate(copies), np.concatenate(masks)


def rows_of(signals: Signals, features: np.ndarray | None, origin: np.ndarray,
            kept: np.ndarray) -> tuple[Signals, np.ndarray | None]:  # fmt: skip
    """The signals and features of rows `origin` with only the `kept` sources available: a masked source's columns
    are missing in the copy, as they would be in use."""
    taken = dataclasses.replace(signals.take(origin), available=kept)
    if features is not None:
        features = masked_features(features[origin], signals.feature_columns or (), kept, copy=False)
    return taken, features


def fills(signals: Signals) -> tuple[np.ndarray, ...]:
    """Each source's mean signal (float32 `[K]`) on the rows where it is available; 0 where it never is."""
    mask = signals.mask
    means = [s[mask[:, m]].astype(np.float64).mean(axis=0) if mask[:, m].any() else np.zeros(s.shape[1])
             for m, s in enumerate(signals.per_model)]  # fmt: skip
    return tuple(np.asarray(mean, dtype=np.float32) for mean in means)
