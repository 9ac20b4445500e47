"""What every fusion head is: a `Fusion` (the table's entry) that fits a `Head` (what goes into the file).

A head module holds all a head does: which sources it can combine, how it fits
on the signals (numpy), how the fitted head predicts in numpy (the hold-out
report) and the subgraph that computes the same in the file. The rest of the
compiler reads the head through these two classes only.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
import onnx_ir as ir

from onnxfuse.errors import OnnxfuseError
from onnxfuse.roles import OutputRole
from onnxfuse.signals import Signals
from onnxfuse.support import FEATURES, add_constant, add_node, reduce_sum

if TYPE_CHECKING:
    from onnxfuse.normalize import Versions
    from onnxfuse.spec import FuseSpec

KINDS = {"classification": "classifier", "regression": "regressor", "scores": "model of unlabeled scores"}


@dataclasses.dataclass(frozen=True)
class LabelSpace:
    """The task and, for classification, the classes the fused file predicts."""

    task: str
    classes: tuple | None = None


@dataclasses.dataclass(frozen=True)
class HeadInputs:
    """What a head's subgraph reads: each source's signal, which sources are available on each row (bool
    `[N, M]`; None: the head is built without availability handling) and the packed features as float32 (None
    where the head reads none). `--explain` hands a head these tiled (the rows again with sources masked)."""

    signals: Sequence[ir.Value]
    available: ir.Value | None = None
    features: ir.Value | None = None


class Head(Protocol):
    """A fitted head."""

    @property
    def uses_features(self) -> bool:
        """Does it read the packed `features` (besides the sources' signals)?"""

    def predict(self, signals: Signals, features: np.ndarray | None) -> np.ndarray:
        """Probabilities `[N, C]` or predictions `[N]`, as the file computes them."""

    def build(self, model: ir.Model, inputs: HeadInputs, space: LabelSpace, versions: Versions) -> dict:
        """Append the head to `model`'s graph (in place) on `inputs`: returns `{"probabilities": v}` or
        `{"prediction": v}`, and `"weights"` (`[N, M]`, per row) for a mixture."""

    def refit(self, signals: Signals, features: np.ndarray | None, target: np.ndarray, space: LabelSpace) -> Head:
        """The same head (family, chosen settings) fitted on other rows: the training part's choice, on all rows."""

    def metadata(self) -> dict:
        """What `onnxfuse.fusion` says of the fitted head, beside its method."""


class Fusion:
    """One fusion method, as `--fusion NAME` chooses it."""

    name: ClassVar[str]
    trains: ClassVar[bool]  # needs --data and --target
    votes: ClassVar[bool] = False  # reads each source's one-hot label instead of its probabilities
    reads_scores: ClassVar[bool] = False  # reads raw score columns (a classifier output that is no distribution)
    options: ClassVar[tuple[str, ...]] = ()  # the FuseSpec fields it reads, named in its report and metadata

    def check_sources(self, roles: Sequence[OutputRole], task: str) -> None:
        """By default a head mixes like with like: every source must predict the target's task."""
        for role in roles:
            if role.task == "scores" and task == "classification":
                raise OnnxfuseError(
                    unlabeled_scores(role, f"--fusion {self.name} needs probabilities over known classes")
                )
            if role.task != task:
                logit = f", or --declare {role.index}:logits={role.prediction} if it is a logit"
                raise OnnxfuseError(
                    f"{role.model} is a {KINDS[role.task]} but the target is {task}; --fusion {self.name} mixes like "
                    f"with like (use --fusion stack{logit if role.prediction else ''})"
                )

    def needs_features(self, spec: FuseSpec) -> bool:
        return False

    def fit(
        self, signals: Signals, features: np.ndarray | None, target: np.ndarray, space: LabelSpace, spec: FuseSpec
    ) -> Head:
        raise NotImplementedError

    def refit(self, head: Head, signals: Signals, features, target: np.ndarray, space: LabelSpace, spec) -> Head:
        """Fit on all rows after the hold-out report; by default the head is fitted afresh."""
        return self.fit(signals, features, target, space, spec)

    def untrained(self, count: int, space: LabelSpace) -> Head:
        """The head without data: only for fusions that do not train."""
        raise NotImplementedError

    def baseline_family(self, spec: FuseSpec) -> str:
        """The scikit-learn family of the from-scratch baseline the hold-out report compares with."""
        return "linear"


def unlabeled_scores(role: OutputRole, why: str) -> str:
    return (
        f"{role.model}: output '{role.prediction}' holds unlabeled scores (outputs {role.outputs}); {why}: "
        f"declare them with --declare {role.index}:classes=A,B,... (or classes = [...] in its [[model]] table), "
        "or use --fusion stack with --data and --target"
    )


def learner_target(target: np.ndarray, space: LabelSpace) -> np.ndarray:
    """What heads fit on: class indices for classification, the target as float64 for regression."""
    if space.task == "classification":
        return class_indices(target, space.classes)
    return np.asarray(target, dtype=np.float64)


def target_prior(y: np.ndarray, space: LabelSpace) -> np.ndarray:
    """What a row no source speaks for gets: the class frequencies of `y` (class indices), or its mean."""
    if space.task == "classification":
        counts = np.bincount(y, minlength=len(space.classes))
        return (counts / max(len(y), 1)).astype(np.float32)
    return np.array([np.mean(y) if len(y) else 0.0], dtype=np.float32)


def untrained_prior(space: LabelSpace) -> np.ndarray:
    """Without data: every class alike, or 0."""
    if space.task == "classification":
        return np.full(len(space.classes), 1 / len(space.classes), dtype=np.float32)
    return np.zeros(1, dtype=np.float32)


def with_prior(output: np.ndarray, available: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """`output` (`[N, C]` or `[N]`) with the prior on rows where no source is available."""
    none = ~available.any(axis=1)
    if not none.any():
        return output
    output = np.array(output, dtype=np.float64)
    output[none] = prior if output.ndim == 2 else prior[0]
    return output


def graph_with_prior(graph: ir.Graph, output: ir.Value, available: ir.Value, prior: np.ndarray, name: str) -> ir.Value:
    """`with_prior` in the graph: `output` (`[N, C]`, or `[N]` for one prior value) where any source is available."""
    count = add_node(graph, "Cast", [available], {"to": ir.DataType.FLOAT}, f"{name}/available_float")
    keep = len(prior) > 1
    total = reduce_sum(graph, count, [1], keepdims=keep, name=f"{name}/available_count")
    zero = add_constant(graph, f"{name}/zero", np.array(0.0, dtype=np.float32))
    spoken = add_node(graph, "Greater", [total, zero], {}, f"{name}/any_available")
    shaped = prior.reshape(1, -1) if keep else prior.reshape(())
    return add_node(graph, "Where", [spoken, output, add_constant(graph, f"{name}/prior", shaped)], {}, f"{name}/out")


def class_indices(target: np.ndarray, classes: Sequence) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[v] for v in target.tolist()], dtype=np.int64)


