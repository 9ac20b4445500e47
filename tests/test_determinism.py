"""Same inputs and seed give byte-identical files: across processes, whatever PYTHONHASHSEED, for every head."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightgbm
import numpy as np
import onnxmltools
import pytest
import xgboost
from conftest import columns_of, make_rows, save, write_csv
from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from onnxfuse.pipeline import merge
from onnxfuse.spec import FuseSpec, ModelSpec

MERGE = "from onnxfuse.cli import main; main()"  # the console script, in a fresh interpreter


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Source groups trained on other rows than the fusion data: `pair` (skl2onnx with ZipMap, LightGBM at IR 4),
    `mixed` (+ skl2onnx without ZipMap, XGBoost without ai.onnx), `weights` (+ an MLP whose weights pass 1 KB)
    and `strings` (string classes); the fusion data holds a binary and a string target."""
    folder = tmp_path_factory.mktemp("determinism")
    train, fusion = make_rows(1500, seed=1), make_rows(300, seed=0)
    x, y, ys = train["x"], train["y"], train["ys"]

    def fit(model, columns: str, target: np.ndarray):
        return model.fit(x[:, columns_of(columns.split(","))], target)

    def tree(target: np.ndarray, columns: str):
        return fit(RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0), columns, target)

    lgbm = fit(lightgbm.LGBMClassifier(n_estimators=8, verbose=-1), "c,d", y)
    xgb = fit(xgboost.XGBClassifier(n_estimators=8, max_depth=3), "a,d,e", y)
    mlp = fit(MLPClassifier(hidden_layer_sizes=(128,), max_iter=50, random_state=0), "c,d,e", y)
    ml_input = [("input", MLFloat([None, 2]))]
    models = {
        "lr_zipmap": to_onnx(fit(LogisticRegression(), "a,b", y), x[:1, :2], target_opset=13),
        "lgbm": onnxmltools.convert_lightgbm(lgbm, initial_types=ml_input),
        "rf_plain": to_onnx(tree(y, "b,c"), x[:1, :2], options={"zipmap": False}),
        "xgb": onnxmltools.convert_xgboost(xgb, initial_types=[("input", MLFloat([None, 3]))]),
        "mlp": to_onnx(mlp, x[:1, :3], options={"zipmap": False}),
        "lr_strings": to_onnx(fit(LogisticRegression(), "a,b", ys), x[:1, :2]),
        "rf_strings": to_onnx(tree(ys, "d,e"), x[:1, :2], options={"zipmap": False}),
    }
    paths = {name: save(model, folder / f"{name}.onnx") for name, model in models.items()}
    columns = {"lr_zipmap": "a,b", "lgbm": "c,d", "rf_plain": "b,c", "xgb": "a,d,e", "mlp": "c,d,e",
               "lr_strings": "a,b", "rf_strings": "d,e"}  # fmt: skip
    groups = {
        "pair": ("lr_zipmap", "lgbm"),
        "mixed": ("lr_zipmap", "rf_plain", "lgbm", "xgb"),
        "weights": ("lr_zipmap", "mlp"),
        "strings": ("lr_strings", "rf_strings"),
    }
    return {
        **{group: [(paths[n], columns[n]) for n in names] for group, names in groups.items()},
        "data": write_csv(folder / "rows.csv", fusion),
        "strings_data": write_csv(folder / "strings.csv", fusion, label="ys"),
        "folder": folder,
    }


def fuse_spec(sources: dict[str, object], out: Path, **options) -> FuseSpec:
    models = tuple(ModelSpec(path, tuple(cols.split(","))) for path, cols in sources["pair"])
    return FuseSpec(models=models, output=out, data=sources["data"], target="y", **options)


def test_merge_writes_identical_bytes_for_the_same_seed_and_other_bytes_for_another(sources, tmp_path):
    first, second = tmp_path / "one.onnx", tmp_path / "two.onnx"
    merge(fuse_spec(sources, first, meta="mlp", seed=5))
    merge(fuse_spec(sources, second, meta="mlp", seed=5))
    assert first.read_bytes() == second.read_bytes()
    merge(fuse_spec(sources, second, meta="mlp", seed=6))
    assert first.read_bytes() != second.read_bytes(), "the seed chooses the hold-out rows and the head's start"


