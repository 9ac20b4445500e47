"""Bring every source to one IR version and one opset per domain, with plain tensor outputs."""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Sequence

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, numpy_helper, version_converter

from onnxfuse.errors import OnnxfuseError, warn
from onnxfuse.load import SourceModel
from onnxfuse.support import BATCH_DIM, ML, STANDARD_DOMAINS, iter_model_nodes

MIN_OPSET = 21
MIN_ML_OPSET = 3


@dataclasses.dataclass(frozen=True)
class Versions:
    """The versions every normalized source (and the fused file) uses."""

    opset: int
    ml_opset: int
    ir_version: int


@dataclasses.dataclass(frozen=True)
class NormalizedModel:
    """A source after normalize: a new proto (the loaded one is untouched)."""

    source: SourceModel
    proto: onnx.ModelProto
    zipmap_classes: dict[str, tuple[int, ...] | tuple[str, ...]]
    lowered_from: int | None = None  # the source's ai.onnx opset when --target-opset converted it down
    # zipmap="columns": the `[N, C]` output normalize exposes -> the per-class outputs it stacks
    joined: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


def normalize(
    sources: Sequence[SourceModel],
    *,
    target_opset: int | None = None,
    max_ir_version: int | None = None,
) -> tuple[tuple[NormalizedModel, ...], Versions]:
    """Normalize every source to shared versions.

    Rules: ZipMap outputs become the float `[N, C]` tensor they wrap (class list
    kept); sparse initializers are stored dense (onnx-ir cannot hold them);
    ai.onnx is converted with onnx.version_converter to 21 (or the lowest opset above
    it that every source reaches with unchanged outputs, see `decide_versions`) or
    `target_opset`; ai.onnx.ml is raised to max(3, highest source) only where each
    ML op's schema accepts the node unchanged; one opset import per domain; IR =
    the minimum those opsets need, refused above `max_ir_version`; static batch
    dims on outputs are relaxed to `N`.
    """
    for source in sources:
        _check_domains(source)
    versions = decide_versions(sources, target_opset=target_opset, max_ir_version=max_ir_version)
    return tuple(_normalize_one(source, versions) for source in sources), versions


def decide_versions(
    sources: Sequence[SourceModel],
    *,
    target_opset: int | None = None,
    max_ir_version: int | None = None,
) -> Versions:
    """Opsets and IR version for the fused file, refused when a limit is exceeded.

    Without `target_opset`, ai.onnx is the contract's 21 unless a source cannot be
    converted down to it with the same outputs; then the lowest opset every source
    reaches faithfully, with one warning naming the model that forced it.
    """
    newest = onnx.defs.onnx_opset_version()
    newest_ml = max(row[3] for row in helper.VERSION_TABLE)
    highest_ml = max((_opset(s.proto, ML) or 0 for s in sources), default=0)
    for source in sources:
        for domain, limit in (("", newest), (ML, newest_ml)):
            version = _opset(source.proto, domain) or 0
            if version > limit:
                name = domain or "ai.onnx"
                raise OnnxfuseError(
                    f"{source.label}: opset {name} {version} is newer than the installed "
                    f"onnx {onnx.__version__} knows ({limit}); upgrade onnx"
                )
    opset = target_opset if target_opset is not None else _lowest_faithful_opset(sources)
    if not 1 <= opset <= newest:
        raise OnnxfuseError(f"--target-opset {opset}: the installed onnx supports 1..{newest}")
    ml_opset = max(MIN_ML_OPSET, highest_ml)
    ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset), helper.make_opsetid(ML, ml_opset)])
    if max_ir_version is not None and ir_version > max_ir_version:
        raise OnnxfuseError(
            f"--max-ir-version {max_ir_version}: ai.onnx {opset} with ai.onnx.ml {ml_opset} "
            f"needs IR version {ir_version}; lower --target-opset"
        )
    return Versions(opset=opset, ml_opset=ml_opset, ir_version=ir_version)


def _lowest_faithful_opset(sources: Sequence[SourceModel]) -> int:
    """The contract's opset 21, or the lowest above it that every newer source converts to unchanged."""
    opset, forced_by = MIN_OPSET, None
    for source in sources:
        own = _opset(source.proto, "") or 0
        if own <= opset:
            continue
        reached, problem = _lowest_reachable(source, opset, own)
        if reached > opset:
            opset, forced_by = reached, (source, own, problem)
    if forced_by is not None:
        source, own, problem = forced_by
        warn(
            f"{source.label}: its ai.onnx {own} does not convert down to {MIN_OPSET} unchanged ({problem}); "
            f"the fused file uses ai.onnx {opset}, which needs a newer onnxruntime than the default 1.18"
        )
    return opset


