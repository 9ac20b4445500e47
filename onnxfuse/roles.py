"""What each source outputs: probabilities, logits, a label, a prediction, and its classes."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfuse.errors import OnnxfuseError, warn
from onnxfuse.normalize import NormalizedModel
from onnxfuse.support import ML, elem_type, rank

_PASS_THROUGH = {"Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
_CLASS_ATTRS = ("classlabels_int64s", "classlabels_ints", "classlabels_strings")
_LABEL_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.STRING)
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
_FORM_OF_OP = {"Softmax": "probabilities", "LogSoftmax": "log_probabilities", "Sigmoid": "probabilities"}
SIGNALS = ("probabilities", "log_probabilities", "logits")  # declarations of a class signal
DECLARATIONS = (*SIGNALS, "label", "prediction", "classes")
PROBABILITY_ATOL, ROW_SUM_ATOL = 1e-6, 1e-3

Classes = tuple[int, ...] | tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class OutputRole:
    """Which output of a source carries its signal, in which form, over which classes.

    `form` of a classifier's `probabilities` output: `probabilities`, `log_probabilities`
    or `logits` (`[N, C]`), `positive` (one column, P(second class)) or `logit` (one raw
    column for the second class). `task` "scores" is an unlabeled `[N, K]` (stacking only).
    """

    model: str  # how messages name the source: `model 2 (b.onnx)`
    task: str  # "classification", "regression", or "scores"
    label: str | None = None
    probabilities: str | None = None  # the class signal output, in `form`
    prediction: str | None = None
    classes: Classes | None = None
    width: int | None = None  # columns of `prediction`: 1, or K for scores
    form: str | None = None
    index: int = 0
    outputs: str = ""  # the model's outputs with shapes, for messages
    declared: bool = False  # the signal output and its form come from the user's declaration

    def as_scores(self) -> OutputRole:
        """The same output read as raw columns (stacking only)."""
        name = self.probabilities or self.prediction
        width = len(self.classes) if self.classes and self.form not in ("positive", "logit") else self.width
        return dataclasses.replace(
            self, task="scores", prediction=name, probabilities=None, label=None, width=width, form=None
        )


@dataclasses.dataclass(frozen=True)
class _Graph:
    """What the role rules read from a graph: producers, constants, which values depend on an input."""

    outputs: dict[str, onnx.ValueInfoProto]
    producers: dict[str, onnx.NodeProto]
    constants: dict[str, onnx.TensorProto]
    varying: frozenset[str]


def output_role(model: NormalizedModel, *, task: str | None = None, classes: Classes | None = None) -> OutputRole:
    """Find what a source predicts, given the target's `task` and `classes` (None without a target).

    Rules: the user's declarations (`probabilities`/`logits`/`log_probabilities`/
    `label`/`prediction`, `classes`) win; outputs that depend on no graph input (a
    class list) are never a signal. A label computed in the graph (`ArgMax`, or
    `Gather`/`GatherND`/`ArrayFeatureExtractor` of a class constant by an ArgMax)
    points at its signal; else a former ZipMap, else the one float matrix (several:
    the Softmax/LogSoftmax one, else the one as wide as the target's classes), else
    one float column. The form comes from the producer (Softmax, LogSoftmax,
    Sigmoid, through Identity/Cast/Reshape/Squeeze/Unsqueeze/Flatten); an ML
    classifier's or a `*prob*` output is probabilities; other matrices are logits;
    a one-column output not made by a Sigmoid is a prediction, or with a binary
    target and no `prediction` declared, the positive class's logit (one warning).
    Classes: declared, ZipMap, ML op, gathered constant, `0..C-1` for ArgMax labels,
    the target's `0..C-1` or binary classes; without them the signal is `scores`.
    Anything else is an error naming the model, its outputs and the declaration.
    """
    graph = _read_graph(model.proto.graph)
    declared = _declarations(model, graph)
    base = OutputRole(model.source.label, "regression", index=model.source.index, outputs=_listing(graph))
    if "prediction" in declared:
        return dataclasses.replace(base, prediction=declared["prediction"], width=_width(graph, declared["prediction"]))
    label = declared.get("label") or _the_label(graph)
    signal, form, found = _signal(model, graph, declared, label, classes)
    if signal is None:
        raise OnnxfuseError(_undecided(base))
    if form == "prediction":
        return dataclasses.replace(base, prediction=signal, width=_width(graph, signal) or 1)
    if form == "column":
        if task != "classification" or classes is None or len(classes) != 2 or "classes" in declared:
            return dataclasses.replace(base, prediction=signal, width=1)
        warn(
            f"{base.model}: reads its one-column output '{signal}' as the logit of class {classes[1]!r}; "
            f"if it is a regression prediction, declare --declare {base.index}:prediction={signal}"
        )
        form = "logit"
    found = declared.get("classes", found)
    if "classes" in declared or _is_argmax(graph, label):  # its values are indices, not class labels
        label = None
    role = dataclasses.replace(
        base, task="classification", label=label, probabilities=signal, form=form,
        declared=any(key in declared for key in SIGNALS),
    )  # fmt: skip
    return _with_classes(role, graph, found, task=task, classes=classes)


def _with_classes(role: OutputRole, graph: _Graph, found, *, task: str | None, classes) -> OutputRole:
    width = _width(graph, role.probabilities)
    if role.form in ("positive", "logit"):
        if found is None and task == "classification" and classes is not None and len(classes) == 2:
            found = tuple(classes)
        if found is not None and len(found) != 2:
            raise OnnxfuseError(
                f"{role.model}: one-column output '{role.probabilities}' is P(second class) but {len(found)} "
                f"classes are declared; declare two with --declare {role.index}:classes=NEGATIVE,POSITIVE"
            )
    elif found is None and task == "classification" and width and tuple(classes or ()) == tuple(range(width)):
        found = tuple(classes)
    elif found is not None and width and len(found) != width:
        raise OnnxfuseError(
            f"{role.model}: output '{role.probabilities}' has {width} columns but {len(found)} classes "
            f"({list(found)[:20]}); declare the right list with --declare {role.index}:classes=..."
        )
    role = dataclasses.replace(role, classes=found, width=width or (len(found) if found else None))
    return role if found is not None else role.as_scores()


def _signal(model: NormalizedModel, graph: _Graph, declared: dict, label: str | None, classes):
    """(output, form, classes found in the graph) of the class signal, or (None, None, None)."""
    for key in SIGNALS:
        if key in declared:
            name = declared[key]
            form = key if _width(graph, name) != 1 else ("positive" if key == "probabilities" else "logit")
            return name, form, _classes_behind(graph, label)
    if model.zipmap_classes:
        name, found = next(iter(sorted(model.zipmap_classes.items())))
        return name, "probabilities", found
    behind = _argmax_input(graph, label) if label else None
    candidates = [n for n in graph.outputs if n in graph.varying and elem_type(graph.outputs[n]) in _FLOAT_TYPES]
    matched = [n for n in candidates if behind is not None and _source(graph, n) == behind]
    matrices = [n for n in candidates if rank(graph.outputs[n]) == 2 and _width(graph, n) != 1]
    columns = [n for n in candidates if n not in matrices]
    if matched:
        chosen = matched[0]
    elif len(matrices) > 1:
        chosen = _one_of(graph, matrices, classes)
    else:
        chosen = matrices[0] if matrices else (columns[0] if len(columns) == 1 and len(candidates) == 1 else None)
    if chosen is None:
        return None, None, None
    return chosen, _form(graph, chosen), _classes_behind(graph, label) or _constant_classes(graph)


def _one_of(graph: _Graph, matrices: list[str], classes) -> str | None:
    """Several float matrices (logits and an embedding): the normalized one, else the one as wide as the target."""
    normalized = [n for n in matrices if _producer_op(graph, n) in ("Softmax", "LogSoftmax")]
    if len(normalized) == 1:
        return normalized[0]
    wide = [n for n in matrices if classes is not None and _width(graph, n) == len(classes)]
    return wide[0] if len(wide) == 1 else None


def _producer_op(graph: _Graph, name: str) -> str:
    producer = graph.producers.get(_source(graph, name))
    return "" if producer is None else (f"{ML}:" if producer.domain == ML else "") + producer.op_type


def _form(graph: _Graph, name: str) -> str:
    op = _producer_op(graph, name)
    one = _width(graph, name) == 1 or rank(graph.outputs[name]) == 1
    unknown = rank(graph.outputs[name]) is None  # no declared shape: a classifier's matrix, else a prediction
    if op in _FORM_OF_OP:
        return "positive" if one and op == "Sigmoid" else _FORM_OF_OP[op]
    if op.startswith(f"{ML}:") and op.endswith("Regressor"):
        return "prediction"  # an exported regressor (skl2onnx, CatBoost, LightGBM): never a logit
    classifier = any(n.domain == ML and n.op_type.endswith("Classifier") for n in graph.producers.values())
    if classifier or "prob" in name.lower():
        return "positive" if one else "probabilities"
    return "column" if one or unknown else "logits"


def _read_graph(graph: onnx.GraphProto) -> _Graph:
    constants = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    varying = {i.name for i in graph.input if i.name not in constants}
    for node in graph.node:  # nodes are topologically sorted (the checker requires it)
        if any(name in varying for name in node.input) or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
        ):
            varying.update(node.output)
    producers = {out: node for node in graph.node for out in node.output}
    return _Graph({o.name: o for o in graph.output}, producers, constants, frozenset(varying))


def _declarations(model: NormalizedModel, graph: _Graph) -> dict:
    spec = model.source.spec
    declared = {key: getattr(spec, key, None) for key in DECLARATIONS}
    declared = {key: value for key, value in declared.items() if value is not None}
    for key, name in declared.items():
        if key != "classes" and name not in graph.outputs:
            raise OnnxfuseError(
                f"{model.source.label}: declares {key}={name} but has no output '{name}' "
                f"(its outputs: {_listing(graph)})"
            )
    if "classes" in declared:
        declared["classes"] = tuple(declared["classes"])
    return declared


def _the_label(graph: _Graph) -> str | None:
    labels = [
        n for n, o in graph.outputs.items()
        if n in graph.varying and elem_type(o) in _LABEL_TYPES and rank(o) in (1, None)
    ]  # fmt: skip
    return labels[0] if len(labels) == 1 else None


def _source(graph: _Graph, name: str) -> str:
    """Walk back through ops that do not change values."""
    for _ in range(len(graph.producers) + 1):
        node = graph.producers.get(name)
        if node is None or node.op_type not in _PASS_THROUGH:
            return name
        name = node.input[0]
    return name


def _argmax_node(graph: _Graph, label: str | None) -> onnx.NodeProto | None:
    """The ArgMax a label is computed by, directly or as the index into a class constant."""
    if label is None:
        return None
    node = graph.producers.get(_source(graph, label))
    gathered = node is not None and node.op_type in ("Gather", "GatherND", "ArrayFeatureExtractor")
    if gathered and node.input[0] in graph.constants:
        node = graph.producers.get(_source(graph, node.input[1]))
    return node if node is not None and node.op_type == "ArgMax" else None


def _argmax_input(graph: _Graph, label: str) -> str | None:
    node = _argmax_node(graph, label)
    return _source(graph, node.input[0]) if node is not None else None


def _is_argmax(graph: _Graph, label: str | None) -> bool:
    node = graph.producers.get(_source(graph, label)) if label else None
    return node is not None and node.op_type == "ArgMax"


def _indices(graph: _Graph, signal: str) -> tuple[int, ...] | None:
    width = _width(graph, signal)
    return tuple(range(width)) if width else None


def _classes_behind(graph: _Graph, label: str | None) -> Classes | None:
    """The class list a label is taken from: an ML classifier, a gathered constant, or ArgMax's `0..C-1`."""
    if label is None:
        return None
    node = graph.producers.get(_source(graph, label))
    if node is None:
        return None
    if node.domain == ML and node.op_type.endswith("Classifier"):
        return _classes_from_attrs(node)
    if node.op_type in ("ArrayFeatureExtractor", "Gather", "GatherND") and node.input[0] in graph.constants:
        return _values(graph.constants[node.input[0]])
    if node.op_type == "ArgMax":
        signal = next((n for n in graph.outputs if _source(graph, n) == _source(graph, node.input[0])), None)
        return _indices(graph, signal) if signal else None
    return None


def _constant_classes(graph: _Graph) -> Classes | None:
    """An output that is a constant list (skl2onnx `output_class_labels=True`)."""
    lists = [
        _values(graph.constants[_source(graph, n)])
        for n, o in graph.outputs.items()
        if n not in graph.varying and elem_type(o) in _LABEL_TYPES and _source(graph, n) in graph.constants
    ]
    return lists[0] if len(lists) == 1 else None


def _values(tensor: onnx.TensorProto) -> Classes | None:
    """A constant's values as a class list; None when the tensor's data does not match its dims (a broken file)."""
    try:
        values = numpy_helper.to_array(tensor).ravel().tolist()
    except ValueError:
        return None
    return tuple(v.decode() if isinstance(v, bytes) else v for v in values)


def _classes_from_attrs(node: onnx.NodeProto) -> Classes | None:
    for attr in node.attribute:
        if attr.name in _CLASS_ATTRS:
            values = helper.get_attribute_value(attr)
            return tuple(v.decode() if isinstance(v, bytes) else int(v) for v in values)
    return None


def _width(graph: _Graph, name: str) -> int | None:
    value = graph.outputs[name]
    if rank(value) == 1:
        return 1
    dims = value.type.tensor_type.shape.dim
    return dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None


def _listing(graph: _Graph) -> str:
    return ", ".join(f"{n} {_shape_text(o)}" for n, o in graph.outputs.items())


def _shape_text(value: onnx.ValueInfoProto) -> str:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return "[?]"
    dims = value.type.tensor_type.shape.dim
    return "[" + ",".join(str(d.dim_value) if d.HasField("dim_value") else "N" for d in dims) + "]"


def _undecided(role: OutputRole) -> str:
    i = role.index
    return (
        f"{role.model}: outputs {role.outputs} do not say which one carries the prediction; declare it with "
        f"--declare {i}:logits=NAME (or probabilities=, log_probabilities=, prediction=; "
        f'logits = "NAME" in its [[model]] table)'
    )


def distribution_problem(values: np.ndarray) -> str | None:
    """Why `[N, C]` values are not probabilities (rows in [0, 1] summing to 1), or None."""
    x = np.asarray(values, dtype=np.float64)
    if not x.size:  # no finite row to judge
        return None
    x = x.reshape(len(x), -1)
    sums = x.sum(axis=1)
    worst = round(float(sums[np.argmax(np.abs(sums - 1))]), 3) + 0.0  # no "-0"
    low, high = float(x.min()), float(x.max())
    if low >= -PROBABILITY_ATOL and high <= 1 + PROBABILITY_ATOL and abs(worst - 1) <= ROW_SUM_ATOL:
        return None
    extreme = f"values down to {low:.3g}" if low < -PROBABILITY_ATOL else f"values up to {high:.3g}"
    return f"rows sum to {worst:.3g}, {extreme}"


def scores_refusal(role: OutputRole, problem: str, method: str) -> str:
    """The refusal for a `probabilities` output that holds scores under mean/vote/gate."""
    return (
        f"{role.model}: output '{role.probabilities}' holds scores, not probabilities ({problem}) — exported "
        f"with raw_scores?; use --fusion stack, or declare --declare {role.index}:logits={role.probabilities} "
        f"if they are logits (--fusion {method} averages probabilities)"
    )


def looks_like_classifier(model: NormalizedModel) -> bool:
    """Before the target is known: does the source output a label, a class matrix or a Sigmoid column?"""
    graph = _read_graph(model.proto.graph)
    if model.zipmap_classes or _the_label(graph) is not None:
        return True
    floats = [n for n in graph.outputs if n in graph.varying and elem_type(graph.outputs[n]) in _FLOAT_TYPES]
    return any(_form(graph, n) not in ("column", "prediction") for n in floats)
