"""`--report REPORT.html`: one self-contained page (inline CSS, PNG plots as data URIs, no script, no network) of
an `Evaluation` — the table, each model against the others, and what the head did."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from onnxfuse.errors import OnnxfuseError
from onnxfuse.evaluation import FUSED, Evaluation

MAX_CLASS_PLOTS = 8  # one-vs-rest curves beyond this many classes would be unreadable: the first ones, said so
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } th { text-align: left; }
figure { display: inline-block; margin: 0.5em; } img { max-width: 100%; } .note { color: #666; }
"""


def require_matplotlib(path: Path) -> None:
    """Before any work: the plots need matplotlib, an optional extra."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise OnnxfuseError(
            f"--report {path}: the HTML report needs matplotlib; pip install 'onnxfuse[report]' (or write .json)"
        )


def write_html(path: Path, evaluation: Evaluation, *, title: str) -> None:
    """The report, written to a temp file beside `path` and renamed into place."""
    require_matplotlib(path)
    text = html_report(evaluation, title=title)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def html_report(evaluation: Evaluation, *, title: str) -> str:
    """The whole document; sections without data are left out, never drawn empty."""
    parts = [f"<h1>{_e(title)}</h1>", _header(evaluation), _table(evaluation)]
    for heading, body in _sections(evaluation):
        parts.append(f"<h2>{_e(heading)}</h2>\n{body}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")  # fmt: skip


def _sections(evaluation: Evaluation) -> Iterator[tuple[str, str]]:
    yield "Each model on the rows", _figure(_metric_bars, evaluation)
    if evaluation.classification:
        yield "ROC curves", _figure(_roc, evaluation) + _class_note(evaluation)
        yield "Calibration", _figure(_calibration, evaluation) + _class_note(evaluation)
        yield "Confusion matrix of the fused model", _figure(_confusion, evaluation)
    else:
        yield "Predicted against actual", _figure(_predicted, evaluation)
        yield "Residuals of the fused model", _figure(_residuals, evaluation)
    summary = evaluation.summary
    if summary.get("candidates"):
        cv = summary.get("cv", {})
        note = f"<p class=note>{cv.get('folds', '?')}-fold {_e(str(cv.get('metric', '')))}, lower is better</p>"
        yield f"Head chosen: {summary.get('chosen')}", _figure(_candidates, evaluation) + note
    if evaluation.weights is not None:
        yield "Per-row weights of the sources", _figure(_weights, evaluation)
    if len(summary.get("patterns", {})) > 1:
        yield "By availability pattern", _patterns_counts(summary) + _figure(_patterns, evaluation)
    if evaluation.effects is not None:
        note = "<p class=note>how much each source moved the result: the output without it, minus the full one</p>"
        yield "Source effects", _figure(_effects, evaluation) + note


def _header(evaluation: Evaluation) -> str:
    summary = evaluation.summary
    facts = [("task", evaluation.task), ("rows", str(len(evaluation.truth))),
             ("sources", ", ".join(evaluation.sources))]  # fmt: skip
    if evaluation.classes is not None:
        facts.append(("classes", ", ".join(map(str, evaluation.classes))))
    if summary.get("method"):
        facts.append(("fusion", str(summary["method"]) + (f" ({summary['chosen']})" if summary.get("chosen") else "")))
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts) + "</table>"


def _table(evaluation: Evaluation) -> str:
    """The figures per model, the best of each column in bold (highest, or lowest for a loss)."""
    table = evaluation.summary.get("metrics", {})
    names = sorted({metric for values in table.values() for metric in values}, key=_metric_order)
    best = {}
    for metric in names:
        values = [v[metric] for v in table.values() if v.get(metric) is not None]
        if values:
            best[metric] = min(values) if _lower_is_better(metric) else max(values)
    rows = ["<tr><th>model</th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"]
    for model, values in table.items():
        cells = []
        for metric in names:
            value = values.get(metric)
            text = "-" if value is None else f"{value:.4f}"
            cells.append(f"<td class=n>{'<b>' + text + '</b>' if value == best.get(metric) else text}</td>")
        rows.append(f"<tr><td>{_e(model)}</td>{''.join(cells)}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _figure(draw: Callable, evaluation: Evaluation) -> str:
    """`draw(figure, evaluation)` onto a fresh Agg figure, inlined as a PNG data URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4.2), dpi=90, layout="constrained")
    FigureCanvasAgg(figure)
    alt = draw(figure, evaluation)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></figure>'