HASH_SEEDS = ("1", "2", "random")  # tox sets PYTHONHASHSEED=0; each child gets another string-hash order
# Every trained head, with --data (mean and vote fit their weights), plus the two paths that train nothing or
# write OUT + OUT-stem.<hex>.data. Each name: (sources, flags).
JOBS = {
    "stack_linear": ("pair", ("--fusion", "stack", "--meta", "linear")),
    "stack_mlp": ("pair", ("--fusion", "stack", "--meta", "mlp")),
    "stack_gbdt": ("pair", ("--fusion", "stack", "--meta", "gbdt")),
    "stack_passthrough": ("pair", ("--fusion", "stack", "--meta", "linear", "--passthrough")),
    "gate": ("pair", ("--fusion", "gate")),
    "mean_fitted": ("pair", ("--fusion", "mean")),
    "vote_fitted": ("pair", ("--fusion", "vote")),
    "string_classes_stack": ("strings", ("--fusion", "stack")),
    "string_classes_vote": ("strings", ("--fusion", "vote")),
    "mean_without_data": ("mixed", ("--fusion", "mean")),
    "over_the_limit": ("weights", ("--fusion", "mean")),
}
# A child runs every job in its own order (rotated by its index), so neither string-hash order nor what an
# earlier merge in the same interpreter left behind may reach the bytes. `over_the_limit` lowers emit's 2 GB
# limit to 0 (as tests/test_emit.py does) so OUT's weights go to a content-named file beside it.
CHILD = """
import json, sys
from click.testing import CliRunner
from onnxfuse import emit
from onnxfuse.cli import cli
default = emit.stage.__kwdefaults__["limit"]
for name, args in json.loads(sys.argv[1]):
    emit.stage.__kwdefaults__["limit"] = 0 if name == "over_the_limit" else default
    result = CliRunner().invoke(cli, args)
    if result.exit_code != 0:
        sys.exit(f"{name}: exit {result.exit_code}: {result.stderr}")
"""


def job_args(sources: dict[str, object], name: str, out: Path) -> list[str]:
    kind, flags = JOBS[name]
    args = ["merge", *[str(p) for p, _ in sources[kind]]]
    for _, cols in sources[kind]:
        args += ["--features", cols]
    if name != "mean_without_data":
        data = sources["strings_data" if kind == "strings" else "data"]
        args += ["--data", str(data), "--target", "y"]
    return [*args, *flags, "-o", str(out)]


@pytest.fixture(scope="module")
def merged(sources: dict[str, object]) -> dict[str, dict[str, dict[str, bytes]]]:
    """{hash seed: {job: {file name: bytes}}}: every job merged in three interpreters, two at a time."""
    root = sources["folder"] / "merged"
    children = []
    for index, seed in enumerate(HASH_SEEDS):
        names = list(JOBS)[index:] + list(JOBS)[:index]
        jobs = []
        for name in names:
            (root / seed / name).mkdir(parents=True)
            jobs.append((name, job_args(sources, name, root / seed / name / "fused.onnx")))
        env = {**os.environ, "PYTHONHASHSEED": seed}
        with open(root / f"{seed}.stderr", "wb") as stderr:
            children.append(subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(jobs)], env=env, stderr=stderr))
        if len(children) == 2:  # the machine has 2 cores
            children[0].wait()
    for seed, child in zip(HASH_SEEDS, children):
        assert child.wait() == 0, (root / f"{seed}.stderr").read_text()
    return {
        seed: {name: {p.name: p.read_bytes() for p in sorted((root / seed / name).iterdir())} for name in JOBS}
        for seed in HASH_SEEDS
    }


@pytest.mark.parametrize("job", list(JOBS))
def test_merge_writes_identical_bytes_whatever_the_hash_seed(merged, job):
    files = [merged[seed][job] for seed in HASH_SEEDS]
    expected = ["fused.<hex>.data", "fused.onnx"] if job == "over_the_limit" else ["fused.onnx"]
    assert [re.sub(r"\.[0-9a-f]{16}\.", ".<hex>.", n) for n in files[0]] == expected
    for seed, written in zip(HASH_SEEDS[1:], files[1:]):
        assert written.keys() == files[0].keys(), f"PYTHONHASHSEED={seed} wrote other files"
        for name, content in written.items():
            assert content == files[0][name], f"{name} differs between PYTHONHASHSEED={HASH_SEEDS[0]} and {seed}"


def test_merge_heads_write_distinct_files(merged):
    """Each job above is a merge of its own (no flag silently ignored, so the comparisons are not of one file)."""
    outs = {name: files["fused.onnx"] for name, files in merged[HASH_SEEDS[0]].items()}
    assert len(set(outs.values())) == len(outs)
