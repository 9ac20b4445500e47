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
standard deviation across them. Output: markdown tables, then the goals with PASS/FAIL:

    python benchmarks/fusion_quality.py                       # every data set and head, 3 repetitions
    python benchmarks/fusion_quality.py --reps 1 --datasets wine,diabetes --heads default,gate
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
from onnxfuse.pipeline import merge
from onnxfuse.spec import FuseSpec, ModelSpec

SOURCE_SLACK = 0.005  # goal: the default head is at most this far below the better source
STACK_SLACK = 0.01  # ... and this far below the hand-made stack
HEAD_SLACK = 0.03  # no head further than this below the better source
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
    try:
        auc = roc_auc_score(y, proba[:, 1]) if len(classes) == 2 else roc_auc_score(
            y, proba, multi_class="ovr", average="macro", labels=classes)  # fmt: skip
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


def repetition(data: DataSet, frame: pd.DataFrame, y: np.ndarray, rep: int, chosen: Sequence[Head],
               rows: dict[str, Row], folder: Path, caught: dict[str, list]) -> Rows:  # fmt: skip
    """Split, train and export the sources, fit the comparison models, merge every head and score all of
    them on the external test rows; each result is appended to its row in `rows`."""
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
    frame.iloc[split.merge].assign(y=y[split.merge]).to_parquet(data_path, index=False)
    test_frame = frame.iloc[split.test]
    for head in chosen:
        _merge_head(head, sources, paths, data_path, test_frame, test_y, task, rep, rows, folder, caught)
    return split


def _merge_head(head: Head, sources: Sequence[Source], paths: Sequence[Path], data_path: Path,
                test_frame: pd.DataFrame, test_y: np.ndarray, task: str, rep: int, rows: dict[str, Row],
                folder: Path, caught: dict[str, list]) -> None:  # fmt: skip
    """One head's merge and its test-row scores; a refusal is the row's note, warnings are collected."""
    row = rows.setdefault(head.label, Row(head.label))
    output = folder / f"fused_{head.key}.onnx"
    spec = FuseSpec(
        models=tuple(ModelSpec(path, s.columns) for path, s in zip(paths, sources)),
        output=output, data=data_path, target="y", seed=rep, **head.options,
    )  # fmt: skip
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            result = merge(spec)
        except OnnxfuseError as exc:
            row.errors.append(f"refused: {_one_line(exc)}")
            return
        except Exception as exc:  # an internal failure: report it, go on with the other heads
            row.errors.append(f"failed ({type(exc).__name__}): {_one_line(exc)}")
            return
        finally:
            row.seconds.append(time.perf_counter() - start)
            for w in seen:
                _catch(caught, f"{w.category.__name__}: {_one_line(w.message)}", head.key)
    if "chosen" in result.fusion:
        row.notes.append(str(result.fusion["chosen"]))
    values, label = fused_outputs(output, test_frame, task)
    row.runs.append(scores(task, test_y, values, label))
    output.unlink()


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


# ---- the driver ----


def run_dataset(data: DataSet, reps: int, keys: set[str] | None, folder: Path) -> tuple[list[str], Goals | None]:
    """Every repetition of one data set: its markdown section and its goals."""
    frame, y = data.load()
    chosen = [h for h in heads(data.task) if keys is None or h.key in keys]
    rows: dict[str, Row] = {}
    caught: dict[str, list] = {}
    start = time.perf_counter()
    for rep in range(reps):
        print(f"  {data.name} rep {rep + 1}/{reps} ...", file=sys.stderr, flush=True)
        sub = folder / f"{data.name}_{rep}"
        sub.mkdir()
        split = repetition(data, frame, y, rep, chosen, rows, sub, caught)
    seconds = time.perf_counter() - start
    hand_label = next(key for key in rows if key.startswith("hand stack"))
    ordered = [rows[k] for k in rows if k.startswith("source ")] + [rows[hand_label]]
    ordered += [better_of(rows, "from scratch on merge rows", data.task)]
    ordered += [better_of(rows, "all features, all non-test rows", data.task)]
    ordered += [rows[h.label] for h in chosen]
    classes = f", {len(np.unique(y))} classes" if data.task == "classification" else ""
    lines = [
        f"### {data.name}", "",
        f"{data.why}. {len(y)} rows, {frame.shape[1]} features{classes}; per repetition {len(split.a)} train A, "
        f"{len(split.b)} train B, {len(split.merge)} merge rows (`--data`, 20 % of them the merge's own hold-out), "
        f"{len(split.test)} external test rows; {reps} repetitions, {seconds:.0f} s.", "",
        *table(data.task, ordered, reps),
    ]  # fmt: skip
    if caught:
        lines += ["", "Warnings during the merges (first wording, count, heads):"]
        lines += [f"- {text} (×{count}: {', '.join(sorted(keys_))})" for text, count, keys_ in caught.values()]
    return [*lines, ""], goals(data, rows, chosen, hand_label) if chosen else None


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
    args = parser.parse_args()
    names = _selection(args.datasets, list(DATASETS), "data sets") or list(DATASETS)
    keys = _selection(args.heads, list(dict.fromkeys(h.key for task in METRICS for h in heads(task))), "heads")
    start = time.perf_counter()
    print(f"command: `{shlex.join(['python', *sys.argv])}` (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']})  ")
    print(f"heads: METAS = {', '.join(METAS)}; figures: mean ±sd over the repetitions, on the external test rows\n")
    found = []
    with tempfile.TemporaryDirectory(prefix="fusion_quality_") as tmp:
        for name in names:
            data = DATASETS[name]
            if data.needs and not _importable(data.needs):
                print(f"### {name}\n\nskipped: `{data.needs}` is not importable.\n")
                continue
            lines, goal = run_dataset(data, args.reps or data.reps, set(keys) if keys is not None else None, Path(tmp))
            print("\n".join(lines), flush=True)
            if goal is not None:
                found.append(goal)
    if found:
        print("\n".join(summary(found)))
    print(f"\nrun time: {time.perf_counter() - start:.0f} s")
    return 0


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    raise SystemExit(main())