def _metric_bars(figure, evaluation: Evaluation) -> str:
    table = evaluation.summary.get("metrics", {})
    names = sorted({m for values in table.values() for m in values}, key=_metric_order)
    for index, metric in enumerate(names):
        axes = figure.add_subplot(1, len(names), index + 1)
        models = [m for m in table if table[m].get(metric) is not None]
        axes.barh(models, [table[m][metric] for m in models], color=[_color(m) for m in models])
        axes.set_title(metric + (" (lower is better)" if _lower_is_better(metric) else ""))
        axes.invert_yaxis()
        if index:
            axes.set_yticklabels([])
    return "each metric per model"


def _roc(figure, evaluation: Evaluation) -> str:
    from sklearn.metrics import roc_curve

    def draw(axes, truth, scores, name):
        if len(np.unique(truth)) == 2:
            false, true, _ = roc_curve(truth, scores)
            axes.plot(false, true, label=name, color=_color(name), linewidth=2 if name == FUSED else 1)

    _per_class(figure, evaluation, draw, ("false positive rate", "true positive rate"))
    return "ROC curves of each model"


def _calibration(figure, evaluation: Evaluation) -> str:
    from sklearn.calibration import calibration_curve

    def draw(axes, truth, scores, name):
        observed, predicted = calibration_curve(truth, np.clip(scores, 0.0, 1.0), n_bins=10)
        axes.plot(predicted, observed, marker=".", label=name, color=_color(name))

    _per_class(figure, evaluation, draw, ("predicted probability", "observed frequency"))
    return "reliability diagram of each model"


def _per_class(figure, evaluation: Evaluation, draw: Callable, labels: tuple[str, str]) -> None:
    """One panel per class, one-vs-rest (binary: the second class only), each model a line, the diagonal dashed."""
    index = evaluation.class_index()
    count = len(evaluation.classes)
    shown = [1] if count == 2 else list(range(min(count, MAX_CLASS_PLOTS)))
    for panel, c in enumerate(shown):
        axes = figure.add_subplot(1, len(shown), panel + 1)
        for name, values in evaluation.outputs.items():
            draw(axes, (index == c).astype(int), np.asarray(values, dtype=np.float64)[:, c], name)
        axes.plot([0, 1], [0, 1], linestyle="--", color="#999", linewidth=0.8)
        axes.set_title(f"class {evaluation.classes[c]}")
        axes.set_xlabel(labels[0])
        if panel == 0:
            axes.set_ylabel(labels[1])
            axes.legend(fontsize=7)


def _class_note(evaluation: Evaluation) -> str:
    if len(evaluation.classes) <= MAX_CLASS_PLOTS:
        return ""
    return f"<p class=note>the first {MAX_CLASS_PLOTS} of {len(evaluation.classes)} classes</p>"


def _confusion(figure, evaluation: Evaluation) -> str:
    from sklearn.metrics import confusion_matrix

    count = len(evaluation.classes)
    matrix = confusion_matrix(evaluation.class_index(), np.argmax(evaluation.outputs[FUSED], axis=1),
                              labels=list(range(count)))  # fmt: skip
    axes = figure.add_subplot(1, 1, 1)
    axes.imshow(matrix, cmap="Blues")
    for (row, column), value in np.ndenumerate(matrix):
        axes.text(column, row, str(value), ha="center", va="center", fontsize=8,
                  color="white" if value > matrix.max() / 2 else "black")  # fmt: skip
    ticks = [str(c) for c in evaluation.classes]
    axes.set_xticks(range(count), ticks, rotation=45 if count > 4 else 0)
    axes.set_yticks(range(count), ticks)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    return "confusion matrix of the fused model"


