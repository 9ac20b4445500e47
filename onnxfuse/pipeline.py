"""`merge(spec)`: the compiler's stages in order, as the contract states them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from onnxfuse import __version__
from onnxfuse.bind import InputBinding, bind
from onnxfuse.data import Labelled, column_names, labelled_rows, read_table, source_rows, verification_feeds
from onnxfuse.emit import check_output, check_sealed, emit, fused_metadata, metadata_json, stage, workspace
from onnxfuse.errors import OnnxfuseError, warn
from onnxfuse.fuse import check_sources_fit, common_task, fuse, union_classes
from onnxfuse.load import SourceModel, load_model
from onnxfuse.mobile import write_ort
from onnxfuse.normalize import Versions, normalize
from onnxfuse.optimize import optimize
from onnxfuse.report import write_report
from onnxfuse.roles import (
    OutputRole,
    class_placement,
    class_probabilities,
    distribution_problem,
    looks_like_classifier,
    meta_columns,
    output_role,
    scores_refusal,
    votes_with_label,
)
from onnxfuse.spec import FuseSpec
from onnxfuse.splice import Spliced, splice
from onnxfuse.train import HeadOptions, TrainedHead, equal_weights
from onnxfuse.verify import blaming, verify

TRAINED = ("stack", "gate")


@dataclasses.dataclass(frozen=True)
class FuseResult:
    """What was written, for the CLI's summary and report, and the fitted head for library users."""

    output: Path
    features: tuple[str, ...]
    classes: tuple | None
    task: str
    versions: Versions
    fusion: dict
    head: TrainedHead
    ort: bool = False
    why: str = ""  # why the task was chosen, for the summary line


def merge(spec: FuseSpec, *, progress: Callable[[int, int], None] | None = None) -> FuseResult:
    """load -> normalize -> bind -> splice -> fuse (score, train) -> optimize -> verify -> emit."""
    _check_spec(spec)
    inputs = [m.path for m in spec.models] + ([spec.data] if spec.data else [])
    check_output(spec.output, inputs)
    if spec.report is not None:
        check_output(spec.report, [*inputs, spec.output])
    table = read_table(spec.data) if spec.data else None
    sources = tuple(load_model(model, index) for index, model in enumerate(spec.models, start=1))
    models, versions = normalize(sources, target_opset=spec.target_opset, max_ir_version=spec.max_ir_version)
    with blaming(models):
        return _compile(spec, sources, models, versions, table=table, inputs=inputs, progress=progress)


def _compile(spec: FuseSpec, sources, models, versions: Versions, *, table, inputs, progress) -> FuseResult:
    """bind -> splice -> fuse (score, train) -> optimize -> verify -> emit, for `merge`."""
    binding = bind(models, data_columns=column_names(table), features_dtype=spec.features_dtype)
    classifiers = any(looks_like_classifier(model) for model in models)
    labelled = (
        labelled_rows(table, binding, spec.data, target=spec.target, task=spec.task, classifiers=classifiers)
        if spec.target
        else None
    )
    roles = [
        output_role(model, task=labelled.task, classes=labelled.classes) if labelled else output_role(model)
        for model in models
    ]
    task, classes = _label_space(roles, labelled, spec)
    check_sources_fit(roles, spec.fusion, task)
    spliced = splice(models, binding, versions)
    options = HeadOptions(spec.fusion, spec.meta, spec.passthrough, spec.holdout, spec.seed)
    with workspace(spec.output, inputs) as folder:
        feeds = verification_feeds(binding, table, spec.data, seed=spec.seed)
        if labelled is None:
            roles = _checked_roles(roles, _sources_alone(models, roles, binding, feeds), spec.fusion)
            head = equal_weights(options, len(models))
        else:
            head, roles = _trained_head(
                spliced, roles, labelled, options, folder=folder, names=_names(sources), spec=spec, progress=progress
            )
        fused = fuse(
            spliced,
            roles,
            head,
            task=task,
            classes=classes,
            versions=versions,
            keep_model_outputs=spec.keep_model_outputs,
        )
        if spec.optimize:
            optimize(fused.model, keep=[value for outputs in spliced.outputs for value in outputs.values()])
        metadata_fusion = _fusion_metadata(head)
        metadata = fused_metadata(
            features=binding.features,
            classes=fused.classes,
            sources=[_describe_source(s, b) for s, b in zip(sources, binding.models)],
            fusion=metadata_fusion,
            version=__version__,
        )
        metadata.update({key: metadata_json(value) for key, value in binding.metadata().items()})
        staged = stage(fused.model, folder, out=spec.output, metadata=metadata)
        verify(staged.view, models, binding, feeds=feeds, exact=source_rows(binding, table))
        check_sealed(staged)
        if spec.ort:
            staged = write_ort(staged, spec.output, feeds)
        emit(staged)
    if spec.report is not None:
        write_report(spec.report, metadata_fusion)
    return FuseResult(
        spec.output, binding.features, fused.classes, fused.task, versions, metadata_fusion, head, ort=spec.ort,
        why=labelled.why if labelled is not None else f"the sources are {fused.task} models",
    )


def _label_space(roles: Sequence[OutputRole], labelled: Labelled | None, spec: FuseSpec) -> tuple[str, tuple | None]:
    """The target's task and classes when there is one, else what the sources agree on."""
    if labelled is not None:
        return labelled.task, labelled.classes
    task = common_task(roles)
    if task == "scores":
        raise OnnxfuseError(
            f"{next(r.model for r in roles if r.task == 'scores')} outputs scores without class labels; "
            "give --data and --target and use --fusion stack"
        )
    if spec.task not in ("auto", task):
        raise OnnxfuseError(f"--task {spec.task}: the models are {task} models")
    return task, union_classes(roles) if task == "classification" else None


