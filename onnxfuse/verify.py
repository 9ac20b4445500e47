"""Check the staged fused model: valid, portable, and equal to every source on real rows."""

from __future__ import annotations

import contextlib
import dataclasses
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import external_data_helper, helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from onnxfuse.bind import Binding
from onnxfuse.errors import OnnxfuseError, VerificationError, reason, warn
from onnxfuse.normalize import NormalizedModel, probe_feeds, runtime_errors
from onnxfuse.support import FEATURES, STANDARD_DOMAINS, iter_model_nodes, iter_nodes

VERIFY_FILE = "verify.onnx"
PACKAGE = Path(__file__).resolve().parent
BUG_TYPES = (AttributeError, LookupError, NameError, TypeError, AssertionError)


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Per-output tolerances: labels (ints, strings) compare exactly."""

    rtol: float = 1e-5
    atol: float = 1e-6


SOURCE_TOLERANCE = Tolerance()
REFERENCE_TOLERANCE = Tolerance(rtol=1e-4, atol=1e-5)


def verify(
    staged: Path | bytes,
    models: Sequence[NormalizedModel],
    binding: Binding,
    *,
    feeds: Mapping[str, np.ndarray],
    scratch: Path | None = None,
    exact: Mapping[str, np.ndarray] | None = None,
    domains: Sequence[str] = STANDARD_DOMAINS,
) -> None:
    """Raise VerificationError unless the staged model is sound.

    `scratch` is where a copy exposing the sources' outputs is written: beside
    `staged` (external data resolves only below the model's folder), by default
    `verify.onnx` in the staged model's folder. A model staged in memory (its bytes)
    is checked in memory, nothing written.

    Rules: `check_model(full_check=True)` passes; nodes and opset imports use only
    `domains` (ai.onnx / ai.onnx.ml; ai.onnx alone for `--ops core`); each spliced
    copy `m{i}/<output>` equals source i run alone in onnxruntime on the same rows (ZipMap outputs read in class order);
    onnxruntime and onnx's ReferenceEvaluator agree on every output. `exact` holds
    the data's own values of packed columns (`data.source_rows`): sources are fed
    those, at their own precision, so a loss in the fused `features` cannot pass; a
    difference a narrower `features` explains is an error naming the model, input and
    column (use `--features-dtype float64`).
    """
    in_memory = isinstance(staged, bytes)
    try:
        onnx.checker.check_model(staged if in_memory else str(staged), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise VerificationError(f"the fused model fails the ONNX checker: {exc}") from exc
    proto = onnx.load_model_from_string(staged) if in_memory else onnx.load(str(staged), load_external_data=False)
    _check_portable(proto, domains)
    names = [f"m{i}/{o.name}" for i, m in enumerate(models, start=1) for o in m.proto.graph.output]
    _with_model_outputs(proto, names)
    if in_memory:
        verify_path: Path | bytes = proto.SerializeToString()
    else:
        verify_path = scratch or staged.parent / VERIFY_FILE
        onnx.save(proto, str(verify_path))
    fused = run_onnxruntime(verify_path, feeds)
    alone = []
    for index, model in enumerate(models, start=1):
        expected = run_source(model, binding.models[index - 1], binding, feeds, exact=exact)
        alone.append(expected)
        kept = {name: value for name, value in expected.items() if f"m{index}/{name}" in fused}
        if not kept:
            raise VerificationError(f"no output of model {index} is left in the fused graph")
        for name, value in kept.items():
            try:
                compare(f"m{index}/{name}", fused[f"m{index}/{name}"], value, SOURCE_TOLERANCE, f"model {index} alone")
            except VerificationError as exc:
                _blame_precision(model, binding.models[index - 1], binding, feeds=feeds, exact=exact, error=exc)
                if model.lowered_from is None:
                    raise
                target = next(o.version for o in model.proto.opset_import if o.domain == "")
                raise OnnxfuseError(
                    f"{model.source.label}: onnx.version_converter changed its outputs converting ai.onnx "
                    f"{model.lowered_from} down to {target} ({exc}); use a higher --target-opset"
                ) from exc
    try:
        reference = run_reference(verify_path, feeds)
    except Exception as exc:
        if internal_bug(exc):
            raise
        error = VerificationError(f"onnx's reference evaluator cannot run the fused model ({reason(exc)})")
        _recheck_reference(verify_path, models, binding, fused=fused, alone=alone, feeds=feeds, error=error)
        return
    try:
        for name, value in fused.items():
            compare(name, reference[name], value, REFERENCE_TOLERANCE, "onnxruntime vs the reference evaluator")
    except VerificationError as exc:
        _recheck_reference(verify_path, models, binding, fused=fused, alone=alone, feeds=feeds, error=exc)


def internal_bug(exc: BaseException) -> bool:
    """An exception that signals a bug in onnxfuse itself: a KeyError, AttributeError, TypeError... raised by our
    own code (its innermost frame is in this package). Libraries raising them on a broken model are not ours."""
    if not isinstance(exc, BUG_TYPES):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(PACKAGE)


def _recheck_reference(path: Path | bytes, models, binding: Binding, *, fused, alone, feeds, error: Exception) -> None:
    """The reference evaluator computes some ML ops otherwise than onnxruntime (multi-class SVM probabilities:
    up to 0.13 off scikit-learn, where onnxruntime is within 1e-6), or cannot run them (a tree whose node ids it
    does not expect, an integer input to Scaler). When a source alone already differs or fails there, its outputs
    are fed from onnxruntime and everything else is checked across runtimes; one warning names it."""
    differing = {}
    for index, model in enumerate(models, start=1):
        own_feeds = feeds_of_source(binding.models[index - 1], binding, feeds)
        problem = _reference_differs_alone(model, own_feeds, alone[index - 1])
        if problem:
            differing[index] = problem
    if not differing:
        raise error
    fed = {n: v for n, v in fused.items() if any(n.startswith(f"m{i}/") for i in differing)}
    reference = run_reference(path, feeds, fed=fed)
    for name, value in fused.items():
        if name not in fed:
            compare(name, reference[name], value, REFERENCE_TOLERANCE, "onnxruntime vs the reference evaluator")
    for index, problem in differing.items():
        warn(
            f"{models[index - 1].source.label}: onnx's reference evaluator does not reproduce onnxruntime on "
            f"this source alone ({problem}); the fused file was checked across runtimes with its outputs taken "
            "from onnxruntime, which matches the source file"
        )


def _reference_differs_alone(model: NormalizedModel, source_feeds: dict, expected: dict) -> str | None:
    if any(external_data_helper.uses_external_data(t) for t in model.proto.graph.initializer):
        return None
    try:
        outputs = reference_evaluator(model.proto).run(None, source_feeds)
    except Exception as exc:  # the evaluator raises many types on what it cannot run; our own bugs stay bugs
        if internal_bug(exc):
            raise
        return f"it cannot run it: {reason(exc, 160)}"
    for value, (name, wanted) in zip(outputs, ((o.name, expected.get(o.name)) for o in model.proto.graph.output)):
        if wanted is None:
            continue
        if np.asarray(value).dtype != np.asarray(wanted).dtype:  # e.g. its Scaler writes double for double input
            return f"{name}: {np.asarray(value).dtype} where onnxruntime gives {np.asarray(wanted).dtype}"
        try:
            compare(name, value, wanted, REFERENCE_TOLERANCE, "the reference evaluator vs onnxruntime")
        except VerificationError as exc:
            return str(exc).split(" (", 1)[0]
    return None


@contextlib.contextmanager
def blaming(models: Sequence[NormalizedModel]) -> Iterator[None]:
    """Turn a failure caused by a broken source into an error naming that source (exit 2).

    A source can pass the loader's checks and still be broken (inconsistent
    shapes, attribute lists onnxruntime rejects, a Reshape that fails on every
    batch). When a later stage fails, each source is checked on its own — strict
    ONNX shape inference, an onnxruntime session, a run on seeded rows — before
    the failure is called internal. An exception our own code raised (a KeyError,
    AttributeError, TypeError... in onnxfuse) is a bug whatever the sources are.
    """
    try:
        yield
    except (OnnxfuseError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if internal_bug(exc):
            raise
        for model in models:
            problem = _broken_alone(model)
            if problem:
                raise OnnxfuseError(f"{model.source.label}: broken on its own ({problem})") from exc
        raise


def _broken_alone(model: NormalizedModel) -> str | None:
    try:
        onnx.shape_inference.infer_shapes(model.proto, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError) as exc:
        return reason(exc)
    feeds = probe_feeds(model.source.proto.graph)
    try:
        session = ort.InferenceSession(model.source.file, session_options(), providers=["CPUExecutionProvider"])
        if feeds is not None:
            session.run(None, feeds)
    except runtime_errors() as exc:
        return reason(exc)
    return None


def session_options() -> ort.SessionOptions:
    """Memory-mapped weights stay unread until used: prepacking would copy them."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach us as exceptions; no C++ log lines on stderr
    options.add_session_config_entry("session.disable_prepacking", "1")
    return options


