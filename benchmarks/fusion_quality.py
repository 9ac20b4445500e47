"""Fusion quality on real tables: every head next to its sources and the models a user could make instead.

Each data set (benchmarks/real_data.py: scikit-learn's breast_cancer, digits, wine and diabetes
on their natural scales, a synthetic table of incomes, scores and epoch seconds, and the
original N(0, 1) interaction task) is split per repetition seed r into rows for source A, rows
for source B (disjoint), and joint rows; 30 % of the joint rows are an external test set the
merge never sees, the rest are the merge's `--data`. Each source is an ordinary estimator
trained on its own rows and columns and exported to ONNX. Each head is fitted by
`onnxfuse.pipeline.merge` and the fused file is run with onnxruntime on the test rows, next to:
each source alone, a hand-made stack (StandardScaler + LogisticRegression on the sources'
probabilities, or RidgeCV on their predictions, fitted on the merge rows), the better of
logistic/ridge and HistGradientBoosting trained from scratch on the merge rows, and the same
trained on all non-test rows (the upper bound). Figures are means over the repetitions, `±` the
standard deviation across them. Output: markdown tables, then the goals with PASS/FAIL.

Missing feature groups (issue 12; `--no-missing` skips it): every head is also run on the test rows
in each availability pattern, "only A" (B's columns NaN), "only B" (A's columns NaN) and "all",
next to A alone and B alone (each source's own file on its own columns, which the blanking does
not touch) and, for "all", the same head merged with `FuseSpec(availability=False)` (the head as
before availability handling: no masks, no source dropout; one more merge per head). Goals,
PASS/MISS on the means over the repetitions: only A: fused >= A alone - 0.005; only B: fused >=
B alone - 0.005; all: fused >= the head without availability - 0.005 (accuracy and ROC AUC, or
R²). `--missing F` also blanks, seeded, F of the merge rows' A columns and another F of their B
columns in the merge's `--data` (training with missing groups; the hand stack and the
from-scratch models still see the complete rows).

    python benchmarks/fusion_quality.py                       # every data set and head, 3 repetitions
    python benchmarks/fusion_quality.py --reps 1 --datasets wine,diabetes --heads default,gate
    python benchmarks/fusion_quality.py --reps 1 --datasets wine --missing 0.2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import real_data
from real_data import DATASETS, DataSet, Rows, Source

from onnxfuse.errors import OnnxfuseError
from onnxfuse.heads import METAS
from onnxfuse.pipeline import FuseResult, merge
from onnxfuse.spec import FuseSpec, ModelSpec

SOURCE_SLACK = 0.005  # goal: the default head is at most this far below the better source
STACK_SLACK = 0.01  # ... and this far below the hand-made stack
HEAD_SLACK = 0.03  # no head further than this below the better source
MISSING_SLACK = 0.005  # missing groups: fused at most this below the source alone / the head without availability
MISSING_METRICS = {"classification": ("accuracy", "roc_auc"), "regression": ("r2",)}
PATTERNS = ("only A", "only B", "all")
NO_AVAILABILITY = "without availability"  # the label suffix of the head merged with availability=False
METRICS = {
    "classification": (("accuracy", "accuracy", True), ("log_loss", "log loss", False), ("roc_auc", "ROC AUC", True)),
    "regression": (("r2", "R²", True), ("rmse", "RMSE", False)),
}


@dataclasses.dataclass(frozen=True)
class Head:
    """One row of heads: its `--heads` key, its table label and the FuseSpec options it sets."""

    key: str
    label: str
    options: dict


@dataclasses.dataclass
class Row:
    """One model's figures over the repetitions, and why a repetition has none."""

    label: str
    runs: list[dict] = dataclasses.field(default_factory=list)  # per repetition: metric -> value
    seconds: list[float] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def mean(self, metric: str) -> float:
        values = [run[metric] for run in self.runs if not np.isnan(run[metric])]
        return statistics.fmean(values) if values else float("nan")