_FIT_COLUMNS = 4  # Standardizer.fit's float64 block


@dataclasses.dataclass(frozen=True)
class Standardizer:
    """Column means and scales of the rows a head is fitted on, in float64; NaN is read as the column mean.

    Every head reads its inputs standardised: a learner fitted on income (~5e4) beside
    log-odds (~1) converges badly in float32 and regularises the columns unevenly.
    The file computes the same (`standardized`), in float32.
    """

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        """Column by column block: a float64 copy of a few columns at a time, not of the whole matrix (a fit
        sample of a million rows would hold several); each column's sums are the same either way."""
        if not len(x):
            return cls(np.zeros(x.shape[1]), np.ones(x.shape[1]))
        means, scales = [], []
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: mean 0, scale 1
            for start in range(0, x.shape[1], _FIT_COLUMNS):
                block = np.array(x[:, start : start + _FIT_COLUMNS], dtype=np.float64)
                means.append(np.nan_to_num(np.nanmean(block, axis=0)))
                scales.append(np.nan_to_num(np.nanstd(block, axis=0)))
        scale = np.concatenate(scales)
        return cls(np.concatenate(means), np.where(scale > 0, scale, 1.0))

    def standardize(self, x: np.ndarray, *, in_place: bool = False) -> np.ndarray:
        """A float64 copy (or, `in_place`, `x` itself when float64) imputed, centred and scaled a few columns at a
        time (the same bits as the graph's Where-Sub-Div, with no full-size temporaries)."""
        out = x if in_place and x.dtype == np.float64 else np.array(x, dtype=np.float64)
        for start in range(0, out.shape[1], _FIT_COLUMNS):
            block, columns = out[:, start : start + _FIT_COLUMNS], slice(start, start + _FIT_COLUMNS)
            missing = np.isnan(block)
            if missing.any():
                np.copyto(block, np.broadcast_to(self.mean[columns], block.shape), where=missing)
            block -= self.mean[columns]
            block /= self.scale[columns]
        return out


def standardized(graph: ir.Graph, value: ir.Value, standardizer: Standardizer, name: str) -> ir.Value:
    """`value` (float `[N, F]`) as `Standardizer.standardize` computes it: NaN as the mean, then centred and scaled."""
    mean = add_constant(graph, f"{name}/means", standardizer.mean.astype(np.float32).reshape(1, -1))
    scale = add_constant(graph, f"{name}/scales", standardizer.scale.astype(np.float32).reshape(1, -1))
    missing = add_node(graph, "IsNaN", [value], {}, f"{name}/missing")
    imputed = add_node(graph, "Where", [missing, mean, value], {}, f"{name}/imputed")
    centred = add_node(graph, "Sub", [imputed, mean], {}, f"{name}/centred")
    return add_node(graph, "Div", [centred, scale], {}, f"{name}/standardized")


def float_features(graph: ir.Graph) -> ir.Value:
    """The packed `features` input as float32 (heads compute in float32, as their converted learners do)."""
    features = next(v for v in graph.inputs if v.name == FEATURES)
    if features.dtype != ir.DataType.FLOAT:
        features = add_node(graph, "Cast", [features], {"to": ir.DataType.FLOAT}, "features_float")
    return features
