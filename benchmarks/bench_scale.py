"""Fusion data at scale: `onnxfuse merge` on 1M, 4M and 16M rows of a partitioned Parquet dataset.

The data: 20 float32 features on natural, unequal scales (0.01 to 10,000; some log-normal, some with a
few NaN) and a binary target `y`, in files of 1M rows with row groups of 131,072 rows. Three sources from
skl2onnx, trained on 20,000 rows generated apart (a disjoint seed): a scaled logistic regression on f0..f6, a
random forest on f7..f13, a scaled MLP on f14..f19. The merge is the default one (stack, `--meta auto`,
`--fit-rows 1000000`): at 1M rows every row is in memory and split as before; at 4M and 16M the head is fitted
on a 1M-row sample and the hold-out table measured over every hold-out row, streamed piece by piece.

Each measurement is a fresh subprocess (peak RSS from `os.wait4`):

    merge N      onnxfuse.merge(...) on N rows, local engine; wall, peak RSS, the time of the stage that
                 streams the hold-out rows (from the progress reporter), and the output's sha256
    fused N      the floor for that stage: a plain loop over the same files' row groups, two threads (one
                 onnxruntime thread each, as the merge's local engine), that reads the same columns with pyarrow,
                 picks the same hold-out rows and runs the fused file `merge N` wrote (the sources and the head:
                 what the stage computes) in onnxruntime, in 65,536-row batches
    plain N      the same loop running only the three sources (one session each, both cores): how much of the
                 stage the sources are, printed for information
    ray N        as `merge N` with `--engine ray` (a local Ray started by the merge), only at the largest N

Targets (PASS/MISS is printed; exit status 0 unless something fails):

    wall(merge 16M) / wall(merge 4M)          <= 4.4    linear in the rows
    peak(merge 16M) / peak(merge 1M)          <= 1.2    flat memory
    peak(merge 16M)                           <  1.5 GB
    stage(fused 16M) / stage(merge 16M)       >= 0.9    scoring throughput vs a plain onnxruntime loop
    wall(ray 16M) / wall(merge 16M)           <= 1.5    and the same sha256

Run from the repository root (the 16M dataset takes ~1.4 GB of disk in the temporary folder):

    python benchmarks/bench_scale.py                      # 1M, 4M, 16M rows, one run each
    python benchmarks/bench_scale.py --rows 1,2 --no-ray  # quicker: millions of rows
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from _children import drive, header, run_child, script

FEATURES = [f"f{i}" for i in range(20)]
GROUPS = (FEATURES[:7], FEATURES[7:14], FEATURES[14:])
FILE_ROWS = 1 << 20  # rows per Parquet file (the last one may hold fewer)
GROUP_ROWS = 131_072  # rows per row group
MILLION = 1_000_000


# ------------------------------------------------------------------------------------------------
# Children
# ------------------------------------------------------------------------------------------------


def _rows(count: int, seed: int):
    """`count` rows: features on their natural scales and the target, from a seeded generator."""
    import numpy as np

    rng = np.random.default_rng(seed)
    z = rng.normal(size=(count, len(FEATURES))).astype(np.float32)
    scales = np.logspace(-2, 4, len(FEATURES)).astype(np.float32)
    x = z * scales
    x[:, 3::5] = np.exp(z[:, 3::5]) * scales[3::5]  # log-normal, as amounts and counts are
    logit = (z[:, 0] - 0.8 * z[:, 2] + 0.6 * z[:, 3] * z[:, 5] + np.abs(z[:, 8]) - 0.9 + 0.7 * np.sin(2 * z[:, 10])
             - 0.5 * z[:, 12] + 0.6 * z[:, 15] * z[:, 16] - 0.4 * z[:, 19] ** 2 + 0.4)  # fmt: skip
    y = (rng.random(count) < 1 / (1 + np.exp(-2 * logit))).astype(np.int64)
    x[rng.random(count) < 0.002, 9] = np.nan  # a few missing values the forest reads as it was trained
    return x, y


def make(folder: str, millions: str) -> dict:
    """The three sources (once) and the dataset of `millions` x 1M rows in `folder/data-<m>M`."""
    import onnx
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(folder)
    if not (root / "c.onnx").exists():
        from skl2onnx import to_onnx
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x, y = _rows(20_000, seed=1)
        learners = (make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                    RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0),
                    make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=300, random_state=0)))  # fmt: skip
        for name, learner, group in zip("abc", learners, GROUPS):
            columns = [FEATURES.index(c) for c in group]
            learner.fit(x[:, columns], y)
            onnx.save(to_onnx(learner, x[:1, columns], options={"zipmap": False}), root / f"{name}.onnx")
    data = root / f"data-{millions}M"
    total = int(millions) * MILLION
    data.mkdir()
    for index, start in enumerate(range(0, total, FILE_ROWS)):
        x, y = _rows(min(FILE_ROWS, total - start), seed=1000 + index)
        table = pa.table({**{name: x[:, i] for i, name in enumerate(FEATURES)}, "y": y})
        pq.write_table(table, data / f"part-{index:03d}.parquet", row_group_size=GROUP_ROWS)
    return {"rows": total, "bytes": sum(p.stat().st_size for p in data.iterdir())}


class _Stages:
    """A progress reporter that times the stages."""

    def __init__(self) -> None:
        self.started: list[tuple[str, float]] = []

    def stage(self, text: str) -> None:
        self.started.append((text, time.perf_counter()))

    def rows(self, count: int, total: int) -> None:
        pass

    def seconds(self, prefix: str) -> float | None:
        ends = [*self.started[1:], ("", time.perf_counter())]
        return next((end - start for (text, start), (_, end) in zip(self.started, ends) if text.startswith(prefix)),
                    None)  # fmt: skip


def merge(folder: str, millions: str, engine: str) -> dict:
    """The default merge of the three sources on `data-<m>M`, its stages timed."""
    start = time.perf_counter()
    import onnxfuse

    root = Path(folder)
    out = root / f"fused-{millions}M-{engine}.onnx"
    stages = _Stages()
    imported = time.perf_counter()
    result = onnxfuse.merge([root / f"{n}.onnx" for n in "abc"], str(root / f"data-{millions}M"),
                            features=[list(g) for g in GROUPS], target="y", output=out, engine=engine,
                            progress=stages)  # fmt: skip
    holdout = result.report["holdout"]
    return {
        "work_s": time.perf_counter() - imported,
        "wall_in_s": time.perf_counter() - start,
        "stream_s": stages.seconds("measuring the head on the hold-out rows"),  # not the per-pattern table
        "sample_s": stages.seconds("reading"),
        "stages": [text for text, _ in stages.started],
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "rows": holdout["rows"],
        "metrics": holdout["metrics"],
        "chosen": result.report.get("chosen"),
    }


def plain(folder: str, millions: str) -> dict:
    """The floor of the streaming stage: read, pick the hold-out rows, run the sources; nothing else."""
    import numpy as np
    import onnxruntime as ort
    import pyarrow.parquet as pq

    from onnxfuse.sampling import held_out

    root = Path(folder)
    sessions = [ort.InferenceSession(str(root / f"{n}.onnx"), providers=["CPUExecutionProvider"]) for n in "abc"]
    start = time.perf_counter()
    rows = scored = 0
    total = np.zeros(2)
    for path in sorted((root / f"data-{millions}M").glob("*.parquet")):
        file = pq.ParquetFile(path)
        offset = 0
        for group in range(file.num_row_groups):
            table = file.read_row_group(group, columns=[*FEATURES, "y"])
            count = table.num_rows
            held = held_out(path.name, offset, count, seed=0, holdout=0.2)
            offset += count
            rows_held = np.flatnonzero(held)  # positions: a boolean mask costs 20x more per column
            x = np.stack([table.column(name).to_numpy().take(rows_held) for name in FEATURES], axis=1)
            for batch in range(0, len(x), 65_536):
                for session, group_names in zip(sessions, GROUPS):
                    columns = [FEATURES.index(c) for c in group_names]
                    name = session.get_inputs()[0].name
                    total += session.run(None, {name: x[batch : batch + 65_536][:, columns]})[1].sum(axis=0)
            rows += count
            scored += len(x)
    return {"work_s": time.perf_counter() - start, "rows": rows, "scored": scored, "checksum": total.tolist()}


def fused(folder: str, millions: str) -> dict:
    """The floor of the streaming stage: the fused file over the hold-out rows, as the local engine runs it."""
    import concurrent.futures

    import numpy as np
    import onnxruntime as ort
    import pyarrow.parquet as pq

    from onnxfuse.sampling import held_out

    root = Path(folder)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(root / f"fused-{millions}M-local.onnx"), options,
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    pieces = []
    for path in sorted((root / f"data-{millions}M").glob("*.parquet")):
        offset = 0
        for group in range(pq.ParquetFile(path).num_row_groups):
            count = pq.ParquetFile(path).metadata.row_group(group).num_rows
            pieces.append((path, group, offset, count))
            offset += count

    def job(piece: tuple) -> tuple[int, float]:
        path, group, offset, count = piece
        table = pq.ParquetFile(path).read_row_group(group, columns=[*FEATURES, "y"])
        held = held_out(path.name, offset, count, seed=0, holdout=0.2)
        rows = np.flatnonzero(held)  # positions: a boolean mask costs 20x more per column
        x = np.stack([table.column(name).to_numpy().take(rows) for name in FEATURES], axis=1)
        total = 0.0
        for batch in range(0, len(x), 65_536):
            total += float(session.run(["probabilities"], {"features": x[batch : batch + 65_536]})[0][:, 1].sum())
        return len(x), total

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(job, pieces))
    return {"work_s": time.perf_counter() - start, "scored": sum(r[0] for r in results),
            "checksum": sum(r[1] for r in results)}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,4,16", help="dataset sizes in millions of rows (default 1,4,16)")
    parser.add_argument("--no-ray", action="store_true", help="skip --engine ray")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    sizes = [int(m) for m in args.rows.split(",")]
    print(header(["onnxfuse", "onnxruntime", "pyarrow", "scikit-learn", "lightgbm", "ray"]))
    return drive("onnxfuse-scale-", args.keep, lambda root: _drive(root, sizes, ray=not args.no_ray))


def _drive(root: Path, sizes: list[int], *, ray: bool) -> int:
    me = __file__
    runs: dict[str, object] = {}
    for m in sizes:
        made = run_child(me, "make", [str(root), str(m)], root / "logs" / f"make{m}.json", cwd=root)
        size = made.report["bytes"] / 2**20
        print(f"data {m}M: {made.report['rows']:,} rows, {size:,.0f} MiB of Parquet", flush=True)
        runs[f"merge {m}M"] = run_child(me, "merge", [str(root), str(m), "local"], root / "logs" / f"merge{m}.json",
                                        cwd=root)  # fmt: skip
        runs[f"fused {m}M"] = run_child(me, "fused", [str(root), str(m)], root / "logs" / f"fused{m}.json", cwd=root)
        runs[f"plain {m}M"] = run_child(me, "plain", [str(root), str(m)], root / "logs" / f"plain{m}.json", cwd=root)
        if ray and m == max(sizes):
            runs[f"ray {m}M"] = run_child(me, "merge", [str(root), str(m), "ray"], root / "logs" / f"ray{m}.json",
                                          cwd=root)  # fmt: skip
        for key in (f"merge {m}M", f"fused {m}M", f"plain {m}M", f"ray {m}M"):
            if key in runs:
                sample = runs[key]
                stream = sample.report.get("stream_s")
                shown = f", streamed hold-out stage {stream:.1f} s" if stream else ""
                print(f"  {key:>10}: {sample.wall_s:7.1f} s wall, {sample.peak_mib:7.0f} MiB peak{shown}", flush=True)
        if m != max(sizes):
            for path in (root / f"data-{m}M").iterdir():
                path.unlink()
    _targets(runs, sizes, ray=ray)
    largest = runs[f"merge {max(sizes)}M"].report
    print("\nlargest merge's hold-out table:", json.dumps({"rows": largest["rows"], "metrics": largest["metrics"]}))
    return 0


def _targets(runs: dict, sizes: list[int], *, ray: bool) -> None:
    small, large = min(sizes), max(sizes)
    middle = large // 4 if large // 4 in sizes else None
    checks = []
    merge_large, merge_small = runs[f"merge {large}M"], runs[f"merge {small}M"]
    if middle is not None:
        ratio = merge_large.wall_s / runs[f"merge {middle}M"].wall_s
        checks.append((f"wall merge {large}M / merge {middle}M", ratio, ratio <= 4.4, "<= 4.4"))
    ratio = merge_large.peak_mib / merge_small.peak_mib
    checks.append((f"peak RSS merge {large}M / merge {small}M", ratio, ratio <= 1.2, "<= 1.2"))
    checks.append((f"peak RSS merge {large}M (MiB)", merge_large.peak_mib, merge_large.peak_mib * 2**20 < 1.5e9,
                   "< 1.5 GB"))  # fmt: skip
    stream = merge_large.report.get("stream_s")
    if stream:
        ratio = runs[f"fused {large}M"].report["work_s"] / stream
        checks.append((f"throughput merge {large}M stage / plain loop of the fused file", ratio, ratio >= 0.9,
                       ">= 0.9"))  # fmt: skip
        sources = runs[f"plain {large}M"].report["work_s"] / stream
        print(f"\n(for information: the plain loop of the sources alone takes {sources:.3f} of the stage's time)")
    if ray:
        ray_run = runs[f"ray {large}M"]
        ratio = ray_run.wall_s / merge_large.wall_s
        same = ray_run.report["sha256"] == merge_large.report["sha256"]
        checks.append((f"wall ray {large}M / local {large}M", ratio, ratio <= 1.5, "<= 1.5"))
        checks.append(("ray and local write the same bytes", float(same), same, "same sha256"))
    print("\ntargets:")
    for name, value, ok, goal in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {name}: {value:.3f} (goal {goal})")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    script({"make": make, "merge": merge, "fused": fused, "plain": plain}, main)