def _lowest_reachable(source: SourceModel, floor: int, own: int) -> tuple[int, str | None]:
    """The lowest opset from `floor` up that `source` converts to faithfully, and why lower ones fail."""
    first_problem = None
    for candidate in range(floor, own):
        problem = _lowering_problem(source, candidate)
        if problem is None:
            return candidate, first_problem
        first_problem = first_problem or problem
    return own, first_problem


def _lowering_problem(source: SourceModel, opset: int) -> str | None:
    """Why converting `source` down to `opset` is not faithful, or None when outputs stay equal.

    Seeded rows are run through the source and its conversion in onnxruntime. A source
    that onnxruntime cannot run here, or whose weights are external, is not probed:
    the verify stage compares the conversion on real rows instead.
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(source.proto)
    try:
        converted = convert_opset(proto, source.label, opset)
    except OnnxfuseError as exc:
        return str(exc).split(": ", 1)[-1]
    if _has_external_data(source.proto):
        return None
    feeds = probe_feeds(source.proto.graph)
    if feeds is None:
        return None
    try:
        expected = _run(source.proto, feeds)
    except runtime_errors():  # the source itself fails here: the later stages name it
        return None
    try:
        actual = _run(converted, feeds)
    except runtime_errors() as exc:
        return f"onnxruntime cannot run the conversion: {' '.join(str(exc).split())[:160]}"
    for name, value in expected.items():
        if not _same_values(actual[name], value):
            return f"output '{name}' changes"
    return None


def runtime_errors() -> tuple[type[Exception], ...]:
    """What onnxruntime raises for a model or a feed it refuses: its status codes (onnxruntime_pybind11_state),
    ValueError from its Python layer (a missing feed) and RuntimeError from pybind11. Never our own bugs
    (KeyError, AttributeError, TypeError...): those must stay internal errors."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    codes = (
        "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException", "InvalidProtobuf",
        "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail", "ModelLoadCanceled", "ModelRequiresCompilation",
        "NotFound", "DeviceReset",
    )  # fmt: skip
    return (*(getattr(state, code) for code in codes if hasattr(state, code)), RuntimeError, ValueError)


PROBE_LIMIT = 1 << 20  # elements per probe input: a declared dim of 2**40 is not worth a probe


def probe_feeds(graph: onnx.GraphProto, rows: int = 16) -> dict[str, object] | None:
    """Seeded rows for every tensor input of `graph` (unknown dims: `rows` for the batch, 4 elsewhere), or None
    when one cannot be built (an element type numpy lacks, a declared shape too large to probe)."""
    rng = np.random.default_rng(0)
    initializers = {init.name for init in graph.initializer}
    feeds = {}
    for value in graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
        except KeyError:  # UNDEFINED or a number onnx does not know
            return None
        dims = value.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else (rows if i == 0 else 4) for i, d in enumerate(dims)]
        if min(shape, default=0) < 0 or np.prod(shape, dtype=np.float64) > PROBE_LIMIT:
            return None
        if dtype == np.object_:
            feeds[value.name] = rng.choice(np.array(["a", "b", "c"], dtype=object), size=shape)
        elif dtype == np.bool_ or np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(0, 2 if dtype == np.bool_ else 5, size=shape).astype(dtype)
        else:
            feeds[value.name] = np.round(rng.normal(size=shape) * 2, 2).astype(dtype)
    return feeds


