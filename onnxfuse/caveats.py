"""What the hold-out figures say a user should know: one `warning:` line each, and a list in the report.

Rules (on the hold-out table of `train.train_head`; the primary figure is accuracy
for classification, R² for regression; a gap within MARGIN — for accuracy, within
one standard error of the fused accuracy on the hold-out rows if that is larger —
counts as noise):
- below: the fused model is below its best source, or below the from-scratch baseline;
- seen: a source is near-perfect (NEAR_PERFECT, with a log loss under CONFIDENT)
  while the from-scratch baseline (else the best other source) is at least GAP below
  it — an honest source can match a model that saw every feature of these rows, not
  beat it by far: the mark of a source trained on them, which a stack trusts blindly;
- chance: a source scores at chance (ROC AUC within CHANCE of 0.5, or R² at or
  below 0 — a column-order mistake in `--features` looks like this), on at least
  CHANCE_ROWS hold-out rows;
- small: the head is fitted on fewer than SMALL_TRAIN rows, too few to choose or
  trust it (e.g. `--holdout 0.99`).
"""

from __future__ import annotations

import math

from onnxfuse.errors import warn

MARGIN = 0.005
NEAR_PERFECT, CONFIDENT, GAP = 0.99, 0.1, 0.05
CHANCE, CHANCE_ROWS = 0.05, 30
SMALL_TRAIN = 50


def caveats(report: dict, head: dict, spec) -> list[dict[str, str]]:
    """Warn of each caveat and return them as `{"code", "message"}` for the report."""
    found = _small(report, spec)
    table = report.get("metrics") or {}
    if table.get("fused"):
        primary = "accuracy" if report["task"] == "classification" else "r2"
        found += _below(table, primary, head, report) + _seen(table, primary) + _chance(table, report)
    for caveat in found:
        warn(caveat["message"])
    return found


def _sources(table: dict) -> dict[str, dict]:
    return {name: values for name, values in table.items() if name != "fused" and not name.startswith("baseline")}


def _below(table: dict, primary: str, metadata: dict, report: dict) -> list[dict[str, str]]:
    fused, head = table["fused"][primary], _head(metadata, report)
    noise = _noise(primary, fused, report["rows"]["holdout"])
    other = "the default --meta auto" if report["method"] == "stack" else "--fusion stack"
    advice = "more fusion rows may help" if "chosen" in metadata else f"try {other}, or more fusion rows"
    found = []
    scored = {name: v[primary] for name, v in _sources(table).items() if v.get(primary) is not None}
    if scored:
        best = max(scored, key=lambda name: scored[name])
        if fused < scored[best] - noise:
            found.append({"code": "below_best_source", "message": (
                f"the fused model ({head}) is below its best source on the hold-out: {primary} {fused:.4f} "
                f"vs {scored[best]:.4f} for {best}; {advice}"
            )})  # fmt: skip
    baseline = _baseline(table, primary)
    if baseline is not None and fused < baseline[1] - noise:
        found.append({"code": "below_baseline", "message": (
            f"the fused model ({head}) is below a {baseline[0]} trained from scratch on the fusion rows: "
            f"{primary} {fused:.4f} vs {baseline[1]:.4f}; these rows teach more than the sources add"
        )})  # fmt: skip
    return found


def _baseline(table: dict, primary: str) -> tuple[str, float] | None:
    """The from-scratch baseline's family (`baseline (gbdt on raw features)` -> `gbdt`) and figure, if scored."""
    for name, values in table.items():
        if name.startswith("baseline") and values.get(primary) is not None:
            return name.removeprefix("baseline (").split(" on raw features")[0], values[primary]
    return None


def _noise(primary: str, fused: float, rows: int) -> float:
    if primary != "accuracy" or rows < 1:
        return MARGIN
    return max(MARGIN, math.sqrt(fused * (1 - fused) / rows))


def _seen(table: dict, primary: str) -> list[dict[str, str]]:
    found = []
    for name, values in _sources(table).items():
        value = values.get(primary)
        if value is None or value < NEAR_PERFECT or (values.get("log_loss") or 0.0) > CONFIDENT:
            continue
        reference = _reference(table, name, primary)
        if reference is not None and reference[1] <= value - GAP:
            found.append({"code": "source_saw_rows", "message": (
                f"{name} looks like it was trained on the fusion rows ({primary} {value:.4f} on the hold-out, "
                f"{reference[0]} {reference[1]:.4f}); --data must be rows the sources did not learn from, else the "
                "head trusts that source blindly and the figures are leaked"
            )})  # fmt: skip
    return found


def _reference(table: dict, name: str, primary: str) -> tuple[str, float] | None:
    """What a near-perfect source is held against: the from-scratch baseline (it saw every feature of these rows;
    an honest source trained on other rows can match it, not beat it by far), else the best other source."""
    baseline = _baseline(table, primary)
    if baseline is not None:
        return f"a {baseline[0]} from scratch", baseline[1]
    others = {n: v[primary] for n, v in _sources(table).items() if n != name and v.get(primary) is not None}
    best = max(others, key=lambda n: others[n], default=None)
    return None if best is None else (best, others[best])


def _chance(table: dict, report: dict) -> list[dict[str, str]]:
    if report["rows"]["holdout"] < CHANCE_ROWS:
        return []
    found = []
    for name, values in _sources(table).items():
        auc, r2 = values.get("roc_auc"), values.get("r2")
        if auc is not None and abs(auc - 0.5) < CHANCE:
            figure = f"ROC AUC {auc:.4f}"
        elif r2 is not None and r2 <= 0.0:
            figure = f"R² {r2:.4f}"
        else:
            continue
        found.append({"code": "source_at_chance", "message": (
            f"{name} scores at chance on the hold-out ({figure}): are its --features the columns it was trained on, "
            "in that order?"
        )})  # fmt: skip
    return found


def _small(report: dict, spec) -> list[dict[str, str]]:
    train = report["rows"]["train"]
    if train >= SMALL_TRAIN:
        return []
    return [{"code": "small_training_part", "message": (
        f"the head is fitted on {train} training rows (--holdout {spec.holdout}), too few to choose or trust it; "
        f"give at least {SMALL_TRAIN} (more rows, or a lower --holdout)"
    )}]  # fmt: skip


def _head(head: dict, report: dict) -> str:
    """`--fusion stack`'s learner (or auto's choice), else the fusion's name."""
    return f"head {head.get('chosen') or head.get('meta') or report['method']}"
