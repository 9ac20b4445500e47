"""Hold-out quality of every fusion head on the seed-like task, next to its sources and a baseline.

Model A (gradient boosting, skl2onnx) knows columns a, b; model B (LightGBM, onnxmltools)
knows c, d; each was trained on its own 20,000 rows. The label's logit has an a*c
interaction that neither source can see. Each head is trained by `onnxfuse merge` on
`--rows` joint rows (default 40,000) with a 20 % stratified hold-out (seed 0), and the
table shows the hold-out figures from the merge report:

    python benchmarks/fusion_quality.py            # about a minute on 2 cores
    python benchmarks/fusion_quality.py --rows 4000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from _children import repo_module

from onnxfuse.pipeline import merge
from onnxfuse.spec import FuseSpec, ModelSpec

generators = repo_module("tests/generators.py")

HEADS = [
    ("stack linear", {"fusion": "stack"}),
    ("stack linear + passthrough", {"fusion": "stack", "passthrough": True}),
    ("stack mlp + passthrough", {"fusion": "stack", "meta": "mlp", "passthrough": True}),
    ("stack gbdt + passthrough", {"fusion": "stack", "meta": "gbdt", "passthrough": True}),
    ("gate", {"fusion": "gate"}),
    ("mean (fitted weights)", {"fusion": "mean"}),
    ("vote (fitted weights)", {"fusion": "vote"}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40_000, help="joint fusion rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = generators.group_sources(
            folder, generators.interaction_task(20_000, seed=1), generators.interaction_task(20_000, seed=2)
        )
        x, y = generators.interaction_task(args.rows, seed=3)
        data = folder / "joint.parquet"
        pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "d": x[:, 3], "y": y}), data)
        print(f"seed-like task: {args.rows} joint rows, 20 % hold-out, seed 0; command: {' '.join(sys.argv)}")
        print(f"{'head':36s} {'accuracy':>9s} {'log loss':>9s} {'ROC AUC':>8s} {'merge s':>8s}")
        for name, options in HEADS:
            spec = FuseSpec(
                models=(ModelSpec(models[0], ("a", "b")), ModelSpec(models[1], ("c", "d"))),
                output=folder / "fused.onnx", data=data, target="y", **options,
            )  # fmt: skip
            start = time.perf_counter()
            metrics = merge(spec).fusion["holdout"]["metrics"]
            seconds = time.perf_counter() - start
            if name == HEADS[0][0]:
                for source in ("m1 a", "m2 b"):
                    _row(f"source {source}", metrics[source])
            _row(name, metrics["fused"], seconds)
            baseline = next(k for k in metrics if k.startswith("baseline"))
            _row(f"  {baseline}", metrics[baseline])
    return 0


def _row(name: str, values: dict, seconds: float | None = None) -> None:
    timing = f"{seconds:8.1f}" if seconds is not None else ""
    print(f"{name:36s} {values['accuracy']:9.4f} {values['log_loss']:9.4f} {values['roc_auc']:8.4f} {timing}")


if __name__ == "__main__":
    raise SystemExit(main())