def _run(proto: onnx.ModelProto, feeds: dict[str, object]) -> dict[str, object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def _same_values(actual: object, expected: object) -> bool:
    if isinstance(expected, list):  # ZipMap: a list of {class: probability}
        if not isinstance(actual, list) or len(actual) != len(expected):
            return False
        return all(isinstance(a, dict) and a.keys() == e.keys() for a, e in zip(actual, expected)) and _same_values(
            np.array([list(a.values()) for a in actual]), np.array([list(e.values()) for e in expected])
        )
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return False
    if expected.dtype.kind in "fc":
        return bool(np.allclose(actual, expected, rtol=1e-5, atol=1e-6, equal_nan=True))
    return bool(np.array_equal(actual, expected))


def _has_external_data(proto: onnx.ModelProto) -> bool:
    from onnx import external_data_helper

    return any(external_data_helper.uses_external_data(t) for t in external_data_helper._get_all_tensors(proto))


def _normalize_one(source: SourceModel, versions: Versions) -> NormalizedModel:
    proto = onnx.ModelProto()
    proto.CopyFrom(source.proto)
    _densify_sparse_initializers(proto.graph)
    original = _opset(proto, "")
    proto = unify_versions(proto, source.label, versions)  # before the ZipMap cut: Identity has no down-adapter
    classes = strip_zipmap(proto, source.label)
    joined = _join_class_columns(proto.graph)
    _relax_batch_dims(proto.graph)
    _relax_regressor_shapes(proto.graph)
    lowered = original if original is not None and original > versions.opset else None
    return NormalizedModel(source=source, proto=proto, zipmap_classes=classes, lowered_from=lowered, joined=joined)


def unify_versions(proto: onnx.ModelProto, label: str, versions: Versions) -> onnx.ModelProto:
    """Move one model (a source, or a fusion head) to the shared opsets and IR version."""
    _check_ml_ops(proto, label, versions.ml_opset)
    proto = convert_opset(proto, label, versions.opset)
    _set_opset_imports(proto, versions)
    proto = _unify_functions(proto, label)
    proto.ir_version = versions.ir_version
    _name_batch_dim(proto.graph)
    return proto


def _name_batch_dim(graph: onnx.GraphProto) -> None:
    """One name for the batch: the symbols on the inputs' first dims (torch's `s0`, `batch`) become `N`
    on every input, output and value_info, so runtimes that unify symbols (tract) see one batch."""
    batch = {
        value.type.tensor_type.shape.dim[0].dim_param
        for value in graph.input
        if _first_dim_is_dynamic(value) and value.type.tensor_type.shape.dim[0].dim_param
    } - {BATCH_DIM}
    if not batch:
        return
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param in batch:
                    dim.dim_param = BATCH_DIM


def _opset(proto: onnx.ModelProto, domain: str) -> int | None:
    versions = [o.version for o in proto.opset_import if (o.domain or "") in _aliases(domain)]
    return max(versions) if versions else None


def _aliases(domain: str) -> tuple[str, ...]:
    return ("", "ai.onnx") if domain in ("", "ai.onnx") else (domain,)


def _check_domains(source: SourceModel) -> None:
    """Only standard ops (and the model's own local functions) can be fused portably."""
    local = {(f.domain, f.name) for f in source.proto.functions}
    for node in iter_model_nodes(source.proto):
        if node.domain in STANDARD_DOMAINS or (node.domain, node.op_type) in local:
            continue
        raise OnnxfuseError(
            f"{source.label}: node '{node.name or node.op_type}' uses op "
            f"'{node.domain}:{node.op_type}' from a non-standard domain; onnxfuse writes only "
            "ai.onnx and ai.onnx.ml ops so the result runs everywhere"
        )
    if any(node.domain == "" for node in iter_model_nodes(source.proto)) and _opset(source.proto, "") is None:
        raise OnnxfuseError(f"{source.label}: uses ai.onnx ops but imports no ai.onnx opset")


def _densify_sparse_initializers(graph: onnx.GraphProto) -> None:
    """onnx-ir and onnx.version_converter cannot hold sparse tensors: store them dense."""
    for sparse in graph.sparse_initializer:
        values = numpy_helper.to_array(sparse.values)
        indices = numpy_helper.to_array(sparse.indices)
        dense = np.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
        flat = indices if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), tuple(sparse.dims))
        dense[flat] = values
        graph.initializer.append(numpy_helper.from_array(dense.reshape(tuple(sparse.dims)), sparse.values.name))
    del graph.sparse_initializer[:]


