"""Shrink the fused graph with portable, exact passes; the contract's names and the numbers stay."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir
from onnx_ir.passes.common import (
    CommonSubexpressionEliminationPass,
    DeduplicateHashedInitializersPass,
    IdentityEliminationPass,
    RemoveUnusedFunctionsPass,
    RemoveUnusedNodesPass,
    RemoveUnusedOpsetsPass,
    TopologicalSortPass,
)

from onnxfuse.errors import VerificationError

# Dedupe only weights up to this many elements: hashing larger ones would read every mapped page.
DEDUPE_LIMIT = 1 << 20
FOLD_INPUT_LIMIT = 1 << 16
FOLD_OUTPUT_LIMIT = 1 << 20


def optimize(model: ir.Model, *, keep: Sequence[ir.Value] = ()) -> None:
    """Optimize in place, in this order.

    1. fold constants (onnxscript, small tensors only);
    2. exact rewrites only (onnxscript rules that cannot change a bit: x+0, x*1,
       Cast to the same type, no-op Expand/Transpose, Dropout at inference, chained
       Reshape/Unsqueeze/Transpose/Slice) — no fusions that round differently;
    3. Identity elimination; 4. dedupe equal initializers (up to 1M elements);
    5. common subexpressions (e.g. two sources gathering the same columns or
       running the same scaler); 6. remove unused nodes, functions, opset imports;
    7. topological sort.
    `keep` (each source's outputs, for verify) survive steps 1-5 as temporary graph
    outputs; graph inputs and outputs are never renamed.
    """
    from onnxscript.optimizer import fold_constants_ir  # only optimizing merges pay for onnxscript
    from onnxscript.rewriter import rewrite

    graph = model.graph
    contract = ([v.name for v in graph.inputs], [v.name for v in graph.outputs])
    extra = [v for v in dict.fromkeys(keep) if v not in graph.outputs]
    types = {v.name: (v.type, v.shape) for v in extra}
    graph.outputs.extend(extra)
    try:
        fold_constants_ir(model, input_size_limit=FOLD_INPUT_LIMIT, output_size_limit=FOLD_OUTPUT_LIMIT)
        rewrite(model, pattern_rewrite_rules=_exact_rules())
        ir.passes.Sequential(
            _KeepingOutputsIdentityElimination(),
            DeduplicateHashedInitializersPass(size_limit=DEDUPE_LIMIT),
            CommonSubexpressionEliminationPass(),
        )(model)
    finally:
        for value in graph.outputs[len(contract[1]) :]:
            if value.type is None and value.name in types:  # Identity elimination keeps names, not types
                value.type, value.shape = types[value.name]
        while len(graph.outputs) > len(contract[1]):
            graph.outputs.pop()  # one by one: onnx-ir tracks each value's graph-output role
    ir.passes.Sequential(
        RemoveUnusedNodesPass(), RemoveUnusedFunctionsPass(), RemoveUnusedOpsetsPass(), TopologicalSortPass()
    )(model)
    if ([v.name for v in graph.inputs], [v.name for v in graph.outputs]) != contract:
        raise VerificationError("optimizing renamed the fused model's inputs or outputs")


class _KeepingOutputsIdentityElimination(IdentityEliminationPass):
    """onnx-ir's Identity elimination, but an Identity copying one graph output to another stays: the pass would
    give the copy's name to the value it copies, renaming the first output (an `m{i}/` output exposed by
    --keep-model-outputs that the source computes as an Identity of another)."""

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        copied = node.inputs[0] if node.op_type == "Identity" and len(node.inputs) == 1 else None
        if copied is not None and copied.is_graph_output() and node.outputs[0].is_graph_output():
            return False
        return super()._try_eliminate_identity_node(node)


def _exact_rules() -> list:
    from onnxscript.rewriter.rules import common as rules

    return [
        rules.add_0_rule, rules.sub_0_rule, rules.mul_by_1_rule, rules.div_by_1_rule,
        rules.no_op_cast_rule, rules.no_op_expand_rule, rules.no_op_transpose_rule,
        rules.dropout_inference_rule, rules.dropout_zero_rule,
        rules.reshape_reshape_rule, rules.unsqueeze_unsqueeze_rule, rules.transpose_transpose_rule,
        rules.collapse_slice_rule, rules.collapse_slice2_rule,
    ]  # fmt: skip
