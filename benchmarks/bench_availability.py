"""What availability handling (issue 12) costs at inference: the same merge built three ways, timed side by side.

For each case (two real sources from benchmarks/real_data.py, trained on rows of their own, merged
on joint rows: natural_scales, a scaled logistic regression and a gradient boosting model;
breast_cancer, a scaled logistic regression and a 200-tree random forest) and each head (stack
linear, stack gbdt, mean, gate), the merge is built three ways:

    plain      `FuseSpec(..., availability=False)`: the head as before availability handling
    default    availability masks (and, for a stack, source dropout in training)
    explain    the default with `explain=True`: also `available`, `source_effects` (and `weights`)

Each file runs in one onnxruntime session (`--threads` intra-op threads, default 1, sequential),
`session.run(None, {"features": x})` (every output computed), on test rows the merge never saw,
at batch 1, 64 and 1024; the three builds of one head and batch are timed call by call in the
same run, interleaved (benchmarks/harness.py `measure`), and compared by their medians. Also
printed: file sizes and node counts, how far the outputs of the three agree on complete rows,
and the share of finite outputs on rows missing a group.

Goals (PASS/MISS; the exit status is 0 either way): default <= 1.15x plain at batch 1 and 1024;
explain <= 2x plain at batch 1024.

    python benchmarks/bench_availability.py
    python benchmarks/bench_availability.py --cases natural_scales --heads linear,gate --calls 200
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import real_data
from _children import machine, temporary_folder
from fusion_quality import passive_threads
from harness import Settings, Timing, batch_rows, fmt_ms, identity_model, limited_threads, measure, session

from onnxfuse.pipeline import merge
from onnxfuse.spec import FuseSpec, ModelSpec

BATCHES = (1, 64, 1024)
GOAL_BATCHES = (1, 1024)
AVAILABILITY_TARGET = 1.15  # default / plain, at GOAL_BATCHES
EXPLAIN_TARGET = 2.0  # explain / plain, at batch EXPLAIN_BATCH
EXPLAIN_BATCH = 1024
PACKAGES = ("onnxruntime", "onnx", "onnx-ir", "scikit-learn", "skl2onnx", "lightgbm", "onnxmltools", "numpy")
CASES = ("natural_scales", "breast_cancer")
HEADS = {
    "linear": ("stack linear", {"fusion": "stack", "meta": "linear"}),
    "gbdt": ("stack gbdt", {"fusion": "stack", "meta": "gbdt"}),
    "mean": ("mean", {"fusion": "mean"}),
    "gate": ("gate", {"fusion": "gate"}),
}
BUILDS = {
    "plain": {"availability": False},
    "default": {},
    "explain": {"explain": True},
}
Verdict = tuple[str, str, str]  # PASS/MISS, what, value


@dataclasses.dataclass(frozen=True)
class Case:
    """Two sources trained on rows of their own, the joint rows to merge on and test rows to time."""

    key: str
    paths: tuple[Path, ...]
    columns: tuple[tuple[str, ...], ...]
    labels: tuple[str, ...]
    data: Path
    test: object  # pandas DataFrame of the test rows (complete)


def make_case(key: str, folder: Path) -> Case:
    """The data set's split of repetition 0: A's rows, B's rows, the merge rows, the test rows."""
    data = real_data.DATASETS[key]
    frame, y = data.load()
    split = real_data.split(y, 0, stratify=data.task == "classification")
    x = frame.to_numpy(np.float64)
    sources = data.sources(list(frame.columns))
    paths = []
    for letter, source, own in zip("ab", sources, (split.a, split.b)):
        where = [frame.columns.get_loc(c) for c in source.columns]
        paths.append(real_data.write_source(source, x[own][:, where], y[own], 0, folder / f"{key}_{letter}.onnx"))
    joint = folder / f"{key}_joint.parquet"
    frame.iloc[split.merge].assign(y=y[split.merge]).to_parquet(joint, index=False)
    return Case(key, tuple(paths), tuple(s.columns for s in sources), tuple(s.label for s in sources), joint,
                frame.iloc[split.test])  # fmt: skip