def strip_zipmap(proto: onnx.ModelProto, label: str) -> dict[str, tuple]:
    """Replace each ZipMap feeding a graph output by an Identity of its float `[N, C]` input."""
    graph = proto.graph
    outputs = {o.name: o for o in graph.output}
    classes: dict[str, tuple] = {}
    for node in iter_model_nodes(proto):
        if node.op_type != "ZipMap" or node.domain != ML:
            continue
        if node.output[0] not in outputs:
            raise OnnxfuseError(f"{label}: a ZipMap that does not feed a graph output is not supported")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        labels = attrs.get("classlabels_int64s") or attrs.get("classlabels_strings") or []
        labels = tuple(x.decode() if isinstance(x, bytes) else int(x) for x in labels)
        classes[node.output[0]] = labels
        node.op_type, node.domain = "Identity", ""
        del node.attribute[:]
        output = outputs[node.output[0]]
        output.type.CopyFrom(helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [BATCH_DIM, len(labels)]))
    return classes


def _check_ml_ops(proto: onnx.ModelProto, label: str, target: int) -> None:
    """Raise ai.onnx.ml only where each ML node means the same at the target version."""
    source = _opset(proto, ML)
    if source is None or source == target:
        return
    for node in iter_model_nodes(proto):
        if node.domain != ML:
            continue
        problem = _ml_incompatibility(node, source, target)
        if problem:
            raise OnnxfuseError(
                f"{label}: op ai.onnx.ml:{node.op_type} cannot move from ai.onnx.ml {source} to "
                f"{target} unchanged ({problem})"
            )


def _ml_incompatibility(node: onnx.NodeProto, source: int, target: int) -> str | None:
    try:
        old = onnx.defs.get_schema(node.op_type, source, ML)
        new = onnx.defs.get_schema(node.op_type, target, ML)
    except onnx.defs.SchemaError:
        return "unknown op"
    if old.since_version == new.since_version:
        return None
    if new.deprecated:
        return f"deprecated at ai.onnx.ml {new.since_version}"
    used = {a.name for a in node.attribute}
    if missing := sorted(used - set(new.attributes)):
        return f"attributes {', '.join(missing)} no longer exist"
    required = {n for n, a in new.attributes.items() if a.required}
    if lacking := sorted(required - used):
        return f"required attributes {', '.join(lacking)} are not set"
    return None


def convert_opset(proto: onnx.ModelProto, label: str, target: int) -> onnx.ModelProto:
    """onnx.version_converter; it drops local functions, so those are inlined first."""
    source = _opset(proto, "")
    if source is None or source == target:
        return proto
    try:
        if proto.functions:  # each body converted from its own imports to the model's first
            proto = onnx.inliner.inline_local_functions(proto, convert_version=True)
        return version_converter.convert_version(proto, target)
    except (
        RuntimeError, ValueError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError,
        version_converter.ConvertError,
    ) as exc:  # fmt: skip
        raise OnnxfuseError(
            f"{label}: cannot convert ai.onnx opset {source} to {target}: {_converter_reason(exc)}"
        ) from exc


def _converter_reason(exc: Exception) -> str:
    """The converter's assertion text, cut down to the op that blocks it and what to do."""
    text = " ".join(str(exc).split())
    match = re.search(r"No Previous Version of (\w+)|No Adapter (?:From|To) Version \$?(\d+) for (\w+)", text)
    if match and match.group(1):
        return f"op {match.group(1)} has no version that old; use a higher --target-opset"
    if match:
        return f"op {match.group(3)} (version {match.group(2)}) has no converter; use another --target-opset"
    return text.rsplit("failed:", 1)[-1].strip()[:300] or type(exc).__name__


def _set_opset_imports(proto: onnx.ModelProto, versions: Versions) -> None:
    """Exactly one import per domain: ai.onnx, ai.onnx.ml where used, and local function domains."""
    domains = {node.domain for node in iter_model_nodes(proto)}
    imports = {"": versions.opset}
    if ML in domains:
        imports[ML] = versions.ml_opset
    for function in proto.functions:
        imports.setdefault(function.domain, 1)
    for opset in proto.opset_import:
        if opset.domain not in STANDARD_DOMAINS:
            imports[opset.domain] = opset.version
    del proto.opset_import[:]
    proto.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(imports.items()))