def heads(task: str) -> list[Head]:
    """The default (no fusion or meta given), then stack with every family of METAS without and with
    passthrough (the default's own family without passthrough is the default row), gate, mean, and
    vote for classification."""
    defaults = {f.name: f.default for f in dataclasses.fields(FuseSpec)}
    found = [Head("default", f"default ({defaults['fusion']} {defaults['meta']})", {})]
    for meta in METAS:
        if not (defaults["fusion"] == "stack" and meta == defaults["meta"]):
            found.append(Head(meta, f"stack {meta}", {"fusion": "stack", "meta": meta}))
        found.append(Head(f"{meta}+pt", f"stack {meta} + passthrough", {"fusion": "stack", "meta": meta,
                                                                         "passthrough": True}))  # fmt: skip
    found += [Head("gate", "gate", {"fusion": "gate"}), Head("mean", "mean (fitted weights)", {"fusion": "mean"})]
    if task == "classification":
        found.append(Head("vote", "vote (fitted weights)", {"fusion": "vote"}))
    return found


# ---- metrics ----


def scores(task: str, y: np.ndarray, values: np.ndarray, label: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy, log loss and ROC AUC (macro one-vs-rest for several classes) of probabilities `values`
    [N, C] over the classes 0..C-1 (the label: `label`, else the argmax); R² and RMSE of predictions."""
    from sklearn.metrics import log_loss, r2_score, roc_auc_score

    if task == "regression":
        return {"r2": r2_score(y, values), "rmse": float(np.sqrt(np.mean((y - values) ** 2)))}
    proba = np.clip(values, 1e-15, None)
    proba = proba / proba.sum(axis=1, keepdims=True)
    classes = np.arange(proba.shape[1])
    label = classes[proba.argmax(axis=1)] if label is None else label
    # ROC AUC ranks the rows: on probabilities rounded to 6 decimals, so float32 rounding (1e-8) between two builds
    # of one head does not reorder tied values (a vote's shares are tied on most rows: 0.95 vs 0.98 from 6e-8)
    ranked = np.round(proba, 6)
    try:
        auc = roc_auc_score(y, ranked[:, 1]) if len(classes) == 2 else roc_auc_score(
            y, ranked, multi_class="ovr", average="macro", labels=classes)  # fmt: skip
    except ValueError:  # a class missing from the test rows
        auc = float("nan")
    return {"accuracy": float(np.mean(label == y)), "log_loss": log_loss(y, proba, labels=classes), "roc_auc": auc}


def predicted(model, task: str, x: np.ndarray) -> np.ndarray:
    return model.predict(x) if task == "regression" else model.predict_proba(x)


# ---- the comparison models ----


def stack_inputs(task: str, outputs: Sequence[np.ndarray]) -> np.ndarray:
    """The hand stack reads P(positive) of a binary source, every probability of a multi-class one,
    the prediction of a regressor."""
    columns = [o[:, 1:] if o.ndim == 2 and o.shape[1] == 2 else o.reshape(len(o), -1) for o in outputs]
    return np.hstack(columns)


def hand_stack(task: str):
    """What a user would fit on the sources' outputs by hand."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    last = RidgeCV(alphas=np.logspace(-3, 3, 13)) if task == "regression" else LogisticRegression(max_iter=5000)
    return make_pipeline(StandardScaler(), last)


def from_scratch(task: str, seed: int) -> dict[str, object]:
    """The two models trained on raw features: a scaled linear one with a cross-validated penalty, and
    HistGradientBoosting."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task == "regression":
        return {
            "ridge": make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))),
            "HGB": HistGradientBoostingRegressor(random_state=seed),
        }
    return {
        "logistic": make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=8, max_iter=5000)),
        "HGB": HistGradientBoostingClassifier(random_state=seed),
    }


# ---- one repetition ----


def fused_outputs(path: Path, frame: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the fused file on `frame`: `features` packed in the order of its `onnxfuse.features`; the
    probabilities reordered to classes 0..C-1 by `onnxfuse.classes`, with its `label`; or `prediction`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    features = json.loads(metadata["onnxfuse.features"])
    given = next(i for i in session.get_inputs() if i.name == "features")
    dtype = np.float64 if given.type == "tensor(double)" else np.float32
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {"features": frame[features].to_numpy(dtype)})))
    if task == "regression":
        return np.asarray(out["prediction"], dtype=np.float64).reshape(len(frame)), None
    classes = json.loads(metadata["onnxfuse.classes"])
    proba = np.zeros_like(out["probabilities"], dtype=np.float64)
    proba[:, np.asarray(classes, dtype=np.int64)] = out["probabilities"]
    return proba, np.asarray(out["label"]).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Options:
    """What the command line asks of every repetition beyond the heads."""

    missing: float = 0.0  # share of the merge rows whose A columns are blanked (and another share: B's)
    patterns: bool = True  # the missing-group table: test rows per availability pattern, heads without availability


@dataclasses.dataclass
class Missing:
    """The missing-group figures of one data set over the repetitions."""

    rows: dict[str, Row] = dataclasses.field(default_factory=dict)  # "head label|pattern" -> scores
    trained: dict[str, list[dict]] = dataclasses.field(default_factory=dict)  # head label -> per rep `rows` report


def repetition(data: DataSet, frame: pd.DataFrame, y: np.ndarray, rep: int, chosen: Sequence[Head],
               rows: dict[str, Row], folder: Path, caught: dict[str, list], options: Options,
               missing: Missing) -> Rows:  # fmt: skip
    """Split, train and export the sources, fit the comparison models, merge every head and score all of
    them on the external test rows; each result is appended to its row in `rows` (the missing-group
    figures to `missing`)."""
    task = data.task
    split = real_data.split(y, rep, stratify=task == "classification")
    x = frame.to_numpy(np.float64)
    test_y = y[split.test]
    sources = data.sources(list(frame.columns))
    paths, merge_out, test_out = [], [], []
    for letter, source, own in zip("ab", sources, (split.a, split.b)):
        where = [frame.columns.get_loc(c) for c in source.columns]
        path = real_data.write_source(source, x[own][:, where], y[own], rep, folder / f"{letter}.onnx")
        paths.append(path)
        merge_out.append(real_data.source_outputs(path, x[split.merge][:, where], task, source.form))
        test_out.append(real_data.source_outputs(path, x[split.test][:, where], task, source.form))
        _add(rows, f"source {source.label}", scores(task, test_y, test_out[-1]))
    stack = hand_stack(task).fit(stack_inputs(task, merge_out), y[split.merge])
    label = "hand stack (scaled ridge)" if task == "regression" else "hand stack (scaled logistic)"
    _add(rows, label, scores(task, test_y, predicted(stack, task, stack_inputs(task, test_out))))
    everything = np.concatenate([split.a, split.b, split.merge])
    for title, train in (("from scratch on merge rows", split.merge), ("all features, all non-test rows", everything)):
        for name, model in from_scratch(task, rep).items():
            with warnings.catch_warnings():  # scikit-learn's notices of changing defaults, not findings
                warnings.simplefilter("ignore", FutureWarning)
                model.fit(x[train], y[train])
            _add(rows, f"{title}|{name}", scores(task, test_y, predicted(model, task, x[split.test])))
    data_path = folder / "joint.parquet"
    merge_frame = blank_groups(frame.iloc[split.merge], [s.columns for s in sources], options.missing, rep)
    merge_frame.assign(y=y[split.merge]).to_parquet(data_path, index=False)
    frames = pattern_frames(frame.iloc[split.test], sources)
    for head in chosen:
        row = rows.setdefault(head.label, Row(head.label))
        fitted = _merge_head(head, sources, paths, data_path, rep, row, folder, caught)
        if fitted is not None:
            output, result = fitted
            for pattern, test_frame in frames.items() if options.patterns else [("all", frames["all"])]:
                target = row if pattern == "all" else missing.rows.setdefault(f"{head.label}|{pattern}", Row(pattern))
                _score(target, task, test_y, *fused_outputs(output, test_frame, task))
            missing.trained.setdefault(head.label, []).append(result.fusion.get("holdout", {}).get("rows", {}))
            output.unlink()
        if not options.patterns:
            continue
        plain_label = f"{head.label} {NO_AVAILABILITY}"
        plain = rows.setdefault(plain_label, Row(plain_label))
        fitted = _merge_head(head, sources, paths, data_path, rep, plain, folder, caught, availability=False)
        if fitted is not None:
            output, result = fitted
            for pattern, test_frame in frames.items():
                target = missing.rows.setdefault(f"{plain_label}|{pattern}", Row(pattern))
                _score(target, task, test_y, *fused_outputs(output, test_frame, task))
            missing.trained.setdefault(plain_label, []).append(result.fusion.get("holdout", {}).get("rows", {}))
            output.unlink()
    return split


def blank_groups(frame: pd.DataFrame, groups: Sequence[Sequence[str]], share: float, seed: int) -> pd.DataFrame:
    """`frame` with, seeded, `share` of its rows' first group set to NaN and another (disjoint) `share`'s second."""
    if share <= 0:
        return frame
    rng = np.random.default_rng(seed * 1000 + 12)
    order = rng.permutation(len(frame))
    count = round(share * len(frame))
    blanked = frame.copy()
    for i, group in enumerate(groups):
        blanked.iloc[order[i * count : (i + 1) * count], [frame.columns.get_loc(c) for c in group]] = np.nan
    return blanked


def pattern_frames(test: pd.DataFrame, sources: Sequence[Source]) -> dict[str, pd.DataFrame]:
    """The test rows in each availability pattern: only A (B's columns NaN), only B (A's NaN), all."""
    found = {}
    for pattern, blank in (("only A", sources[1]), ("only B", sources[0])):
        frame = test.copy()
        frame.loc[:, list(blank.columns)] = np.nan
        found[pattern] = frame
    return {**found, "all": test}


def _score(row: Row, task: str, y: np.ndarray, values: np.ndarray, label: np.ndarray | None) -> None:
    """The scores of one repetition, or, when some output is not finite, the share of such rows as an error."""
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        row.errors.append(f"non-finite output on {bad.mean():.0%} of the rows")
    else:
        row.runs.append(scores(task, y, values, label))


def _merge_head(head: Head, sources: Sequence[Source], paths: Sequence[Path], data_path: Path, rep: int, row: Row,
                folder: Path, caught: dict[str, list], *,
                availability: bool = True) -> tuple[Path, FuseResult] | None:  # fmt: skip
    """One head's merge: the fused file and the merge's result, or None when refused (the row's note);
    warnings are collected. `availability=False`: the same head without availability handling."""
    output = folder / f"fused_{head.key}{'' if availability else '_plain'}.onnx"
    extra = {} if availability else {"availability": False}
    spec = FuseSpec(
        models=tuple(ModelSpec(path, s.columns) for path, s in zip(paths, sources)),
        output=output, data=data_path, target="y", seed=rep, **head.options, **extra,
    )  # fmt: skip
    start = time.perf_counter()
    key = head.key if availability else f"{head.key} {NO_AVAILABILITY}"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            result = merge(spec)
        except OnnxfuseError as exc:
            row.errors.append(f"refused: {_one_line(exc)}")
            return None
        except Exception as exc:  # an internal failure: report it, go on with the other heads
            row.errors.append(f"failed ({type(exc).__name__}): {_one_line(exc)}")
            return None
        finally:
            row.seconds.append(time.perf_counter() - start)
            for w in seen:
                _catch(caught, f"{w.category.__name__}: {_one_line(w.message)}", key)
    if "chosen" in result.fusion:
        row.notes.append(str(result.fusion["chosen"]))
    return output, result


def _catch(caught: dict[str, list], message: str, key: str) -> None:
    """Collect a warning once per wording (its numbers aside): the first text, how often, which heads."""
    entry = caught.setdefault(re.sub(r"\d+(\.\d+)?", "#", message), [message, 0, set()])
    entry[1] += 1
    entry[2].add(key)


def _add(rows: dict[str, Row], label: str, values: dict[str, float]) -> None:
    rows.setdefault(label, Row(label)).runs.append(values)


def _one_line(exc: object, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- tables ----


def primary(task: str) -> str:
    return METRICS[task][0][0]


def better_of(rows: dict[str, Row], title: str, task: str) -> Row:
    """The better of the two raw-feature models under `title` by the mean primary metric, named, with
    the other's figure as its note."""
    pair = [row for key, row in rows.items() if key.startswith(f"{title}|")]
    metric = primary(task)
    best, other = sorted(pair, key=lambda r: -r.mean(metric))
    name, other_name = best.label.split("|")[1], other.label.split("|")[1]
    return Row(f"{title} ({name})", best.runs, notes=[f"{other_name}: {other.mean(metric):.4f}"])


def cell(row: Row, metric: str) -> str:
    values = [run[metric] for run in row.runs if not np.isnan(run[metric])]
    if not values:
        return ""
    spread = f" ±{statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.4f}{spread}"


def note(row: Row, reps: int) -> str:
    parts = []
    if row.errors:
        distinct = list(dict.fromkeys(row.errors))
        prefix = "" if len(row.errors) == reps else f"{len(row.errors)} of {reps} reps: "
        parts.append(prefix + "; ".join(distinct))
    if row.notes:
        parts.append("chose: " + ", ".join(row.notes) if not row.label.startswith(("from", "all")) else row.notes[0])
    return " / ".join(parts).replace("|", "/")


def table(task: str, ordered: Sequence[Row], reps: int) -> list[str]:
    metrics = METRICS[task]
    lines = ["| model | " + " | ".join(name for _, name, _ in metrics) + " | merge s | note |"]
    lines.append("|---|" + "---:|" * (len(metrics) + 1) + "---|")
    for row in ordered:
        seconds = f"{statistics.fmean(row.seconds):.1f}" if row.seconds else ""
        lines.append(f"| {row.label} | " + " | ".join(cell(row, key) for key, _, _ in metrics)
                     + f" | {seconds} | {note(row, reps)} |")  # fmt: skip
    return lines


@dataclasses.dataclass(frozen=True)
class Goals:
    """One data set's line of the summary."""

    name: str
    metric: str
    best_source: float
    default: float
    default_auc: float
    hand: float
    all_features: float
    far_below: list[str]
    missing: str  # "" or why the default has no figure: "refused" (or failed), "not run" (--heads)
    lost: int  # repetitions in which the default was refused or failed: any is a FAIL of its goals

    @property
    def figure(self) -> str:
        """The default's figure, or why it has none; a mean over fewer repetitions says how many were lost."""
        lost = f" ({self.lost} rep{'s' if self.lost > 1 else ''} failed)" if self.lost else ""
        return (self.missing or f"{self.default:.4f}") + lost

    def cells(self) -> list[str]:
        def delta(value: float) -> str:
            return f"{self.default - value:+.4f}"

        source_ok = not self.missing and not self.lost and self.default >= self.best_source - SOURCE_SLACK
        hand_ok = not self.missing and not self.lost and self.default >= self.hand - STACK_SLACK
        auc = "" if np.isnan(self.default_auc) else f"{self.default_auc:.4f}"
        return [
            self.name,
            self.metric,
            f"{self.best_source:.4f}",
            self.figure,
            auc,
            f"{delta(self.best_source)} {'PASS' if source_ok else 'FAIL'}",
            f"{self.hand:.4f}",
            f"{delta(self.hand)} {'PASS' if hand_ok else 'FAIL'}",
            "PASS" if not self.far_below else "FAIL: " + ", ".join(self.far_below),
            f"{self.all_features:.4f}",
            delta(self.all_features),
        ]


def goals(data: DataSet, rows: dict[str, Row], chosen: Sequence[Head], hand_label: str) -> Goals:
    """The goals on the mean primary metric: default vs the better source and the hand stack, the heads
    more than HEAD_SLACK below the better source or refused/failed in any repetition (a mean over the
    repetitions left would hide it), and the default's distance to the all-features model."""
    metric = primary(data.task)
    best_source = max(row.mean(metric) for key, row in rows.items() if key.startswith("source "))
    default = rows[chosen[0].label] if chosen[0].key == "default" else None
    value = default.mean(metric) if default is not None else float("nan")
    auc = default.mean("roc_auc") if default is not None and data.task == "classification" else float("nan")
    far = []
    for head in chosen:
        row = rows[head.label]
        mean = row.mean(metric)
        if row.errors:
            far.append(f"{head.key} ({len(row.errors)} of {len(row.errors) + len(row.runs)} reps failed)")
        elif mean < best_source - HEAD_SLACK:
            far.append(f"{head.key} ({mean - best_source:+.3f})")
    return Goals(
        data.name, metric, best_source, value, auc, rows[hand_label].mean(metric),
        better_of(rows, "all features, all non-test rows", data.task).mean(metric), far,
        "not run" if default is None else "refused or failed" if np.isnan(value) else "",
        len(default.errors) if default is not None and not np.isnan(value) else 0,
    )  # fmt: skip


# ---- missing feature groups ----

METRIC_NAMES = {key: name for task in METRICS.values() for key, name, _ in task}


def _reference(pattern: str, head: Head, sources: Sequence[str], rows: dict[str, Row], missing: Missing) -> Row:
    """What the fused head is held to in `pattern`: A alone, B alone, or the same head without availability."""
    if pattern == "all":
        return missing.rows.get(f"{head.label} {NO_AVAILABILITY}|all", Row("all"))
    return rows[sources[PATTERNS.index(pattern)]]


def _fused(pattern: str, head: Head, rows: dict[str, Row], missing: Missing) -> Row:
    return rows[head.label] if pattern == "all" else missing.rows.get(f"{head.label}|{pattern}", Row(pattern))


def _mcell(row: Row, metric: str, reps: int) -> str:
    """A mean ±sd, and why some repetitions have none (a refusal, non-finite outputs)."""
    text = cell(row, metric)
    if row.errors:
        prefix = "" if len(row.errors) == reps else f"{len(row.errors)} of {reps} reps: "
        text = (text + " " if text else "") + f"({prefix}{'; '.join(dict.fromkeys(row.errors))})".replace("|", "/")
    return text


def _delta(fused: Row, reference: Row, metric: str) -> float:
    if fused.errors or reference.errors or not fused.runs or not reference.runs:
        return float("nan")
    return fused.mean(metric) - reference.mean(metric)


def missing_tables(task: str, chosen: Sequence[Head], sources: Sequence[str], rows: dict[str, Row],
                   missing: Missing, reps: int) -> list[str]:  # fmt: skip
    """Per metric: every head on the test rows of each pattern next to what it is held to, and the same head
    without availability handling (NaN propagating; trained as before) on the same rows."""
    lines = []
    for metric in MISSING_METRICS[task]:
        heading = ["head", "only A: fused", "A alone", "Δ", NO_AVAILABILITY, "only B: fused", "B alone", "Δ",
                   NO_AVAILABILITY, "all: fused", NO_AVAILABILITY, "Δ", "merge s with / without", "note"]  # fmt: skip
        lines += [f"{METRIC_NAMES[metric]}:", "", "| " + " | ".join(heading) + " |",
                  "|---|" + "---:|" * (len(heading) - 2) + "---|"]  # fmt: skip
        for head in chosen:
            cells = [head.label]
            for pattern in PATTERNS:
                fused, reference = _fused(pattern, head, rows, missing), _reference(pattern, head, sources, rows,
                                                                                     missing)  # fmt: skip
                delta = _delta(fused, reference, metric)
                cells += [_mcell(fused, metric, reps), _mcell(reference, metric, reps),
                          "" if np.isnan(delta) else f"{delta:+.4f}"]  # fmt: skip
                if pattern != "all":
                    plain = missing.rows.get(f"{head.label} {NO_AVAILABILITY}|{pattern}", Row(pattern))
                    cells.append(_mcell(plain, metric, reps))
            both = [rows.get(label, Row(label)) for label in (head.label, f"{head.label} {NO_AVAILABILITY}")]
            cells.append(" / ".join(f"{statistics.fmean(r.seconds):.1f}" if r.seconds else "-" for r in both))
            chose = [", ".join(r.notes) for r in both]
            cells.append(f"chose: {chose[0]} / {chose[1]}" if any(chose) else "")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def trained_line(chosen: Sequence[Head], missing: Missing) -> str:
    """The merge's training rows (first repetition, first head): per availability pattern, and those skipped
    with and without availability handling."""
    head = chosen[0]
    with_ = (missing.trained.get(head.label) or [{}])[0]
    without = (missing.trained.get(f"{head.label} {NO_AVAILABILITY}") or [{}])[0]
    return (
        f"Merge rows (repetition 1, {head.label}): {with_.get('train', '?')} train + {with_.get('holdout', '?')} "
        f"hold-out, {with_.get('skipped_not_finite', '?')} skipped, patterns {json.dumps(with_.get('patterns'))}; "
        f"{NO_AVAILABILITY}: {without.get('train', '?')} train + {without.get('holdout', '?')} hold-out, "
        f"{without.get('skipped_not_finite', '?')} skipped."
    )


def missing_goals(name: str, task: str, chosen: Sequence[Head], sources: Sequence[str], rows: dict[str, Row],
                  missing: Missing) -> list[tuple[str, str]]:  # fmt: skip
    """The goal lines (verdict, text): per pattern and metric, every head at most MISSING_SLACK below what it is
    held to, on the means over the repetitions; a head refused, failed or non-finite in any repetition misses."""
    found = []
    held_to = {"only A": "A alone", "only B": "B alone", "all": f"the same head {NO_AVAILABILITY}"}
    for pattern in PATTERNS:
        for metric in MISSING_METRICS[task]:
            below, unjudged, deltas = [], [], []
            for head in chosen:
                fused, reference = _fused(pattern, head, rows, missing), _reference(pattern, head, sources, rows,
                                                                                     missing)  # fmt: skip
                if fused.errors or not fused.runs:
                    below.append(f"{head.key} (failed or non-finite)")
                    continue
                delta = _delta(fused, reference, metric)
                if np.isnan(delta):
                    unjudged.append(head.key)
                    continue
                deltas.append((delta, head.key))
                if delta < -MISSING_SLACK:
                    below.append(f"{head.key} {delta:+.4f}")
            judged = len(chosen) - len(unjudged)
            text = (f"{name} {pattern}, {METRIC_NAMES[metric]}: fused >= {held_to[pattern]} - {MISSING_SLACK}: "
                    f"{judged - len(below)} of {judged} heads")  # fmt: skip
            if deltas:
                low = min(deltas)
                text += f" (lowest Δ {low[0]:+.4f}, {low[1]})"
            if below:
                text += "; below: " + ", ".join(below)
                if metric == "roc_auc" and any(b.startswith("vote ") for b in below) and pattern != "all":
                    text += " (vote's probabilities are its weighted one-hot votes: ranked against a source's own "
                    text += "probabilities they tie)"
            if unjudged:
                text += "; no reference for: " + ", ".join(unjudged)
            found.append(("MISS" if below else "PASS", text))
    return found


# ---- the driver ----


def run_dataset(data: DataSet, reps: int, keys: set[str] | None, folder: Path,
                options: Options) -> tuple[list[str], Goals | None, list[tuple[str, str]]]:  # fmt: skip
    """Every repetition of one data set: its markdown section, its goals and its missing-group goal lines."""
    frame, y = data.load()
    chosen = [h for h in heads(data.task) if keys is None or h.key in keys]
    rows: dict[str, Row] = {}
    missing = Missing()
    caught: dict[str, list] = {}
    start = time.perf_counter()
    for rep in range(reps):
        print(f"  {data.name} rep {rep + 1}/{reps} ...", file=sys.stderr, flush=True)
        sub = folder / f"{data.name}_{rep}"
        sub.mkdir()
        split = repetition(data, frame, y, rep, chosen, rows, sub, caught, options, missing)
    seconds = time.perf_counter() - start
    hand_label = next(key for key in rows if key.startswith("hand stack"))
    sources = [k for k in rows if k.startswith("source ")]
    ordered = [rows[k] for k in sources] + [rows[hand_label]]
    ordered += [better_of(rows, "from scratch on merge rows", data.task)]
    ordered += [better_of(rows, "all features, all non-test rows", data.task)]
    ordered += [rows[h.label] for h in chosen]
    classes = f", {len(np.unique(y))} classes" if data.task == "classification" else ""
    blanked = (
        f" In the merge's `--data`, {options.missing:.0%} of the rows have A's columns NaN and another "
        f"{options.missing:.0%} B's (`--missing`); the hand stack and the from-scratch models see them complete."
        if options.missing > 0 else ""
    )  # fmt: skip
    lines = [
        f"### {data.name}", "",
        f"{data.why}. {len(y)} rows, {frame.shape[1]} features{classes}; per repetition {len(split.a)} train A, "
        f"{len(split.b)} train B, {len(split.merge)} merge rows (`--data`, 20 % of them the merge's own hold-out), "
        f"{len(split.test)} external test rows; {reps} repetitions, {seconds:.0f} s.{blanked}", "",
        *table(data.task, ordered, reps),
    ]  # fmt: skip
    found = []
    if options.patterns and chosen:
        lines += [
            "", f"#### {data.name}: missing feature groups", "",
            "The external test rows in each availability pattern (only A: B's columns NaN; only B: A's NaN; all), "
            "the fused file in onnxruntime; A alone / B alone: each source's own file on its own columns; "
            f"'{NO_AVAILABILITY}': the same head merged with `FuseSpec(availability=False)`.", "",
            trained_line(chosen, missing), "",
            *missing_tables(data.task, chosen, sources, rows, missing, reps),
        ]  # fmt: skip
        found = missing_goals(data.name, data.task, chosen, sources, rows, missing)
    if caught:
        lines += ["", "Warnings during the merges (first wording, count, heads):"]
        lines += [f"- {text} (×{count}: {', '.join(sorted(keys_))})" for text, count, keys_ in caught.values()]
    return [*lines, ""], goals(data, rows, chosen, hand_label) if chosen else None, found


def summary(found: Sequence[Goals]) -> list[str]:
    heading = [
        "data set", "metric", "better source", "default", "default AUC", "default − source (≥ −0.005)",
        "hand stack", "default − hand (≥ −0.01)", f"heads ≥ {HEAD_SLACK} below better source", "all features",
        "default − all features",
    ]  # fmt: skip
    lines = ["### Goals", "", "| " + " | ".join(heading) + " |", "|" + "---|" * len(heading)]
    return lines + ["| " + " | ".join(g.cells()) + " |" for g in found]


def _selection(given: str | None, known: Sequence[str], what: str) -> list[str] | None:
    if given is None:
        return None
    chosen = [s.strip() for s in given.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(known)}")
    return chosen


def passive_threads() -> None:
    """Re-run this script with OMP_WAIT_POLICY=PASSIVE unless the caller chose a policy: on a shared 2-core
    machine OpenMP's spinning worker threads (LightGBM's, the gbdt head's two) beside one other busy process
    make a fit hundreds of times slower (200 trees on 128 rows: 40 s instead of 0.1 s); the figures do
    not change, only the time, and libgomp reads the variable once, when it is loaded."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})


def main() -> int:
    passive_threads()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--reps", type=int, help="repetition seeds 0..N-1 for every data set (default: each data set's own, 3 or fewer)"
    )
    parser.add_argument("--datasets", help=f"comma-separated subset of: {', '.join(DATASETS)}")
    parser.add_argument("--heads", help="comma-separated subset of: " + ", ".join(
        dict.fromkeys(h.key for task in METRICS for h in heads(task))))  # fmt: skip
    parser.add_argument("--no-missing", action="store_true", help="skip the missing-group table (and its merges)")
    parser.add_argument(
        "--missing", type=float, default=0.0, metavar="FRACTION",
        help="blank this share of the merge rows' A columns and another share's B columns (0 to 0.5; default 0)",
    )  # fmt: skip
    args = parser.parse_args()
    if not 0 <= args.missing <= 0.5:
        parser.error("--missing must be in [0, 0.5]")
    options = Options(args.missing, not args.no_missing)
    names = _selection(args.datasets, list(DATASETS), "data sets") or list(DATASETS)
    keys = _selection(args.heads, list(dict.fromkeys(h.key for task in METRICS for h in heads(task))), "heads")
    start = time.perf_counter()
    print(f"command: `{shlex.join(['python', *sys.argv])}` (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']})  ")
    print(f"heads: METAS = {', '.join(METAS)}; figures: mean ±sd over the repetitions, on the external test rows\n")
    found, missing_found = [], []
    with tempfile.TemporaryDirectory(prefix="fusion_quality_") as tmp:
        for name in names:
            data = DATASETS[name]
            if data.needs and not _importable(data.needs):
                print(f"### {name}\n\nskipped: `{data.needs}` is not importable.\n")
                continue
            chosen = set(keys) if keys is not None else None
            lines, goal, missing_goal = run_dataset(data, args.reps or data.reps, chosen, Path(tmp), options)
            print("\n".join(lines), flush=True)
            if goal is not None:
                found.append(goal)
            missing_found += missing_goal
    if found:
        print("\n".join(summary(found)))
    if missing_found:
        print("\n### Goals: missing feature groups\n")
        print("\n".join(f"- {verdict}  {text}" for verdict, text in missing_found))
    print(f"\nrun time: {time.perf_counter() - start:.0f} s")
    return 0


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    raise SystemExit(main())