def build(case: Case, head: str, folder: Path) -> tuple[dict[str, Path], dict[str, dict]]:
    """The three files of one head, and what each merge says of its fitted head (`onnxfuse.fusion`)."""
    found, fusion = {}, {}
    for name, extra in BUILDS.items():
        output = folder / f"{case.key}_{head}_{name}.onnx"
        spec = FuseSpec(
            models=tuple(ModelSpec(p, c) for p, c in zip(case.paths, case.columns)),
            output=output, data=case.data, target="y", seed=0, **HEADS[head][1], **extra,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the merge's caveats about the head's quality: not what is measured
            fusion[name] = merge(spec).fusion
        found[name] = output
    return found, fusion


def describe(files: dict[str, Path], fusion: dict[str, dict]) -> list[str]:
    """Size, node count and outputs of each file, and the fitted head's tuned settings (a stack's learner: the
    head trained with source dropout may choose a larger model than the one without)."""
    import onnx

    lines = []
    for name, path in files.items():
        model = onnx.load(str(path), load_external_data=False)
        outputs = ", ".join(o.name for o in model.graph.output)
        tuned = f"; tuned {json.dumps(fusion[name]['tuned'])}" if fusion[name].get("tuned") else ""
        lines.append(f"     {name:8} {path.stat().st_size:>10,} B {len(model.graph.node):>5} nodes  outputs: {outputs}"
                     + tuned)  # fmt: skip
    return lines


def inputs(path: Path, case: Case, threads: int):
    """The session of `path` and the test rows packed as its `features` (complete, and with each group NaN)."""
    sess = session(path, threads)
    features = json.loads(sess.get_modelmeta().custom_metadata_map["onnxfuse.features"])
    dtype = np.float64 if sess.get_inputs()[0].type == "tensor(double)" else np.float32
    complete = case.test[features].to_numpy(dtype)
    blanked = []
    for group in case.columns:
        rows = case.test.copy()
        rows.loc[:, list(group)] = np.nan
        blanked.append(rows[features].to_numpy(dtype))
    return sess, complete, blanked


def agreement(sessions: dict[str, object], complete: dict[str, np.ndarray], blanked: dict[str, list]) -> list[str]:
    """Max |difference| of the first (probabilities/prediction) output between the builds on complete rows, and the
    share of rows with finite outputs when a group is missing."""
    main = {}
    for name, sess in sessions.items():
        wanted = "probabilities" if "probabilities" in [o.name for o in sess.get_outputs()] else "prediction"
        main[name] = (wanted, sess.run([wanted], {"features": complete[name]})[0])
    lines = [
        f"     on {len(complete['plain'])} complete test rows, max |{main['default'][0]}| difference: "
        f"default vs plain {np.max(np.abs(main['default'][1] - main['plain'][1])):.2e} (a stack trains with source "
        "dropout), "
        f"explain vs default {np.max(np.abs(main['explain'][1] - main['default'][1])):.2e}"
    ]
    shares = []
    for name, sess in sessions.items():
        wanted = main[name][0]
        per_group = []
        for letter, x in zip("AB", blanked[name]):
            out = np.asarray(sess.run([wanted], {"features": x})[0], dtype=np.float64)
            per_group.append(f"{letter} missing {np.isfinite(out.reshape(len(x), -1)).all(axis=1).mean():.0%}")
        shares.append(f"{name} " + ", ".join(per_group))
    lines.append("     rows with finite output: " + "; ".join(shares))
    return lines


def run_case(case: Case, heads: Sequence[str], settings: Settings, folder: Path) -> list[Verdict]:
    print(f"\n== case {case.key}: {' + '.join(case.labels)}; {len(case.test)} test rows timed (tiled to the batch)")
    timings: dict[str, dict[int, dict[str, Timing]]] = {}
    for head in heads:
        start = time.perf_counter()
        files, fusion = build(case, head, folder)
        print(f"\n   head {HEADS[head][0]} (three merges {time.perf_counter() - start:.1f} s):")
        print("\n".join(describe(files, fusion)))
        prepared = {name: inputs(path, case, settings.threads) for name, path in files.items()}
        sessions = {name: p[0] for name, p in prepared.items()}
        print("\n".join(agreement(sessions, {n: p[1] for n, p in prepared.items()},
                                  {n: p[2] for n, p in prepared.items()})))  # fmt: skip
        timings[head] = {}
        width = prepared["plain"][1].shape[1]
        floor = session(identity_model(folder / f"identity_{width}.onnx", width), settings.threads)
        for batch in BATCHES:
            calls: dict[str, Callable[[], object]] = {}
            for name, (sess, complete, _) in prepared.items():
                feed = {"features": batch_rows(complete, batch)}
                calls[name] = lambda sess=sess, feed=feed: sess.run(None, feed)
            x = batch_rows(prepared["plain"][1], batch).astype(np.float32)
            calls["floor"] = lambda x=x, floor=floor: floor.run(None, {"features": x})
            timings[head][batch] = measure(calls, settings)
    print_table(case.key, timings)
    return verdicts(case.key, timings)


def print_table(key: str, timings: dict[str, dict[int, dict[str, Timing]]]) -> None:
    print(
        f"\n   case {key}: median ms per call [interquartile range] (calls); ratios of medians over plain; the extra "
        "µs per call of default and explain; floor: the same call on a 1-node Identity graph (info)"
    )
    print(f"   {'head':13} {'batch':>5}  " + "".join(f"{name:>30}" for name in BUILDS)
          + f" {'default/plain':>14} {'explain/plain':>14} {'+µs default':>11} {'+µs explain':>11}"
          + f" {'floor ms':>9}")  # fmt: skip
    for head, per_batch in timings.items():
        for batch, row in per_batch.items():
            cells = []
            for name in BUILDS:
                t = row[name]
                low, high = t.iqr
                cells.append(f"{fmt_ms(t.median):>9} [{fmt_ms(low)}-{fmt_ms(high)}] ({len(t.samples)})".rjust(30))
            plain, default, explain = (row[name].median for name in BUILDS)
            print(f"   {HEADS[head][0]:13} {batch:>5}  " + "".join(cells)
                  + f" {default / plain:14.3f} {explain / plain:14.3f} {(default - plain) * 1e3:11.1f}"
                  + f" {(explain - plain) * 1e3:11.1f} {fmt_ms(row['floor'].median):>9}")  # fmt: skip


def verdicts(key: str, timings: dict[str, dict[int, dict[str, Timing]]]) -> list[Verdict]:
    found = []
    for head, per_batch in timings.items():
        for batch in GOAL_BATCHES:
            ratio = per_batch[batch]["default"].median / per_batch[batch]["plain"].median
            found.append((
                "PASS" if ratio <= AVAILABILITY_TARGET else "MISS",
                f"{key} {HEADS[head][0]} batch {batch}: default / plain",
                f"{ratio:.3f}x (target <= {AVAILABILITY_TARGET}x)",
            ))  # fmt: skip
        ratio = per_batch[EXPLAIN_BATCH]["explain"].median / per_batch[EXPLAIN_BATCH]["plain"].median
        found.append((
            "PASS" if ratio <= EXPLAIN_TARGET else "MISS",
            f"{key} {HEADS[head][0]} batch {EXPLAIN_BATCH}: explain / plain",
            f"{ratio:.3f}x (target <= {EXPLAIN_TARGET}x)",
        ))  # fmt: skip
    return found


def _selection(given: str | None, known: Sequence[str], what: str, parser: argparse.ArgumentParser) -> list[str]:
    if given is None:
        return list(known)
    chosen = [s.strip() for s in given.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in known]
    if unknown:
        parser.error(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(known)}")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    passive_threads()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    Settings.add_arguments(parser)
    parser.add_argument("--cases", help=f"comma-separated subset of: {', '.join(CASES)}")
    parser.add_argument("--heads", help=f"comma-separated subset of: {', '.join(HEADS)}")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with the models")
    args = parser.parse_args(argv)
    settings = Settings.parsed(parser, args)
    cases = _selection(args.cases, CASES, "cases", parser)
    heads = _selection(args.heads, list(HEADS), "heads", parser)
    started = time.perf_counter()
    print(settings.describe(PACKAGES, BATCHES))
    print("builds: plain = FuseSpec(availability=False); default; explain = default + explain=True")
    with limited_threads(settings.threads), temporary_folder("bench_availability.", keep=args.keep) as root:
        found = [v for key in cases for v in run_case(make_case(key, root), heads, settings, root)]
    print("\ngoals:")
    for verdict, name, value in found:
        print(f"  {verdict}  {name:52} {value}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; machine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
