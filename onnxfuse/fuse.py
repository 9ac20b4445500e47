"""The fuse stage: read what each source outputs, score it, fit the chosen head and add it to the spliced graph.

Rules: with a target the label space is the target's (sources are matched to its
classes by label value), else what the sources agree on; a `probabilities`
output must hold distributions on the scored rows, else it is read as scores
(stack) or refused; the head is `heads.fusion(spec.fusion)`; the file's outputs are
the contract's `label` + `probabilities` (classification) or `prediction`, with
`explain` also `available`, `source_effects` (and a mixture's `weights`, see
`explain`), and with `keep_model_outputs` every source output as `m{i}/<name>`.
The head reads which sources are available on each row (`availability`). In place: the
stage takes over `spliced.model`; the sources are never touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from onnxfuse import progress
from onnxfuse.availability import graph_available, source_columns
from onnxfuse.bind import Binding
from onnxfuse.errors import OnnxfuseError, warn
from onnxfuse.evaluation import Evaluation
from onnxfuse.explain import explained
from onnxfuse.feeds import Labelled
from onnxfuse.heads import fusion as chosen_fusion
from onnxfuse.heads.base import KINDS, Fusion, Head, HeadInputs, LabelSpace, float_features, unlabeled_scores
from onnxfuse.normalize import NormalizedModel, Versions
from onnxfuse.roles import Classes, OutputRole, distribution_problem, output_role, scores_refusal
from onnxfuse.signals import graph_signals, graph_votes, numpy_signals, numpy_votes, scored_outputs
from onnxfuse.spec import FuseSpec
from onnxfuse.splice import Spliced
from onnxfuse.support import BATCH_DIM, FEATURES, add_constant, add_node, class_array

if TYPE_CHECKING:
    from onnxfuse.sampling import Streamed

CONTRACT_OUTPUTS = ("label", "probabilities", "prediction", "available", "source_effects", "weights")


@dataclasses.dataclass(frozen=True)
class Fused:
    """The graph with the contract's outputs, the fitted head and what the metadata says about it."""

    model: ir.Model
    space: LabelSpace
    head: Head
    metadata: dict  # `onnxfuse.fusion`
    evaluation: Evaluation | None = None  # the hold-out rows' answers (see `train.train_head`)


def fuse(
    spliced: Spliced,
    models: Sequence[NormalizedModel],
    binding: Binding,
    labelled: Labelled | None,
    spec: FuseSpec,
    *,
    feeds: Mapping[str, np.ndarray],
    folder: Path | None,
    versions: Versions,
    streamed: Streamed | None = None,
) -> Fused:
    """Fit `spec.fusion`'s head on the labelled rows (or weigh the sources equally without) and add it; with
    `streamed` (the labelled rows are a sample of larger data) the hold-out table covers all of its hold-out rows."""
    fusion = chosen_fusion(spec.fusion)
    space = LabelSpace(labelled.task, labelled.classes) if labelled is not None else None
    roles = [output_role(m, task=space.task, classes=space.classes) if space else output_role(m) for m in models]
    space = space or _agreed_space(roles, spec)
    fusion.check_sources(roles, space.task)
    if labelled is None:
        roles = _checked_roles(roles, _sources_alone(models, roles, binding, feeds), fusion)
        head, report, evaluation = fusion.untrained(len(models), space), None, None
    else:
        head, report, evaluation, roles = _trained(fusion, spliced, models, roles, labelled, spec, folder, binding,
                                                   streamed, versions)  # fmt: skip
    inputs = _head_inputs(spliced, roles, space, binding, spec, votes=fusion.votes, features=head.uses_features)
    if spec.explain:
        outputs = explained(spliced.model, head, inputs, space, versions, source_columns(binding),
                            len(binding.features))
    else:
        outputs = head.build(spliced.model, inputs, space, versions)
        outputs.pop("weights", None)  # a mixture's per-row weights are an --explain output
    _contract_outputs(spliced.model.graph, outputs, space, len(models))
    if spec.keep_model_outputs:
        graph = spliced.model.graph
        for kept in spliced.outputs:
            graph.outputs.extend(v for v in kept.values() if v not in graph.outputs)
    metadata = {"method": fusion.name, **head.metadata(), **({"holdout": report} if report is not None else {})}
    if spec.explain:
        metadata["explain"] = [name for name in CONTRACT_OUTPUTS[3:] if name in outputs]
    if evaluation is not None:  # the report shows the head's choice beside the hold-out figures
        evaluation = dataclasses.replace(evaluation, summary={**head.metadata(), "method": fusion.name, **report})
    return Fused(spliced.model, space, head, metadata, evaluation)


def _head_inputs(spliced: Spliced, roles, space: LabelSpace, binding: Binding, spec: FuseSpec, *, votes: bool,
                 features: bool) -> HeadInputs:  # fmt: skip
    """The sources' signals (or votes), which are available on each row, and the float features if the head reads
    them."""
    graph = spliced.model.graph
    signals = graph_signals(graph, spliced.outputs, roles, space.classes)
    available = None
    if spec.availability:
        packed = next((v for v in graph.inputs if v.name == FEATURES), None)
        available = graph_available(graph, packed, len(binding.features), source_columns(binding), signals)
    if votes:
        signals = graph_votes(graph, spliced.outputs, roles, space.classes, signals)
    return HeadInputs(signals, available, float_features(graph) if features else None)


