"""Hold-out metrics per source, for the fused model and a from-scratch baseline; the printed table."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from onnxfuse.errors import OnnxfuseError
from onnxfuse.evaluation import Evaluation

CLASSIFICATION_METRICS = ("accuracy", "log_loss", "roc_auc")
REGRESSION_METRICS = ("r2", "rmse")


def metrics(task: str, target: np.ndarray, prediction: np.ndarray, classes: Sequence | None) -> dict[str, float | None]:
    """accuracy, log loss and ROC AUC (binary, or macro one-vs-rest) — or R² and RMSE."""
    from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, r2_score

    if task == "regression":
        prediction = np.asarray(prediction, dtype=np.float64).ravel()
        return {
            "r2": _round(r2_score(target, prediction)),
            "rmse": _round(math.sqrt(mean_squared_error(target, prediction))),
        }
    index = np.array([list(classes).index(v) for v in target.tolist()]) if classes is not None else target
    probabilities = np.clip(np.asarray(prediction, dtype=np.float64), 1e-15, 1.0)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    labels = list(range(probabilities.shape[1]))
    return {
        "accuracy": _round(accuracy_score(index, np.argmax(probabilities, axis=1))),
        "log_loss": _round(log_loss(index, probabilities, labels=labels)),
        "roc_auc": _auc(index, probabilities, labels),
    }


def format_table(report: dict, fusion: dict | None = None) -> str:
    """The hold-out table the CLI prints after a merge, and which head `--meta auto` chose (from `fusion`, the
    `onnxfuse.fusion` metadata)."""
    names = CLASSIFICATION_METRICS if report["task"] == "classification" else REGRESSION_METRICS
    rows = [("model", *names)]
    for name, values in report["metrics"].items():
        rows.append((name, *(_cell(values.get(n)) for n in names)))
    counts = report["rows"]
    skipped = counts.get("skipped_not_finite", 0)
    left_out = f"; {skipped} rows with no source available or an infinite feature left out" if skipped else ""
    lines = [_holdout_line(report, counts, left_out), *_aligned(rows, left=1)]
    patterns = counts.get("patterns", {})
    if len(patterns) > 1:  # some rows lack a source: say how many of each kind, and where a source alone answered
        listed = ", ".join(f"{name} {count}" for name, count in patterns.items())
        lines.append(f"rows per availability pattern: {listed}; a source alone answers the prior where it is missing")
    if report.get("patterns"):
        which = f"the fit sample's {counts['sample_holdout']:,} hold-out rows" if "data" in counts else "hold-out rows"
        lines.append(f"by availability pattern ({which} with those sources, the others masked):")
        lines.extend(_pattern_lines(report["patterns"], names))
    chosen = (fusion or {}).get("chosen")
    if chosen is not None:
        scores, cv = fusion["candidates"], fusion["cv"]
        lines.append(f"head: {chosen}, chosen by --meta auto{_choice(scores, cv, chosen)}")
    return "\n".join(lines)


def _holdout_line(report: dict, counts: dict, left_out: str) -> str:
    """Which rows the table is on: a seeded split of the rows, or (data beyond `--fit-rows`) every hold-out row of
    the data, the head fitted on a sample."""
    if "data" not in counts:
        return (f"hold-out: {counts['holdout']} of {counts['holdout'] + counts['train']} rows (seed {report['seed']}); "
                f"head refit on all rows afterwards{left_out}")  # fmt: skip
    unknown = counts.get("holdout_unknown_class", 0)
    skipped = counts.get("holdout_skipped", 0)
    notes = [f"{skipped:,} with no source available or an infinite feature left out"] if skipped else []
    notes += [f"{unknown:,} of classes the fit sample lacks left out"] if unknown else []
    auc = f"; ROC AUC on a sample of {counts['roc_auc_rows']:,} of them" if "roc_auc_rows" in counts else ""
    baseline = f"; the baseline on the sample's {counts['baseline_rows']:,}" if "baseline_rows" in counts else ""
    return (
        f"hold-out: {counts['holdout']:,} of {counts['data']:,} rows (seed {report['seed']}, decided per row)"
        f"{'; ' + ', '.join(notes) if notes else ''}{auc}{baseline}; head fitted on {counts['train']:,} other rows "
        f"of a {counts['fit_sample']:,}-row sample (--fit-rows), then refit on the whole sample"
    )


def format_evaluation(summary: dict) -> str:
    """The table `onnxfuse evaluate` prints: each model on all rows, then per availability pattern."""
    names = CLASSIFICATION_METRICS if summary["task"] == "classification" else REGRESSION_METRICS
    rows = [("model", *names)] + [(name, *(_cell(values.get(n)) for n in names))
                                  for name, values in summary["metrics"].items()]  # fmt: skip
    lines = [f"evaluated on {summary['rows']['evaluated']} rows", *_aligned(rows, left=1)]
    if len(summary.get("patterns", {})) > 1:
        lines.append("by availability pattern (the rows as they are):")
        lines.extend(_pattern_lines(summary["patterns"], names))
    return "\n".join(lines)


def _pattern_lines(patterns: dict, names: Sequence[str]) -> list[str]:
    """One block per availability pattern: its rows, then each model scored on them."""
    table = [("pattern", "rows", "model", *names)]
    for pattern, entry in patterns.items():
        for number, (name, values) in enumerate(entry["metrics"].items() or [("-", {})]):
            first = number == 0
            table.append((pattern if first else "", str(entry["rows"]) if first else "", name,
                          *(_cell(values.get(n)) for n in names)))  # fmt: skip
    return ["  " + line for line in _aligned(table, left=3)]


def _aligned(rows: Sequence[Sequence[str]], *, left: int) -> list[str]:
    """Columns padded to their widths: the first `left` to the left, the figures to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    padded = [[c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))] for row in rows]
    return ["  ".join(row) for row in padded]


