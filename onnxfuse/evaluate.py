"""`onnxfuse evaluate`: a fused file (and, when given, its source files) on new labelled rows — "how does my
artifact do on this month's data?"."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from onnxfuse.availability import pattern_counts, pattern_name, source_columns
from onnxfuse.data import Table, read_table, read_target
from onnxfuse.errors import OnnxfuseError, VerificationError
from onnxfuse.evaluation import FUSED, Evaluation
from onnxfuse.fused_model import FusedModel
from onnxfuse.heads.base import LabelSpace, learner_target, target_prior, with_prior
from onnxfuse.report import metrics

PATTERN_ROWS = 2  # fewer rows of a pattern are counted, not scored


def evaluate(
    fused: Path, data: Path, target: str, *, sources: Sequence[Path] = (),
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:  # fmt: skip
    """Score `fused` and each of `sources` on the labelled rows of `data`.

    Rules: the target is read with the file's task (classes from `onnxfuse.classes`;
    a label the file does not know is an error naming it); columns are taken by name
    (`FusedModel`); sources are matched to the file's `onnxfuse.sources` by sha256, in
    any order, and scored alone on their recorded columns — answering the evaluation
    rows' class frequencies (or mean) where their features are missing, as the merge's
    hold-out table answers the training prior; every availability pattern the rows
    show is scored too, with `--explain`'s outputs kept where the file has them.
    """
    model = FusedModel(fused)
    table = read_table(data)
    truth = _truth(model, table, data, target)
    rows = len(truth)
    outputs = model.run_table(table, data, progress=(lambda done: progress(done, rows)) if progress else None)
    answers = {FUSED: outputs["probabilities" if model.task == "classification" else "prediction"]}
    names = tuple(f"m{i} {s.get('name', s.get('file', i))}" for i, s in enumerate(model.sources, start=1))
    available = outputs.get("available")
    if sources:
        own, available = _sources(model, fused, sources, table, data, target)
        answers = {**own, **answers}
    space = LabelSpace(model.task, model.classes)
    summary = {"task": model.task, "fusion": model.fusion, "rows": {"evaluated": len(truth)},
               "metrics": {name: metrics(model.task, truth, values, model.classes) for name, values in
                           answers.items()}}  # fmt: skip
    if available is not None:
        summary["rows"]["patterns"] = pattern_counts(available)
        summary["patterns"] = _pattern_metrics(answers, available, truth, space)
    return Evaluation(model.task, model.classes, truth, answers, names, summary, available,
                      outputs.get("source_effects"), outputs.get("weights"))  # fmt: skip


def _truth(model: FusedModel, table: Table, data: Path, target: str) -> np.ndarray:
    """The target column, as the fused file's labels (or numbers)."""
    task = model.task
    column = read_target(table, target, data, task=task, classifiers=task == "classification")
    if task == "regression":
        return column.values
    known = {str(c): c for c in model.classes}
    labels = [known.get(str(v)) for v in column.values.tolist()]
    unknown = sorted({str(v) for v, label in zip(column.values.tolist(), labels) if label is None})
    if unknown:
        raise OnnxfuseError(
            f"data {data}: column '{target}' holds class(es) {', '.join(unknown[:5])} the fused model does not know "
            f"(its classes: {', '.join(map(str, model.classes))})"
        )
    return np.array(labels, dtype=object if isinstance(model.classes[0], str) else np.int64)


def _sources(model: FusedModel, fused: Path, paths: Sequence[Path], table: Table, data: Path, target: str):
    """Each source file alone on the rows, and which sources are available on each row."""
    from onnxfuse.bind import bind
    from onnxfuse.feeds import labelled_rows
    from onnxfuse.fuse import reading_of
    from onnxfuse.load import load_model
    from onnxfuse.normalize import normalize
    from onnxfuse.reverify import match_by_hash, recorded_sources
    from onnxfuse.roles import output_role
    from onnxfuse.signals import numpy_signals
    from onnxfuse.spec import ModelSpec
    from onnxfuse.support import FEATURES
    from onnxfuse.train import alone
    from onnxfuse.verify import run_source

    recorded = recorded_sources(model.metadata, fused)
    if len(paths) != len(recorded):
        raise OnnxfuseError(f"{fused.name} was fused from {len(recorded)} models; {len(paths)} given")
    try:
        ordered = match_by_hash(recorded, paths, fused)
    except VerificationError as exc:  # here the files given are the mistake, not the fused file
        raise OnnxfuseError(f"{exc}; give the files it was merged from") from exc
    specs = [ModelSpec(path, _columns(entry), entry.get("name")) for path, entry in zip(ordered, recorded)]
    normalized, _ = normalize([load_model(spec, i) for i, spec in enumerate(specs, start=1)])
    binding = bind(normalized, data_columns=list(table), features_dtype=model.features_dtype)
    labelled = labelled_rows(table, binding, data, target=target, task=model.task,
                             classifiers=model.task == "classification")  # fmt: skip
    roles = [output_role(m, task=model.task, classes=model.classes) for m in normalized]
    scores = {f"{i}/signal": np.asarray(run_source(m, binding.models[i], binding, labelled.feeds)
                                        [role.probabilities or role.prediction]) for i, (m, role) in
              enumerate(zip(normalized, roles))}  # fmt: skip
    signals = numpy_signals(scores, roles, model.classes, features=labelled.feeds.get(FEATURES),
                            feature_columns=source_columns(binding))  # fmt: skip
    space = LabelSpace(model.task, model.classes)
    prior = target_prior(learner_target(labelled.target, space), space)
    own = {}
    for m, (source, role, signal) in enumerate(zip(normalized, roles, signals.per_model)):
        reading = reading_of(role, labelled)
        if reading:
            name = f"m{m + 1} {source.source.name}"
            own[name] = with_prior(alone(signal, reading, model.task), signals.mask[:, [m]], prior)
    return own, signals.mask


def _columns(entry: dict) -> tuple[str, ...] | None:
    features = entry.get("features")
    return tuple(features) if isinstance(features, list) else None


def _pattern_metrics(answers: dict, available: np.ndarray, truth: np.ndarray, space: LabelSpace) -> dict:
    """Per availability pattern the rows show: the fused model and each available source, on those rows."""
    table = {}
    for pattern in np.unique(available, axis=0)[::-1]:
        rows = np.flatnonzero((available == pattern).all(axis=1))
        entry: dict = {"rows": len(rows), "metrics": {}}
        table[pattern_name(pattern)] = entry
        if len(rows) < PATTERN_ROWS:
            continue
        for name, values in answers.items():
            index = int(name.split(" ", 1)[0][1:]) - 1 if name != FUSED else None
            if index is None or pattern[index]:
                entry["metrics"][name] = metrics(space.task, truth[rows], values[rows], space.classes)
    return table