def _trained(fusion: Fusion, spliced, models, roles, labelled: Labelled, spec: FuseSpec, folder, binding: Binding,
             streamed: Streamed | None, versions: Versions):  # fmt: skip
    """Score the sources on the labelled rows, check their probabilities, fit and report the head."""
    from onnxfuse.score import score  # onnxruntime is imported where sources are scored
    from onnxfuse.train import train_head  # so are scikit-learn and scipy

    wanted = scored_outputs(spliced.outputs, roles, votes=fusion.votes, classes=labelled.classes)
    progress.stage(f"scoring {len(models)} sources on {labelled.rows:,} rows")
    scores = score(spliced.model, wanted, labelled.feeds, folder=folder,
                   progress=lambda done: progress.rows(done, labelled.rows))  # fmt: skip
    roles = _checked_roles(roles, scores, fusion)
    columns = source_columns(binding) if spec.availability else None
    signals = numpy_signals(scores, roles, labelled.classes, features=labelled.feeds.get(FEATURES),
                            feature_columns=columns)  # fmt: skip
    head_signals = numpy_votes(signals, scores, labelled.classes) if fusion.votes else signals
    names = [(f"m{m.source.index} {m.source.name}", reading_of(r, labelled)) for m, r in zip(models, roles)]
    stream = None
    if streamed is not None:
        from onnxfuse.holdout import HoldoutJob, stream_holdout

        space = LabelSpace(labelled.task, labelled.classes)

        def stream(scorers):
            model, outputs = _holdout_model(spliced, wanted, scorers.fitted, roles, space, binding, spec,
                                            votes=fusion.votes, versions=versions,
                                            folder=folder if streamed.engine == "local" else None)  # fmt: skip
            job = HoldoutJob(model, outputs, binding, tuple(roles), space, fusion.votes, columns, tuple(names),
                             scorers, streamed)  # fmt: skip
            progress.stage(f"measuring the head on the hold-out rows of all {streamed.data_rows:,} rows")
            return stream_holdout(job, progress=lambda done: progress.rows(done, streamed.data_rows))

    head, report, evaluation = train_head(fusion, signals, head_signals, labelled, spec, names=names, stream=stream)
    return head, report, evaluation, roles


def _holdout_model(spliced: Spliced, wanted: Mapping[str, ir.Value], head: Head, roles, space: LabelSpace,
                   binding: Binding, spec: FuseSpec, *, votes: bool, versions: Versions,
                   folder: Path | None) -> tuple[bytes | str, tuple[tuple[str, str], ...]]:  # fmt: skip
    """The model the hold-out stage runs: the spliced sources with the head fitted on the training part built in,
    exposing the sources' scored outputs and the head's answer, so one onnxruntime run per batch gives both
    (the head's own predict in numpy would cost the stage more than the sources do). The head's nodes and
    initializers are taken out of the graph again; the fused file gets the head refitted on every row.
    Returns its path in `folder` (local engine), else its bytes (a Ray worker elsewhere), and the
    (score key, output name) pairs it yields; the head's answer is keyed `FUSED`."""
    from onnxfuse.evaluation import FUSED
    from onnxfuse.score import HOLDOUT_FILE, save_with_outputs, serialize_with_outputs

    model, graph = spliced.model, spliced.model.graph
    nodes, initializers, opsets = set(graph), set(graph.initializers), dict(model.opset_imports)
    try:
        inputs = _head_inputs(spliced, roles, space, binding, spec, votes=votes, features=head.uses_features)
        built = head.build(model, inputs, space, versions)
        answer = built["prediction" if space.task == "regression" else "probabilities"]
        values = [*wanted.values(), answer]
        saved = serialize_with_outputs(model, values) if folder is None else \
            str(save_with_outputs(model, values, folder / HOLDOUT_FILE))  # fmt: skip
        outputs = (*((key, value.name) for key, value in wanted.items()), (FUSED, answer.name))
    finally:
        graph.remove([node for node in graph if node not in nodes], safe=True)
        for name in set(graph.initializers) - initializers:
            graph.initializers.pop(name)
        model.opset_imports.clear()
        model.opset_imports.update(opsets)
    return saved, outputs


def reading_of(role: OutputRole, labelled: Labelled) -> str | None:
    """How the hold-out report scores a source alone (see `train.train_head`)."""
    if role.task == labelled.task:
        return "signal"
    classes = labelled.classes or ()
    if role.task == "scores" and labelled.task == "classification" and role.width == len(classes) > 1:
        return "softmax"
    return None


