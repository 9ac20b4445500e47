"""Which sources can speak for a row: availability per row and source, in numpy (to fit) and in the graph (the file).

Rules: source m is available on a row when it reads no numeric column of
`features` or at least one of its bound columns is not NaN, and every value of
its signal (its probabilities over the target's classes, its prediction or
scores) is finite. A partly missing group goes to the source as it is: a model
that handles NaN itself (a tree ensemble) stays available, one whose output
turns NaN (a scaler + logistic regression) is not. Inputs that are not columns
(an image tensor, a string column) never make a source unavailable by
themselves: such a source is unavailable exactly when its output is not finite
(an image of NaN, say). A row's pattern is named by its available sources,
`m1+m3`, or `none`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnxfuse.bind import Binding
from onnxfuse.support import add_constant, add_node, reduce_sum

Columns = tuple[tuple[int, ...], ...]  # per source: the packed `features` columns it reads (numeric ones)


def source_columns(binding: Binding) -> Columns:
    """The numeric `features` columns each source reads, in the packed order."""
    return tuple(
        tuple(sorted({binding.column_index(c) for b in inputs if not b.is_string for c in b.columns or ()}))
        for inputs in binding.models
    )


def present(features: np.ndarray | None, columns: Columns, rows: int) -> np.ndarray:
    """`[N, M]`: the source reads no column, or some column of it holds a value."""
    result = np.ones((rows, len(columns)), dtype=bool)
    for m, chosen in enumerate(columns):
        if chosen and features is not None:
            result[:, m] = ~np.isnan(np.asarray(features[:, list(chosen)], dtype=np.float64)).all(axis=1)
    return result


def numpy_available(signals: Sequence[np.ndarray], presence: np.ndarray) -> np.ndarray:
    """`[N, M]` bool: the columns are there (`present`) and the signal is finite, as `graph_available` computes it."""
    finite = np.stack([np.isfinite(s.reshape(len(s), -1)).all(axis=1) for s in signals], axis=1)
    return presence & finite


def graph_available(
    graph: ir.Graph, features: ir.Value | None, width: int, columns: Columns, signals: Sequence[ir.Value]
) -> ir.Value:
    """`available` bool `[N, M]` in the graph: columns present (one MatMul over a 0/1 matrix of who reads what)
    and `signal - signal` summing to 0 (NaN as soon as one value is NaN or infinite)."""
    finite = []
    for m, signal in enumerate(signals, start=1):
        zero = add_node(graph, "Sub", [signal, signal], {}, f"m{m}/zero_if_finite")
        finite.append(reduce_sum(graph, zero, [1], keepdims=True, name=f"m{m}/finite_sum"))
    sums = add_node(graph, "Concat", finite, {"axis": 1}, "available/finite_sums") if len(finite) > 1 else finite[0]
    available = add_node(graph, "Not", [add_node(graph, "IsNaN", [sums], {}, "available/not_finite")], {},
                         "available/finite")  # fmt: skip
    if features is None or not any(columns):
        return available
    membership = np.zeros((width, len(columns)), dtype=np.float32)
    for m, chosen in enumerate(columns):
        membership[list(chosen), m] = 1.0
    # a source without columns is always present: its threshold is below 0
    threshold = np.array([[0.5 if chosen else -0.5 for chosen in columns]], dtype=np.float32)
    missing = add_node(graph, "IsNaN", [features], {}, "available/missing_cells")
    held = add_node(graph, "Cast", [add_node(graph, "Not", [missing], {}, "available/held_cells")],
                    {"to": ir.DataType.FLOAT}, "available/held")  # fmt: skip
    counts = add_node(graph, "MatMul", [held, add_constant(graph, "available/membership", membership)], {},
                      "available/held_per_source")  # fmt: skip
    presence = add_node(graph, "Greater", [counts, add_constant(graph, "available/threshold", threshold)], {},
                        "available/present")  # fmt: skip
    return add_node(graph, "And", [presence, available], {}, "available")


def masked_features(features: np.ndarray | None, columns: Columns, keep: np.ndarray, *,
                    copy: bool = True) -> np.ndarray | None:  # fmt: skip
    """`features` as a row with only the `keep` sources (`[N, M]` bool) would hold them: NaN in every column that
    no kept source reads (so a gate or passthrough sees what it would see in use); `copy=False` writes into a
    float array the caller owns."""
    if features is None:
        return None
    out = np.array(features, copy=True) if copy else features
    for column in range(out.shape[1]):
        readers = [m for m, chosen in enumerate(columns) if column in chosen]
        if readers:
            out[~keep[:, readers].any(axis=1), column] = np.nan
    return out


def only_theirs(columns: Columns, masked: np.ndarray, width: int) -> np.ndarray:
    """`[F]` bool: the columns that only the `masked` sources (`[M]` bool) read."""
    read = np.zeros((len(columns), width), dtype=bool)
    for m, chosen in enumerate(columns):
        read[m, list(chosen)] = True
    return read[masked].any(axis=0) & ~read[~masked].any(axis=0)


def pattern_name(row: Sequence[bool]) -> str:
    """`m1+m2` for the available sources of a row, `none` without."""
    return "+".join(f"m{m + 1}" for m, on in enumerate(row) if on) or "none"


def pattern_counts(available: np.ndarray) -> dict[str, int]:
    """Rows per availability pattern, most sources first, then in source order."""
    patterns, counts = np.unique(available, axis=0, return_counts=True)
    order = sorted(range(len(patterns)), key=lambda i: (-int(patterns[i].sum()), [not v for v in patterns[i]]))
    return {pattern_name(patterns[i]): int(counts[i]) for i in order}


def report_patterns(count: int) -> list[np.ndarray]:
    """The patterns the hold-out report scores: those a stack is trained with (`dropout_patterns`), then all."""
    return [*dropout_patterns(count), np.ones(count, dtype=bool)]


def dropout_patterns(count: int) -> list[np.ndarray]:
    """The masks a stack is trained with besides the rows' own: each source alone, each all-but-one (from three
    sources: with two, all-but-one is the other alone)."""
    masks = [np.eye(count, dtype=bool)[m] for m in range(count)]
    masks += [~np.eye(count, dtype=bool)[m] for m in range(count)] if count > 2 else []
    return masks
