"""`--explain`: per row, which sources were available, how much each moved the result and (mixtures) their weights.

Rules: the head is built once, on its inputs tiled M + 1 times along the rows —
the rows as they are, then the rows with source 1 masked (`available` False, and
on rows where it is available the columns only it reads NaN, as a row without its
group holds them), ..., with
source M masked — so the file holds one copy of the head and its learner.
`source_effects[:, m]` is the output with source m masked minus the full output,
at the predicted class (the argmax of the full probabilities, first on ties) or on
the prediction: 0 where m is unavailable (masking it changes nothing), the prior
minus the output where m is the only source. Only a head that has learned to
answer without any one source (see `heads.dropout`) makes these numbers mean
something. `weights` (mixtures) are the full rows' weights. The numpy side,
`numpy_effects`, computes the same from a fitted head.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxfuse.availability import Columns, only_theirs
from onnxfuse.heads.base import Head, HeadInputs, LabelSpace
from onnxfuse.signals import Signals
from onnxfuse.support import add_constant, add_node, reduce_sum, unsqueeze


def explained(
    model: ir.Model, head: Head, inputs: HeadInputs, space: LabelSpace, versions, columns: Columns, width: int
) -> dict[str, ir.Value]:
    """The head's outputs for the rows as they are, with `available`, `source_effects` and a mixture's `weights`
    (`columns`: the feature columns each source reads, of `width`)."""
    graph = model.graph
    if inputs.available is None:
        raise ValueError("--explain needs the availability masks")
    count, available = len(inputs.signals), inputs.available
    blocks = count + 1
    tiled = HeadInputs(
        [_tiled(graph, s, blocks, f"explain/m{m + 1}") for m, s in enumerate(inputs.signals)],
        _masked(graph, inputs.available, count),
        None if inputs.features is None else _masked_features(graph, inputs.features, available, columns, width),
    )
    built = head.build(model, tiled, space, versions)
    first = add_constant(graph, "explain/first_block", np.array(0, dtype=np.int64))
    classify = space.task == "classification"
    key = "probabilities" if classify else "prediction"
    per_row = [len(space.classes)] if classify else []
    per_block = _blocks(graph, built[key], blocks, per_row, "explain/outputs")  # [M + 1, N(, C)]
    full = add_node(graph, "Gather", [per_block, first], {"axis": 0}, "explain/full")
    read = _at_predicted(graph, per_block, full, len(space.classes)) if classify else per_block  # [M + 1, N]
    columns = add_node(graph, "Transpose", [read], {"perm": [1, 0]}, "explain/per_row")  # [N, M + 1]
    masked = add_node(graph, "Gather", [columns, _constant(graph, "explain/masked_blocks", list(range(1, blocks)))],
                      {"axis": 1}, "explain/masked")  # fmt: skip
    whole = add_node(graph, "Gather", [columns, _constant(graph, "explain/full_block", [0])], {"axis": 1},
                     "explain/whole")  # fmt: skip
    moved = add_node(graph, "Sub", [masked, whole], {}, "explain/moved")
    zero = add_constant(graph, "explain/zero", np.array(0.0, dtype=np.float32))
    # exactly 0 where the source is unavailable: its two blocks are the same rows, but a kernel may round a row
    # otherwise at another position in the batch (onnxruntime's MatMul: -6e-8)
    effects = add_node(graph, "Where", [available, moved, zero], {}, "explain/source_effects")
    outputs = {key: full, "available": available, "source_effects": effects}
    if "weights" in built:
        weights = _blocks(graph, built["weights"], blocks, [count], "explain/weights")
        outputs["weights"] = add_node(graph, "Gather", [weights, first], {"axis": 0}, "explain/full_weights")
    return outputs


def numpy_effects(head: Head, signals: Signals, features: np.ndarray | None) -> np.ndarray:
    """`source_effects` of a fitted head in numpy, as the file computes them (features as the head reads them)."""
    full = np.asarray(head.predict(signals, features), dtype=np.float64)
    effects = []
    for m in range(len(signals.per_model)):
        keep = np.ones(len(signals.per_model), dtype=bool)
        keep[m] = False
        hidden = features
        if features is not None:
            hidden = np.array(features, dtype=np.float32, copy=True)
            theirs = only_theirs(signals.feature_columns or (), ~keep, features.shape[1])
            hidden[np.ix_(signals.mask[:, m], theirs)] = np.nan
        masked = np.asarray(head.predict(signals.masked(keep), hidden), dtype=np.float64)
        if full.ndim == 2:
            predicted = np.argmax(full, axis=1)
            rows = np.arange(len(full))
            effects.append(masked[rows, predicted] - full[rows, predicted])
        else:
            effects.append(masked - full)
    return np.where(signals.mask, np.stack(effects, axis=1), 0.0).astype(np.float32)


def _tiled(graph: ir.Graph, value: ir.Value, blocks: int, name: str) -> ir.Value:
    return add_node(graph, "Concat", [value] * blocks, {"axis": 0}, f"{name}/tiled")


def _masked_features(
    graph: ir.Graph, features: ir.Value, available: ir.Value, columns: Columns, width: int
) -> ir.Value:
    """`features` `[N, F]` tiled as `_masked` tiles `available`: in block m + 1 the columns only source m reads NaN
    on the rows where m is available (masking an unavailable source changes nothing)."""
    count = len(columns)
    hide = np.zeros((count + 1, 1, width), dtype=bool)
    chosen = np.zeros((count + 1, 1, count), dtype=np.float32)  # block m + 1 picks source m's availability
    for m in range(count):
        hide[m + 1, 0] = only_theirs(columns, np.arange(count) == m, width)
        chosen[m + 1, 0, m] = 1.0
    spread = unsqueeze(graph, features, [0], "explain/features_block")  # [1, N, F]
    rows = unsqueeze(graph, available, [0], "explain/available_rows")
    rows = add_node(graph, "Cast", [rows], {"to": ir.DataType.FLOAT}, "explain/available_rows_float")
    rows = add_node(graph, "Mul", [rows, add_constant(graph, "explain/chosen", chosen)], {}, "explain/chosen_rows")
    rows = reduce_sum(graph, rows, [2], keepdims=True, name="explain/masked_available")  # [M + 1, N, 1]
    rows = add_node(graph, "Greater", [rows, add_constant(graph, "explain/half", np.array(0.5, np.float32))], {},
                    "explain/hide_rows")  # fmt: skip
    cells = add_node(graph, "And", [rows, add_constant(graph, "explain/hide", hide)], {}, "explain/hide_cells")
    nan = add_constant(graph, "explain/nan", np.array(np.nan, dtype=np.float32))
    hidden = add_node(graph, "Where", [cells, nan, spread], {}, "explain/hidden")
    shape = _constant(graph, "explain/features_shape", [-1, width])
    return add_node(graph, "Reshape", [hidden, shape], {}, "explain/features")


def _masked(graph: ir.Graph, available: ir.Value, count: int) -> ir.Value:
    """`available` `[N, M]` tiled: block 0 as it is, block m + 1 with source m masked; `[(M + 1) N, M]`."""
    keep = np.ones((count + 1, 1, count), dtype=bool)
    for m in range(count):
        keep[m + 1, 0, m] = False
    spread = unsqueeze(graph, available, [0], "explain/available_block")
    anded = add_node(graph, "And", [spread, add_constant(graph, "explain/keep", keep)], {}, "explain/kept")
    shape = _constant(graph, "explain/available_shape", [-1, count])
    return add_node(graph, "Reshape", [anded, shape], {}, "explain/available")


def _blocks(graph: ir.Graph, value: ir.Value, blocks: int, width: list[int], name: str) -> ir.Value:
    """`[(M + 1) N, ...]` as `[M + 1, N, ...]`."""
    return add_node(graph, "Reshape", [value, _constant(graph, f"{name}/shape", [blocks, -1, *width])], {},
                    f"{name}/blocks")  # fmt: skip


def _at_predicted(graph: ir.Graph, per_block: ir.Value, full: ir.Value, classes: int) -> ir.Value:
    """Each block's probability of the class the full rows predict: `[M + 1, N]`."""
    predicted = add_node(graph, "ArgMax", [full], {"axis": 1, "keepdims": 1}, "explain/predicted")  # [N, 1]
    hot = add_node(graph, "Equal", [predicted, _constant(graph, "explain/classes", [list(range(classes))])], {},
                   "explain/predicted_hot")  # fmt: skip
    hot = add_node(graph, "Cast", [hot], {"to": ir.DataType.FLOAT}, "explain/predicted_mask")
    picked = add_node(graph, "Mul", [per_block, hot], {}, "explain/picked")
    return reduce_sum(graph, picked, [2], keepdims=False, name="explain/at_predicted")


def _constant(graph: ir.Graph, name: str, values: list) -> ir.Value:
    return add_constant(graph, name, np.array(values, dtype=np.int64))