def _agreed_space(roles: Sequence[OutputRole], spec: FuseSpec) -> LabelSpace:
    """Without a target: the sources' common task, and the sorted union of their classes."""
    for role in roles:
        if role.task == "scores":
            raise OnnxfuseError(unlabeled_scores(role, "without --data and --target, the classes must be known"))
    tasks = sorted({role.task for role in roles})
    if len(tasks) != 1:
        kinds = ", ".join(f"{r.model} is a {KINDS[r.task]}" for r in roles)
        raise OnnxfuseError(
            f"these sources need a stacking head ({kinds}); give --data and --target and use --fusion stack"
        )
    task = tasks[0]
    if spec.task not in ("auto", task):
        raise OnnxfuseError(f"--task {spec.task}: the models are {task} models")
    return LabelSpace(task, union_classes(roles) if task == "classification" else None)


def union_classes(roles: Sequence[OutputRole]) -> Classes:
    """Without a target, the label space is the sorted union of the sources' classes."""
    kinds = {type(c) for role in roles for c in role.classes or ()}
    if len(kinds) > 1:
        lists = "; ".join(f"{r.model}: {list(r.classes or ())}" for r in roles)
        raise OnnxfuseError(f"class labels mix strings and integers ({lists})")
    return tuple(sorted({c for role in roles for c in role.classes or ()}))


def _sources_alone(models, roles: Sequence[OutputRole], binding: Binding, feeds: Mapping) -> dict:
    """Each source file run alone on the verification rows (a source that fails names itself), as `score` keys."""
    from onnxfuse.verify import run_source

    scores = {}
    for index, (model, role) in enumerate(zip(models, roles)):
        if role.form in ("probabilities", "logits"):
            ran = run_source(model, binding.models[index], binding, feeds)
            scores[f"{index}/signal"] = np.asarray(ran[role.probabilities], dtype=np.float64)
    return scores


def _checked_roles(roles: Sequence[OutputRole], scores: dict, fusion: Fusion) -> list[OutputRole]:
    """A `probabilities` output must hold distributions on the scored rows; else it is read as scores by a head
    that reads them (stack) and refused by the others."""
    checked = []
    for index, role in enumerate(roles):
        if role.form == "logits" and not role.declared:
            role = _distributions_read_as_such(role, scores[f"{index}/signal"])
        problem = None
        if role.form == "probabilities":
            values = scores[f"{index}/signal"]
            values = values.reshape(len(values), -1)
            problem = distribution_problem(values[np.isfinite(values).all(axis=1)])
        if problem is None:
            checked.append(role)
            continue
        if not fusion.reads_scores:
            raise OnnxfuseError(scores_refusal(role, problem, fusion.name))
        warn(
            f"{role.model}: output '{role.probabilities}' holds scores, not probabilities ({problem}); "
            f"the {fusion.name} head reads its raw columns"
        )
        checked.append(role.as_scores())
    return checked


def _distributions_read_as_such(role: OutputRole, values: np.ndarray) -> OutputRole:
    """A plain `[N, C]` output is read as logits, unless every scored row is already a distribution (a
    normalisation no Softmax makes, e.g. `exp(z) / sum(exp(z))` written out): a second Softmax would flatten it."""
    values = values.reshape(len(values), -1)
    finite = values[np.isfinite(values).all(axis=1)]
    if not finite.size or distribution_problem(finite) is not None:
        return role
    warn(
        f"{role.model}: output '{role.probabilities}' holds probabilities on every scored row though no Softmax "
        f"produces it; it is read as probabilities (declare --declare {role.index}:logits={role.probabilities} "
        "to apply a Softmax)"
    )
    return dataclasses.replace(role, form="probabilities")


def _contract_outputs(graph: ir.Graph, outputs: dict[str, ir.Value], space: LabelSpace, sources: int) -> None:
    """Name and type the head's outputs as the contract says; `label` is the argmax class (first on ties)."""
    if "prediction" in outputs:
        _contract_output(graph, outputs["prediction"], "prediction", ir.DataType.FLOAT, [BATCH_DIM])
    else:
        probabilities = outputs["probabilities"]
        _contract_output(graph, probabilities, "probabilities", ir.DataType.FLOAT, [BATCH_DIM, len(space.classes)])
        index = add_node(graph, "ArgMax", [probabilities], {"axis": 1, "keepdims": 0}, "label_index")
        table = add_constant(graph, "label_classes", class_array(space.classes))
        label = add_node(graph, "Gather", [table, index], {"axis": 0}, "label")
        dtype = ir.DataType.STRING if class_array(space.classes).dtype == object else ir.DataType.INT64
        _contract_output(graph, label, "label", dtype, [BATCH_DIM])
    for name in CONTRACT_OUTPUTS[3:]:  # --explain's
        if name in outputs:
            dtype = ir.DataType.BOOL if name == "available" else ir.DataType.FLOAT
            _contract_output(graph, outputs[name], name, dtype, [BATCH_DIM, sources])
    graph.outputs.sort(key=lambda value: CONTRACT_OUTPUTS.index(value.name))


def _contract_output(graph: ir.Graph, value: ir.Value, name: str, dtype: ir.DataType, shape: list) -> None:
    value.name, value.type, value.shape = name, ir.TensorType(dtype), ir.Shape(shape)
    graph.outputs.append(value)
