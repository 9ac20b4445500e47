"""`merge(spec)`: the compiler's stages in order, as the contract states them.

Which stages change their input: `splice` builds a new graph from copies of the
sources' protos (functional); `fuse` and `optimize` change that graph in place;
`stage`, `verify` and `emit` only read it. The loaded sources are never mutated.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import onnxfuse.progress
from onnxfuse import __version__
from onnxfuse.bind import InputBinding, bind
from onnxfuse.data import Table, column_names, read_table
from onnxfuse.dataset import Dataset, check_columns, is_dataset, open_dataset
from onnxfuse.emit import check_output, check_sealed, emit, fused_metadata, metadata_json, stage, workspace
from onnxfuse.evaluation import Evaluation
from onnxfuse.feeds import VERIFY_ROWS, labelled_rows, source_rows, verification_feeds
from onnxfuse.fuse import Fused, fuse
from onnxfuse.heads.base import Head
from onnxfuse.load import SourceModel, load_model
from onnxfuse.mobile import write_ort
from onnxfuse.normalize import Versions, normalize
from onnxfuse.optimize import optimize
from onnxfuse.progress import Reporter, reporting
from onnxfuse.report import check_report, write_report
from onnxfuse.roles import looks_like_classifier
from onnxfuse.sampling import Streamed, draw_sample
from onnxfuse.spec import FuseSpec, check_spec
from onnxfuse.splice import splice
from onnxfuse.support import CORE_DOMAINS, STANDARD_DOMAINS
from onnxfuse.verify import blaming, verify


@dataclasses.dataclass(frozen=True)
class FuseResult:
    """What was written, for the CLI's summary and report, and the fitted head for library users."""

    output: Path | None  # None: built in memory, `sealed` holds it
    features: tuple[str, ...]
    classes: tuple | None
    task: str
    versions: Versions
    fusion: dict
    head: Head
    ort: bool = False
    why: str = ""  # why the task was chosen, for the summary line
    evaluation: Evaluation | None = None  # the hold-out rows' answers, for the HTML report and Python users
    sealed: bytes | None = None  # the verified file's bytes, when it was built in memory


def merge(spec: FuseSpec, *, progress: Reporter | None = None, table: Table | None = None) -> FuseResult:
    """load -> normalize -> bind -> splice -> fuse (score, train) -> optimize -> verify -> emit; `progress` hears
    of each long stage (see `onnxfuse.progress`). `table`: the data's columns when they are in memory already
    (the Python API), `spec.data` then only names them in messages. Without `spec.output` nothing is written:
    sources are scored and the file verified from memory, and `FuseResult.sealed` holds its bytes."""
    with reporting(progress):
        return _merge(spec, table)