def _trained_head(
    spliced: Spliced, roles, labelled: Labelled, options: HeadOptions, *, folder, names, spec, progress
) -> tuple[TrainedHead, list[OutputRole]]:
    """Score the sources on the labelled rows, check their probabilities, train the head."""
    from onnxfuse.heads import Signals, one_hot  # training-only imports
    from onnxfuse.train import train_head

    counter = (lambda done: progress(done, labelled.rows)) if progress else None
    vote = options.method == "vote"
    classes = labelled.classes
    scores = _score(spliced, roles, labelled.feeds, folder=folder, vote=vote, classes=classes, progress=counter)
    roles = _checked_roles(roles, scores, options.method)
    per_model = tuple(_signal_array(scores, roles, i, labelled.classes) for i in range(len(roles)))
    signals = Signals(per_model, tuple(meta_columns(r, labelled.classes) for r in roles))
    votes = None
    if vote:
        labels = [
            scores.get(f"{i}/label", _argmax_labels(signal, labelled.classes)) for i, signal in enumerate(per_model)
        ]
        votes = Signals(tuple(one_hot(label, labelled.classes) for label in labels), signals.meta_columns)
    named = [(name, role.task == labelled.task) for name, role in zip(names, roles)]
    return train_head(signals, labelled, options, votes=votes, names=named, target=spec.target), roles


def _score(spliced: Spliced, roles, feeds: dict, *, folder, vote: bool = False, classes=None, progress=None) -> dict:
    from onnxfuse.score import score  # onnxruntime is imported where sources are scored

    wanted = _scored_outputs(spliced, roles, vote=vote, classes=classes)
    return score(spliced.model, wanted, feeds, folder=folder, progress=progress)


def _sources_alone(models, roles: Sequence[OutputRole], binding, feeds: dict) -> dict:
    """Each source file run alone on the verification rows (a source that fails names itself), as `_score` keys."""
    from onnxfuse.verify import run_source

    scores = {}
    for index, (model, role) in enumerate(zip(models, roles)):
        if role.form in ("probabilities", "logits"):
            ran = run_source(model, binding.models[index], binding, feeds)
            scores[f"{index}/signal"] = np.asarray(ran[role.probabilities], dtype=np.float64)
    return scores


def _checked_roles(roles: Sequence[OutputRole], scores: dict, method: str) -> list[OutputRole]:
    """A `probabilities` output must hold distributions on the scored rows; else it is scores (stack) or refused."""
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
        if method != "stack":
            raise OnnxfuseError(scores_refusal(role, problem, method))
        warn(
            f"{role.model}: output '{role.probabilities}' holds scores, not probabilities ({problem}); "
            "the stacking head reads its raw columns"
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


def _argmax_labels(probabilities: np.ndarray, classes: tuple) -> np.ndarray:
    return np.array(classes, dtype=object)[np.argmax(probabilities, axis=1)]


def _scored_outputs(spliced: Spliced, roles: Sequence[OutputRole], *, vote: bool, classes=None) -> dict:
    wanted = {}
    for index, (outputs, role) in enumerate(zip(spliced.outputs, roles)):
        wanted[f"{index}/signal"] = outputs[role.probabilities or role.prediction]
        if vote and votes_with_label(role, classes):
            wanted[f"{index}/label"] = outputs[role.label]
    return wanted


def _signal_array(scores: dict, roles: Sequence[OutputRole], index: int, classes: tuple | None) -> np.ndarray:
    """What `fuse` computes in the graph from the same outputs: probabilities over the target's classes."""
    role, values = roles[index], scores[f"{index}/signal"]
    if role.task != "classification":
        return values.astype(np.float32).reshape(len(values), -1)
    probabilities = class_probabilities(role, values)
    return probabilities @ class_placement(role, classes) if classes is not None else probabilities


def _fusion_metadata(head: TrainedHead) -> dict:
    info = {"method": head.options.method}
    if head.options.method == "stack":
        info.update(meta=head.options.meta, passthrough=head.options.passthrough)
    elif head.gate is not None and not head.uses_features:
        weights = np.exp(head.gate.bias - head.gate.bias.max())
        info["weights"] = [round(float(w), 6) for w in weights / weights.sum()]
    if head.report is not None:
        info["holdout"] = head.report
    return info


def _names(sources: Sequence[SourceModel]) -> list[str]:
    return [f"m{s.index} {s.name}" for s in sources]


def _check_spec(spec: FuseSpec) -> None:
    if len(spec.models) < 2:
        raise OnnxfuseError("merge needs at least two models")
    if not 0 <= spec.holdout < 1:
        raise OnnxfuseError(f"--holdout {spec.holdout}: give a fraction in [0, 1)")
    if spec.target and not spec.data:
        raise OnnxfuseError("--target needs --data")
    if spec.data and not spec.target and spec.fusion in TRAINED:
        raise OnnxfuseError(f"--fusion {spec.fusion} needs --target, the label column of --data")
    if spec.fusion in TRAINED and not spec.data:
        raise OnnxfuseError(
            f"--fusion {spec.fusion} trains on data: give --data and --target (or use --fusion mean / vote)"
        )


def _describe_source(source: SourceModel, inputs: Sequence[InputBinding]) -> dict:
    """What `onnxfuse verify` needs to re-check a source: its hash, opsets and the columns it reads."""
    opsets = {(o.domain or "ai.onnx"): o.version for o in source.proto.opset_import}
    columns = [c for b in inputs for c in b.columns or ()]
    return {
        "name": source.name,
        "features": columns if any(b.columns is not None for b in inputs) else None,
        "file": source.path.name,
        "sha256": source.sha256,
        "opset": dict(sorted(opsets.items())),
    }