def _predicted(figure, evaluation: Evaluation) -> str:
    axes = figure.add_subplot(1, 1, 1)
    for name, values in evaluation.outputs.items():
        fused = name == FUSED
        axes.scatter(evaluation.truth, np.ravel(values), s=8 if fused else 4, alpha=0.8 if fused else 0.3,
                     label=name, color=_color(name))  # fmt: skip
    low, high = float(np.min(evaluation.truth)), float(np.max(evaluation.truth))
    axes.plot([low, high], [low, high], linestyle="--", color="#999", linewidth=0.8)
    axes.set_xlabel("actual")
    axes.set_ylabel("predicted")
    axes.legend(fontsize=7)
    return "predicted against actual, each model"


def _residuals(figure, evaluation: Evaluation) -> str:
    predicted = np.ravel(evaluation.outputs[FUSED])
    axes = figure.add_subplot(1, 2, 1)
    axes.scatter(predicted, evaluation.truth - predicted, s=6, color=_color(FUSED))
    axes.axhline(0.0, linestyle="--", color="#999", linewidth=0.8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual - predicted")
    histogram = figure.add_subplot(1, 2, 2)
    histogram.hist(evaluation.truth - predicted, bins=30, color=_color(FUSED))
    histogram.set_xlabel("residual")
    return "residuals of the fused model"


def _candidates(figure, evaluation: Evaluation) -> str:
    scores = evaluation.summary["candidates"]
    chosen = evaluation.summary.get("chosen")
    names = sorted(scores, key=lambda name: scores[name])
    axes = figure.add_subplot(1, 1, 1)
    axes.barh(names, [scores[n] for n in names], color=["#d62728" if n == chosen else "#999" for n in names])
    axes.invert_yaxis()
    axes.set_xlabel("cross-validated loss")
    return "cross-validated score of each candidate head"


def _weights(figure, evaluation: Evaluation) -> str:
    axes = figure.add_subplot(1, 1, 1)
    axes.boxplot([evaluation.weights[:, m] for m in range(len(evaluation.sources))])
    axes.set_xticks(range(1, len(evaluation.sources) + 1), evaluation.sources)
    axes.set_ylabel("weight")
    return "distribution of each source's per-row weight"


def _patterns_counts(summary: dict) -> str:
    counts = summary.get("rows", {}).get("patterns") or {p: e["rows"] for p, e in summary["patterns"].items()}
    return "<p>rows per pattern: " + ", ".join(f"{_e(p)} {n}" for p, n in counts.items()) + "</p>"


def _patterns(figure, evaluation: Evaluation) -> str:
    metric = "roc_auc" if evaluation.classification else "r2"
    patterns = evaluation.summary["patterns"]
    models = sorted({m for entry in patterns.values() for m in entry["metrics"]}, key=lambda m: (m == FUSED, m))
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(models), 1)
    for number, model in enumerate(models):
        values = [patterns[p]["metrics"].get(model, {}).get(metric) for p in patterns]
        places = [i + number * width for i, v in enumerate(values) if v is not None]
        axes.bar(places, [v for v in values if v is not None], width, label=model, color=_color(model))
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(patterns))], list(patterns))
    axes.set_ylabel(metric)
    axes.legend(fontsize=7)
    return f"{metric} per availability pattern, fused against each available source"


def _effects(figure, evaluation: Evaluation) -> str:
    available = evaluation.available if evaluation.available is not None else np.ones_like(evaluation.effects, bool)
    axes = figure.add_subplot(1, 1, 1)
    axes.boxplot([evaluation.effects[available[:, m], m] for m in range(len(evaluation.sources))])
    axes.set_xticks(range(1, len(evaluation.sources) + 1), evaluation.sources)
    axes.axhline(0.0, linestyle="--", color="#999", linewidth=0.8)
    axes.set_ylabel("output without the source - full output")
    return "distribution of each source's effect, on the rows where it is available"


def _metric_order(metric: str) -> tuple[int, str]:
    order = ("accuracy", "log_loss", "roc_auc", "r2", "rmse")
    return (order.index(metric) if metric in order else len(order), metric)


def _lower_is_better(metric: str) -> bool:
    return metric in ("log_loss", "rmse")


def _color(name: str) -> str:
    if name == FUSED:
        return "#d62728"
    if name.startswith("baseline"):
        return "#7f7f7f"
    palette = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#ff7f0e")
    number = name.split(" ", 1)[0].removeprefix("m")
    return palette[(int(number) - 1) % len(palette)] if number.isdigit() else "#17becf"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