def run_onnxruntime(path: Path | bytes, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of a model file (or of its bytes) on `feeds`."""
    source = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(source, session_options(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in wanted})))


def run_source(
    model: NormalizedModel,
    bindings,
    binding: Binding,
    feeds: Mapping[str, np.ndarray],
    *,
    exact: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Outputs of the source file alone, fed the rows the fused model read (packed columns at the
    data's own precision where `exact` holds them)."""
    source_feeds = feeds_of_source(bindings, binding, feeds, exact=exact)
    try:
        session = ort.InferenceSession(model.source.file, session_options(), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        results = dict(zip(names, session.run(None, source_feeds)))
    except runtime_errors() as exc:
        raise OnnxfuseError(f"{model.source.label}: onnxruntime cannot run it on its own ({reason(exc)})") from exc
    for name, classes in model.zipmap_classes.items():
        results[name] = np.array([[row[c] for c in classes] for row in results[name]], dtype=np.float32)
    for name, columns in model.joined.items():  # zipmap="columns": the one tensor normalize exposes
        results[name] = np.stack([np.asarray(results[c]).reshape(-1) for c in columns], axis=1)
    return results


def feeds_of_source(
    bindings, binding: Binding, feeds: Mapping[str, np.ndarray], *, exact: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """One source's own inputs, cut from the fused model's feeds (or the data's exact values)."""
    source_feeds = {}
    for input_binding in bindings:
        if input_binding.columns is None:
            source_feeds[input_binding.name] = feeds[input_binding.name]
        elif input_binding.is_string:
            column = feeds[input_binding.columns[0]]
            source_feeds[input_binding.name] = column.reshape(-1) if input_binding.rank == 1 else column
        else:
            source_feeds[input_binding.name] = _source_block(input_binding, binding, feeds=feeds, exact=exact or {})
    return source_feeds


def _source_block(input_binding, binding: Binding, *, feeds: Mapping[str, np.ndarray], exact: Mapping) -> np.ndarray:
    columns = input_binding.columns
    if all(c in exact for c in columns):
        block = np.stack([np.asarray(exact[c]).astype(np.float64) for c in columns], axis=1)
    else:
        block = feeds[FEATURES][:, [binding.column_index(c) for c in columns]]
    block = block[:, 0] if input_binding.rank == 1 else block
    return block.astype(helper.tensor_dtype_to_np_dtype(input_binding.elem_type))


def _blame_precision(model: NormalizedModel, bindings, binding: Binding, *, feeds, exact, error: Exception) -> None:
    """A source differs and one of its inputs is wider than `features`, whose copy of a column it reads
    lost digits: the user's choice of `--features-dtype`, not an internal failure."""
    narrow = np.dtype(helper.tensor_dtype_to_np_dtype(binding.dtype))
    for input_binding in bindings:
        if input_binding.columns is None or input_binding.is_string or not exact:
            continue
        wanted = np.dtype(helper.tensor_dtype_to_np_dtype(input_binding.elem_type))
        if wanted.itemsize <= narrow.itemsize and wanted.kind == "f":
            continue
        for column in input_binding.columns:
            if column not in exact:
                continue
            packed = feeds[FEATURES][:, binding.column_index(column)].astype(np.float64)
            if not np.array_equal(packed, np.asarray(exact[column]).astype(np.float64), equal_nan=True):
                raise OnnxfuseError(
                    f"{model.source.label}: input '{input_binding.name}' is {wanted.name} but column '{column}' "
                    f"loses precision in {binding.dtype_name} features, and the model's outputs change ({error}); "
                    "use --features-dtype float64"
                ) from error


def run_reference(
    path: Path | bytes, feeds: Mapping[str, np.ndarray], *, fed: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """ReferenceEvaluator with large weights fed as memory-mapped arrays, never copied (a model's bytes hold
    all of theirs).

    `fed` values are taken as given instead of computed: their producers write elsewhere."""
    in_memory = isinstance(path, bytes)
    proto = onnx.load_model_from_string(path) if in_memory else onnx.load(str(path), load_external_data=False)
    _feed_values(proto.graph, fed or {})
    if fed:  # the producers of fed values may be what the evaluator cannot run: keep only what outputs need
        needed = _needed_nodes(proto.graph)
        del proto.graph.node[:]
        proto.graph.node.extend(needed)
    if in_memory:
        return _evaluate(proto, feeds, {}, fed)
    folder = path.parent
    mapped = {}
    kept = []
    for tensor in proto.graph.initializer:
        if not external_data_helper.uses_external_data(tensor):
            kept.append(tensor)
            continue
        mapped[tensor.name] = _memmap(tensor, folder)
        proto.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    external_data_helper.load_external_data_for_model(proto, str(folder))
    return _evaluate(proto, feeds, mapped, fed)


def _evaluate(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray], mapped: dict, fed) -> dict[str, np.ndarray]:
    evaluator = reference_evaluator(proto)
    names = [o.name for o in proto.graph.output]
    wanted = {i.name for i in proto.graph.input}
    inputs = {k: v for k, v in feeds.items() if k in wanted} | mapped | dict(fed or {})
    return dict(zip(names, evaluator.run(None, inputs)))


class GatherElements(OpRun):
    """onnx's own kernel picks with `np.choose`, which takes at most 64 entries along the axis (its choices):
    the node tables of a lowered forest (`--ops core`) hold thousands. `np.take_along_axis` is the op's meaning."""

    def _run(self, data: np.ndarray, indices: np.ndarray, axis: int | None = None) -> tuple[np.ndarray]:
        axis = 0 if axis is None else int(axis)
        indices = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(data, indices, axis=axis),)


def reference_evaluator(proto: onnx.ModelProto) -> ReferenceEvaluator:
    """onnx's ReferenceEvaluator, its GatherElements kernel replaced (see `GatherElements`)."""
    return ReferenceEvaluator(proto, new_ops=[GatherElements])


def _feed_values(graph: onnx.GraphProto, fed: Mapping[str, np.ndarray]) -> None:
    """Make each `fed` value a graph input: its producer's output is renamed, so nothing reads it."""
    if not fed:
        return
    outputs = {o.name: o for o in graph.output}
    for node in graph.node:
        for position, name in enumerate(node.output):
            if name in fed:
                node.output[position] = f"{name}/unused_by_reference"
    kept = [o for o in graph.output if o.name not in fed]
    graph.input.extend(outputs[name] for name in fed if name in outputs)
    del graph.output[:]
    graph.output.extend(kept)


def _needed_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes the graph's outputs depend on, in order (a node reads what its subgraphs reference too)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if not any(name in needed for name in node.output):
            continue
        kept.append(node)
        needed.update(node.input)
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                needed.update(name for inner in iter_nodes(sub) for name in inner.input)
    return kept[::-1]


def _memmap(tensor: onnx.TensorProto, folder: Path) -> np.ndarray:
    info = external_data_helper.ExternalDataInfo(tensor)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    shape = tuple(tensor.dims)
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(folder / info.location, dtype=dtype, mode="r", offset=info.offset or 0, shape=shape)


def _check_portable(proto: onnx.ModelProto, allowed: Sequence[str]) -> None:
    domains = {o.domain for o in proto.opset_import} | {n.domain for n in iter_model_nodes(proto)}
    if extra := sorted(domains - set(allowed)):
        raise VerificationError(f"the fused model uses domains it may not: {', '.join(extra)}")
    if proto.functions:
        raise VerificationError("the fused model still holds local functions")


def _with_model_outputs(proto: onnx.ModelProto, names: Sequence[str]) -> None:
    """Make the staged model's copy also output the `m{i}/` source outputs it still computes.

    Optimizing removes source outputs nothing reads (e.g. a label the head ignores)."""
    known = {v.name: v for v in proto.graph.value_info}
    present = {o.name for o in proto.graph.output}
    proto.graph.output.extend(known[name] for name in names if name not in present and name in known)


def compare(name: str, actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.size == expected.size:
        actual = actual.reshape(expected.shape)
    if actual.shape != expected.shape:
        raise VerificationError(f"{name}: shape {actual.shape} differs from {expected.shape} ({what})")
    if expected.dtype.kind in "fc":
        if not np.allclose(actual, expected, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True):
            worst = float(np.nanmax(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
            raise VerificationError(f"{name}: values differ by up to {worst:.3g} ({what})")
    elif not np.array_equal(actual.astype(expected.dtype), expected):
        mismatched = int(np.sum(actual.astype(expected.dtype) != expected))
        raise VerificationError(f"{name}: {mismatched} of {expected.size} labels differ ({what})")