def _choice(scores: dict[str, float], cv: dict, chosen: str) -> str:
    """How auto chose: among how many candidates, and the chosen head's cross-validated loss (the lowest)."""
    if not scores:
        return " (too few rows to cross-validate)"
    return f" among {len(scores)} candidates ({cv['folds']}-fold {cv['metric'].replace('_', ' ')} {scores[chosen]:.4f})"


def check_report(spec, inputs: list[Path]) -> None:
    """Before the merge: an HTML report needs hold-out rows to plot, and matplotlib."""
    if is_html(spec.report) and (not spec.target or spec.holdout <= 0):
        raise OnnxfuseError(
            f"--report {spec.report}: the HTML report plots the hold-out rows; give --data, --target and a "
            "--holdout above 0 (or write .json)"
        )
    check_html(spec.report, inputs)


def check_html(path: Path, inputs: list[Path]) -> None:
    """Before any work: the report can be written there, and an HTML one has matplotlib to plot with."""
    from onnxfuse.emit import check_output

    check_output(path, inputs)
    if is_html(path):
        from onnxfuse.report_html import require_matplotlib

        require_matplotlib(path)


def is_html(path: Path) -> bool:
    return path.suffix.lower() in (".html", ".htm")


def write_report(path: Path, fusion: dict, evaluation: Evaluation | None = None, *, title: str = "") -> None:
    """`--report`: the fusion metadata as JSON, or (`.html`) the self-contained report of the hold-out rows; written
    to a temp file and renamed into place."""
    if is_html(path) and evaluation is not None:
        from onnxfuse.report_html import write_html

        write_html(path, evaluation, title=title)
        return
    text = json.dumps(fusion, sort_keys=True, indent=2) + "\n"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _auc(index: np.ndarray, probabilities: np.ndarray, labels: list[int]) -> float | None:
    from sklearn.metrics import roc_auc_score

    try:
        if len(labels) == 2:
            return _round(roc_auc_score(index, probabilities[:, 1]))
        return _round(roc_auc_score(index, probabilities, multi_class="ovr", average="macro", labels=labels))
    except ValueError:  # a class missing from the hold-out rows
        return None


def _round(value: float) -> float:
    return round(float(value), 6)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