def _merge(spec: FuseSpec, table: Table | None) -> FuseResult:
    check_spec(spec)
    dataset = open_dataset(spec.data) if table is None and spec.data and is_dataset(spec.data) else None
    data_files = list(dataset.files) if dataset is not None else [spec.data] if spec.data and table is None else []
    inputs = [m.path for m in spec.models if m.proto is None] + data_files
    written = [] if spec.output is None else [spec.output]
    if spec.output is not None:
        check_output(spec.output, inputs)
    if spec.report is not None:
        check_report(spec, [*inputs, *written])
    if table is None and spec.data and dataset is None:
        table = read_table(spec.data)
    data = dataset.label if dataset is not None else spec.data
    sources = tuple(load_model(model, index) for index, model in enumerate(spec.models, start=1))
    models, versions = normalize(sources, target_opset=spec.target_opset, max_ir_version=spec.max_ir_version)
    with blaming(models):
        binding = bind(models, data_columns=dataset.columns if dataset else column_names(table),
                       features_dtype=spec.features_dtype)  # fmt: skip
        streamed = None
        if dataset is not None:
            table, held, streamed = _read_rows(dataset, binding, spec)
        classifiers = any(looks_like_classifier(model) for model in models)
        labelled = labelled_rows(
            table, binding, data, target=spec.target, task=spec.task, classifiers=classifiers
        ) if spec.target else None  # fmt: skip
        if labelled is not None and streamed is not None:
            labelled = dataclasses.replace(labelled, held=held)
        spliced = splice(models, binding, versions)
        with workspace(spec.output, inputs) if written else contextlib.nullcontext() as folder:
            feeds = verification_feeds(binding, table, data, seed=spec.seed)
            fused = fuse(spliced, models, binding, labelled, spec, feeds=feeds, folder=folder, versions=versions,
                         streamed=streamed)  # fmt: skip
            if spec.optimize:
                optimize(fused.model, keep=[value for outputs in spliced.outputs for value in outputs.values()])
            if spec.ops == "core":
                fused = _lowered(fused, feeds, [m.source.label for m in models])
            staged = stage(fused.model, folder, out=spec.output, metadata=_metadata(sources, binding, fused))
            onnxfuse.progress.stage("verifying the fused file against its sources")
            verify(staged.view, models, binding, feeds=feeds, exact=source_rows(binding, table),
                   domains=CORE_DOMAINS if spec.ops == "core" else STANDARD_DOMAINS)
            check_sealed(staged)
            if spec.ort:
                staged = write_ort(staged, spec.output, feeds)
            if written:
                emit(staged)
    if spec.report is not None:
        name = spec.output.name if written else "in memory"
        write_report(spec.report, fused.metadata, fused.evaluation, title=f"onnxfuse merge: {name}")
    why = labelled.why if labelled is not None else f"the sources are {fused.space.task} models"
    return FuseResult(spec.output, binding.features, fused.space.classes, fused.space.task, versions,
                      fused.metadata, fused.head, ort=spec.ort, why=why, evaluation=fused.evaluation,
                      sealed=staged.sealed)  # fmt: skip


def _read_rows(dataset: Dataset, binding, spec: FuseSpec):
    """(table, hold-out flags, Streamed): the columns the merge reads, of every row when the data holds at most
    `--fit-rows` of them (split as in memory), else of the seeded fit sample (see `sampling`), whose hold-out
    rows are then measured over the whole data; without a target, the first rows, to verify on."""
    shared = [value.name for value in binding.shared if value.name in dataset.columns]
    target = [spec.target] if spec.target else []
    needed = list(dict.fromkeys([*binding.features, *binding.strings, *shared, *target]))
    check_columns(dataset, needed)
    if not needed:  # the models read no column: verification rows are generated
        return None, None, None
    if not spec.target:
        return dataset.head(needed, VERIFY_ROWS), None, None
    onnxfuse.progress.stage(f"reading {len(needed)} columns of {dataset.label}")
    sample = draw_sample(dataset, needed, fit_rows=spec.fit_rows, seed=spec.seed, holdout=spec.holdout,
                         progress=lambda done: onnxfuse.progress.rows(done, dataset.rows or 0))  # fmt: skip
    if sample.complete:
        return sample.table, None, None
    streamed = Streamed(dataset, tuple(needed), spec.target, spec.engine, spec.seed, spec.holdout,
                        len(sample.holdout), sample.rows)  # fmt: skip
    return sample.table, sample.holdout, streamed


def _lowered(fused: Fused, feeds, labels: list[str]) -> Fused:
    """`--ops core`: every ai.onnx.ml node rewritten into ai.onnx, checked against the graph before."""
    from onnxfuse.lower.check import lower_fused

    onnxfuse.progress.stage("rewriting the ai.onnx.ml ops into ai.onnx (--ops core)")
    return dataclasses.replace(fused, model=lower_fused(fused.model, feeds, labels))


def _metadata(sources: Sequence[SourceModel], binding, fused: Fused) -> dict[str, str]:
    """The fused file's `onnxfuse.*` metadata."""
    metadata = fused_metadata(
        features=binding.features,
        classes=fused.space.classes,
        sources=[_describe_source(s, b) for s, b in zip(sources, binding.models)],
        fusion=fused.metadata,
        version=__version__,
    )
    metadata.update({key: metadata_json(value) for key, value in binding.metadata().items()})
    return metadata


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