def _unify_functions(proto: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Local functions take the model's versions (splice's inliner refuses a mismatch): ai.onnx.ml follows the
    model's, as `_check_ml_ops` checked their nodes with it; a function of another ai.onnx is inlined, its body
    converted to the model's opset."""
    model = {o.domain: o.version for o in proto.opset_import}
    other = False
    for function in proto.functions:
        for opset in function.opset_import:
            if opset.domain == ML and ML in model:
                opset.version = model[ML]
            elif opset.domain in ("", "ai.onnx") and opset.version != model.get(""):
                other = True
    if not other:
        return proto
    try:
        return onnx.inliner.inline_local_functions(proto, convert_version=True)
    except (RuntimeError, ValueError, onnx.checker.ValidationError) as exc:
        raise OnnxfuseError(
            f"{label}: a local function imports another ai.onnx opset than the model and cannot be converted to "
            f"{model.get('')}: {_converter_reason(exc)}"
        ) from exc


def _relax_batch_dims(graph: onnx.GraphProto) -> None:
    """A static first dim on an output is wrong when the batch is dynamic (LightGBM's `[1]`)."""
    dynamic = any(_first_dim_is_dynamic(i) for i in graph.input)
    if not dynamic:
        return
    for output in graph.output:
        if not output.type.HasField("tensor_type") or not output.type.tensor_type.HasField("shape"):
            continue
        dims = output.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM


def _first_dim_is_dynamic(value: onnx.ValueInfoProto) -> bool:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return False
    dims = value.type.tensor_type.shape.dim
    return bool(dims) and not dims[0].HasField("dim_value")


def _join_class_columns(graph: onnx.GraphProto) -> dict[str, tuple[str, ...]]:
    """skl2onnx `zipmap="columns"`: one `[N]` output per class, each a `Slice` of one `[N, C]` probability
    tensor of an ML classifier; that tensor becomes an output too, before them (the per-class outputs stay, so
    verify still compares each with the source file), and roles reads it with the classifier's class list."""
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {i.name: i for i in graph.initializer}
    groups: dict[str, dict[int, str]] = {}
    for output in graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type in ("Reshape", "Squeeze", "Identity", "Flatten"):
            node = producers.get(node.input[0])
        if node is None or node.op_type != "Slice" or len(node.input) < 4:
            continue
        starts, ends, axes = (_one_int(initializers.get(n)) for n in node.input[1:4])
        if None not in (starts, ends, axes) and axes == 1 and ends == starts + 1:
            groups.setdefault(node.input[0], {})[starts] = output.name
    classifiers = [n for n in graph.node if n.domain == ML and n.op_type.endswith("Classifier")]
    attrs = {a.name: helper.get_attribute_value(a) for a in classifiers[0].attribute} if len(classifiers) == 1 else {}
    count = max((len(attrs.get(k) or ()) for k in ("classlabels_int64s", "classlabels_ints", "classlabels_strings")),
                default=0)  # fmt: skip
    joined = {}
    for tensor, columns in sorted(groups.items()):
        if len(columns) < 2 or sorted(columns) != list(range(count)):
            continue
        joined[tensor] = tuple(columns[i] for i in range(count))
        outputs = [copy.deepcopy(o) for o in graph.output]
        first = next(i for i, o in enumerate(outputs) if o.name in columns.values())
        outputs.insert(first, helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, [BATCH_DIM, count]))
        del graph.output[:]
        graph.output.extend(outputs)
    return joined


def _one_int(tensor: onnx.TensorProto | None) -> int | None:
    """The value of a one-element int64 initializer stored in the file, else None (broken data included)."""
    if tensor is None or tensor.data_type != onnx.TensorProto.INT64 or int(np.prod(tensor.dims)) != 1:
        return None
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    try:
        return int(numpy_helper.to_array(tensor).ravel()[0])
    except (ValueError, IndexError):
        return None


_ML_REGRESSORS = ("TreeEnsembleRegressor", "LinearRegressor", "SVMRegressor")


def _relax_regressor_shapes(graph: onnx.GraphProto) -> None:
    """An ML regressor's output is `[N, targets]` whatever the file declares (CatBoost declares `[N]`)."""
    producers = {out: node for node in graph.node for out in node.output}
    for output in graph.output:
        node = producers.get(output.name)
        if node is None or node.domain != ML or node.op_type not in _ML_REGRESSORS:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        targets = int(attrs.get("n_targets", attrs.get("targets", 1)) or 1)
        dims = output.type.tensor_type.shape.dim if output.type.tensor_type.HasField("shape") else []
        if len(dims) != 2:
            elem = output.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
            output.type.CopyFrom(helper.make_tensor_type_proto(elem, [BATCH_DIM, targets]))
