"""`merge(spec)`: the compiler's stages in order, as the contract states them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from onnxfuse import __version__
from onnxfuse.bind import bind
from onnxfuse.data import column_names, read_table, require_column, verification_feeds
from onnxfuse.emit import check_output, emit, fused_metadata, stage, workspace
from onnxfuse.errors import OnnxfuseError
from onnxfuse.fuse import fuse
from onnxfuse.load import SourceModel, load_model
from onnxfuse.normalize import Versions, normalize
from onnxfuse.outputs import output_role
from onnxfuse.spec import FuseSpec
from onnxfuse.splice import splice
from onnxfuse.verify import verify


@dataclasses.dataclass(frozen=True)
class FuseResult:
    """What was written, for the CLI's summary."""

    output: Path
    features: tuple[str, ...]
    classes: tuple | None
    task: str
    versions: Versions


def merge(spec: FuseSpec) -> FuseResult:
    """load -> normalize -> bind -> splice -> fuse -> (optimize) -> verify -> emit."""
    _check_spec(spec)
    inputs = [m.path for m in spec.models] + ([spec.data] if spec.data else [])
    check_output(spec.output, inputs)
    table = read_table(spec.data) if spec.data else None
    if table is not None and spec.target:
        require_column(table, spec.target, spec.data)
    sources = tuple(load_model(model, index) for index, model in enumerate(spec.models, start=1))
    models, versions = normalize(sources, target_opset=spec.target_opset, max_ir_version=spec.max_ir_version)
    binding = bind(models, data_columns=column_names(table))
    roles = [output_role(model) for model in models]
    fused = fuse(
        splice(models, binding, versions), roles, method=spec.fusion, keep_model_outputs=spec.keep_model_outputs
    )
    if spec.task != "auto" and spec.task != fused.task:
        raise OnnxfuseError(f"--task {spec.task}: the models are {fused.task} models")
    metadata = fused_metadata(
        features=binding.features,
        classes=fused.classes,
        sources=[_describe_source(s) for s in sources],
        fusion={"method": fused.method, "task": fused.task, "weights": list(fused.weights)},
        version=__version__,
    )
    feeds = verification_feeds(binding, table, spec.data, seed=spec.seed)
    with workspace(spec.output, inputs) as folder:
        staged = stage(fused.model, folder, out=spec.output, metadata=metadata)
        verify(staged, models, binding, feeds=feeds)
        emit(staged, spec.output)
    return FuseResult(spec.output, binding.features, fused.classes, fused.task, versions)


def _check_spec(spec: FuseSpec) -> None:
    if len(spec.models) < 2:
        raise OnnxfuseError("merge needs at least two models")
    if spec.target and not spec.data:
        raise OnnxfuseError("--target needs --data")
    if spec.ort:
        raise OnnxfuseError("--ort is not available yet")
    if spec.report is not None:
        raise OnnxfuseError("--report is not available yet: untrained fusion has no hold-out report")


def _describe_source(source: SourceModel) -> dict:
    opsets = {(o.domain or "ai.onnx"): o.version for o in source.proto.opset_import}
    return {
        "name": source.name,
        "file": source.path.name,
        "sha256": source.sha256,
        "opset": dict(sorted(opsets.items())),
    }
