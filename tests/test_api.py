"""Tests of the Python API: `onnxfuse.merge` with models and data in memory, `MergeResult`, `FusedModel`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pyarrow as pa
import pytest
from conftest import run_cli
from onnx.reference import ReferenceEvaluator
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import onnxfuse
from onnxfuse import FusedModel, OnnxfuseError

EXAMPLE = Path(__file__).resolve().parents[1] / "models"
FEATURES = [["a", "b"], ["c", "d"]]


@pytest.fixture(scope="module")
def example_frame() -> pd.DataFrame:
    return pd.read_csv(EXAMPLE / "train.csv")


@pytest.fixture(scope="module")
def in_memory(example_frame: pd.DataFrame) -> onnxfuse.MergeResult:
    """The example merged from ModelProtos and a DataFrame, with --explain."""
    protos = [onnx.load(str(EXAMPLE / "a.onnx")), onnx.load(str(EXAMPLE / "b.onnx"))]
    return onnxfuse.merge(protos, example_frame, target="y", features=FEATURES, meta="linear", explain=True)


_NO_WRITES = r"""
import os, sys
import onnx, pandas as pd
import onnxfuse

example = sys.argv[1]
protos = [onnx.load(os.path.join(example, name)) for name in ("a.onnx", "b.onnx")]
frame = pd.read_csv(os.path.join(example, "train.csv"))
WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
CHANGES = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "os.link", "os.symlink",
           "shutil.copyfile", "shutil.rmtree", "tempfile.mkstemp", "tempfile.mkdtemp"}
seen = []

def audit(event, args):
    if event == "open":
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITES)
        if writes:
            seen.append(f"open {path} {mode or flags}")
    elif event in CHANGES:
        seen.append(f"{event} {args[0]}")

sys.addaudithook(audit)
result = onnxfuse.merge(protos, frame, target="y", features=[["a", "b"], ["c", "d"]], meta="linear")
onnx.checker.check_model(result.model, full_check=True)
print("WRITES", seen)
print("FUSED", result.features, result.classes, sorted(result.report["holdout"]["metrics"]))
onnxfuse.merge(protos, frame, target="y", features=[["a", "b"], ["c", "d"]], meta="linear", output="fused.onnx")
print("CONTROL", any("fused.onnx" in line for line in seen))  # the hook sees a merge that writes
"""


def test_merge_returns_a_verified_model_without_touching_disk_when_given_protos_and_a_dataframe(
    tmp_path: Path,
) -> None:
    """Every file Python opens for writing, and every file or folder made or removed, is seen by an audit hook
    (in a child process: hooks cannot be removed; no bytecode caches written on import); onnxruntime reads the
    models from memory, and TMPDIR names no folder."""
    script = tmp_path / "no_writes.py"
    script.write_text(_NO_WRITES)
    env = {**os.environ, "TMPDIR": str(tmp_path / "absent"), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, str(script), str(EXAMPLE)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("WRITES", "FUSED", "CO")))
    assert lines["WRITES"] == "[]"
    assert lines["FUSED"].startswith("('a', 'b', 'c', 'd') (0, 1) ['baseline") and "'m2 model2'" in lines["FUSED"]
    assert lines["CONTROL"] == "True"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fused.onnx", "no_writes.py"]


def test_merge_in_memory_gives_the_bytes_merge_with_an_output_writes(example_frame: pd.DataFrame,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    protos = [onnx.load(str(EXAMPLE / "a.onnx")), onnx.load(str(EXAMPLE / "b.onnx"))]
    in_memory = onnxfuse.merge(protos, example_frame, target="y", features=FEATURES, meta="linear")
    written = onnxfuse.merge(protos, example_frame, target="y", features=FEATURES, meta="linear",
                             output=tmp_path / "fused.onnx")  # fmt: skip
    assert in_memory.sealed == written.sealed == (tmp_path / "fused.onnx").read_bytes()
    assert in_memory.model == onnx.load(str(tmp_path / "fused.onnx"))
    assert in_memory.head.metadata()["meta"] == "linear"
    assert protos[0] == onnx.load(str(EXAMPLE / "a.onnx"))  # the caller's protos are not changed


def test_merge_with_paths_as_strings_writes_the_bytes_the_cli_writes(tmp_path: Path) -> None:
    args = [str(EXAMPLE / "a.onnx"), str(EXAMPLE / "b.onnx")]
    result = onnxfuse.merge(args, str(EXAMPLE / "train.csv"), target="y", features=FEATURES, meta="linear")
    cli = run_cli("merge", *args, "--data", EXAMPLE / "train.csv", "--target", "y", "--features", "a,b",
                  "--features", "c,d", "--meta", "linear", "-o", tmp_path / "cli.onnx")  # fmt: skip
    assert cli.exit_code == 0, cli.stderr
    saved = result.save(tmp_path / "api.onnx")
    assert saved.read_bytes() == (tmp_path / "cli.onnx").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.onnx", "cli.onnx"]  # no temp file left
    check = run_cli("verify", saved, *args)
    assert check.exit_code == 0, check.stderr


def test_merge_with_output_writes_the_file_and_report(example_frame: pd.DataFrame, tmp_path: Path) -> None:
    models = [EXAMPLE / "a.onnx", EXAMPLE / "b.onnx"]
    result = onnxfuse.merge(models, pa.Table.from_pandas(example_frame), target="y", features=FEATURES,
                            meta="linear", output=tmp_path / "f.onnx", report=tmp_path / "r.json")  # fmt: skip
    assert (tmp_path / "f.onnx").read_bytes() == result.sealed
    assert (tmp_path / "r.json").is_file()


def test_save_refuses_a_folder_and_warns_of_another_suffix(in_memory: onnxfuse.MergeResult, tmp_path: Path) -> None:
    with pytest.raises(OnnxfuseError, match="is a folder; give a file name"):
        in_memory.save(f"{tmp_path}/")
    with pytest.warns(onnxfuse.OnnxfuseWarning, match="does not end in .onnx"):
        in_memory.save(tmp_path / "fused.bin")
    assert (tmp_path / "fused.bin").read_bytes() == in_memory.sealed


def test_report_frame_has_one_row_per_model(in_memory: onnxfuse.MergeResult) -> None:
    frame = in_memory.report_frame()
    assert list(frame.columns) == ["accuracy", "log_loss", "roc_auc"]
    assert "fused" in frame.index and "m1 model1" in frame.index
    assert frame.loc["fused", "accuracy"] == in_memory.report["holdout"]["metrics"]["fused"]["accuracy"]


def test_fused_model_predict_takes_columns_by_name_when_the_dataframe_is_shuffled(
    in_memory: onnxfuse.MergeResult, example_frame: pd.DataFrame
) -> None:
    fused = FusedModel(in_memory.model)
    shuffled = example_frame.sample(frac=1.0, random_state=3)[["y", "d", "b", "c", "a"]]
    ordered = fused.predict_proba(example_frame)
    np.testing.assert_array_equal(fused.predict_proba(shuffled), ordered[shuffled.index.to_numpy()])
    np.testing.assert_array_equal(fused.predict(shuffled), fused.predict(example_frame)[shuffled.index.to_numpy()])
    mapping = {name: example_frame[name].to_numpy() for name in ("d", "c", "b", "a")}
    np.testing.assert_array_equal(fused.predict_proba(mapping), ordered)


def test_fused_model_agrees_with_the_reference_evaluator(
    in_memory: onnxfuse.MergeResult, example_frame: pd.DataFrame
) -> None:
    fused = FusedModel(in_memory.model)
    features = example_frame[["a", "b", "c", "d"]].to_numpy(np.float32)[:64]
    expected = ReferenceEvaluator(in_memory.model).run(["probabilities"], {"features": features})[0]
    np.testing.assert_allclose(fused.predict_proba(example_frame.iloc[:64]), expected, atol=1e-5)


def test_fused_model_reads_metadata(in_memory: onnxfuse.MergeResult, tmp_path: Path) -> None:
    path = in_memory.save(tmp_path / "fused.onnx")
    fused = FusedModel(str(path))
    assert fused.features == ("a", "b", "c", "d") and fused.classes == (0, 1) and fused.task == "classification"
    assert [s["name"] for s in fused.sources] == ["model1", "model2"]
    assert fused.fusion["method"] == "stack"


def test_explain_gives_availability_and_effects(in_memory: onnxfuse.MergeResult, example_frame) -> None:
    rows = example_frame.iloc[:10].copy()
    rows.loc[rows.index[:4], ["c", "d"]] = np.nan
    explained = FusedModel(in_memory.model).explain(rows)
    assert explained["available"].shape == (10, 2) and explained["source_effects"].shape == (10, 2)
    assert not explained["available"][:4, 1].any() and explained["available"][4:].all()
    np.testing.assert_array_equal(explained["source_effects"][:4, 1], 0.0)


def test_explain_names_the_fix_when_merged_without_it(example_frame: pd.DataFrame, tmp_path: Path) -> None:
    run = run_cli("merge", EXAMPLE / "a.onnx", EXAMPLE / "b.onnx", "--fusion", "mean", "-o", tmp_path / "m.onnx",
                  "--features", "a,b", "--features", "c,d")  # fmt: skip
    assert run.exit_code == 0, run.stderr
    with pytest.raises(OnnxfuseError, match="merged without --explain"):
        FusedModel(tmp_path / "m.onnx").explain(example_frame)


MODELS = [EXAMPLE / "a.onnx", EXAMPLE / "b.onnx"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda frame: onnxfuse.merge(MODELS, frame, tagret="y"), "unknown option 'tagret'; did you mean 'target'"),
        (lambda frame: onnxfuse.merge(MODELS, frame, target="y", holdout="0.2"), "'holdout' must be a float"),
        (lambda frame: onnxfuse.merge(MODELS, frame, target="y", features=[["a"]]), "features has 1 entries for 2"),
        (lambda frame: onnxfuse.merge("a.onnx", frame, target="y"), "give the models as a list"),
        (lambda frame: onnxfuse.merge(MODELS, frame, target="y", ort=True), "ort=True writes OUT.ort"),
        (lambda frame: onnxfuse.merge([MODELS[0], 3], frame, target="y"), "model 2 is a int"),
        (lambda frame: onnxfuse.merge(MODELS, [1, 2], target="y"), "a list is not data"),
        (lambda frame: onnxfuse.merge(MODELS, {"a": [1.0, 2.0], "y": [1]}, target="y"), "different numbers of rows"),
        (lambda frame: onnxfuse.merge(MODELS, frame.drop(columns="c"), target="y", features=FEATURES),
         r"model 2 \(b.onnx\): input 'X' needs column 'c'"),
        (lambda frame: FusedModel(EXAMPLE / "a.onnx"), "not written by onnxfuse merge"),
        (lambda frame: FusedModel(EXAMPLE / "missing.onnx"), "no such file"),
    ],
    ids=["typo", "type", "features", "not-a-list", "ort", "not-a-model", "not-data", "ragged", "column", "not-fused",
         "no-file"],
)
def test_mistakes_raise_onnxfuse_error_naming_them(call, message: str, example_frame: pd.DataFrame) -> None:
    with pytest.raises(OnnxfuseError, match=message):
        call(example_frame)


def test_predict_names_a_missing_column(in_memory: onnxfuse.MergeResult, example_frame: pd.DataFrame) -> None:
    with pytest.raises(OnnxfuseError, match=r"data <DataFrame>: no column 'c' \(columns: a, b, d, y\)"):
        FusedModel(in_memory.model).predict(example_frame.drop(columns="c"))


def test_merge_on_a_real_table_keeps_up_with_the_best_source_and_falls_back_where_a_group_is_missing() -> None:
    """Breast cancer, features on their natural scales: two teams' models on disjoint rows and column groups."""
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    names = [c for c in frame.columns if c != "target"]
    group_a, group_b = names[:10], names[10:]
    rows = np.random.default_rng(0).permutation(len(frame))
    team_a, team_b, joint = rows[:150], rows[150:300], rows[300:]
    a = RandomForestClassifier(n_estimators=50, max_depth=6, random_state=0).fit(frame.iloc[team_a][group_a],
                                                                        frame.iloc[team_a].target)  # fmt: skip
    b = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(frame.iloc[team_b][group_b],
                                                                              frame.iloc[team_b].target)  # fmt: skip
    protos = [to_onnx(a, frame.iloc[:1][group_a].to_numpy(np.float32), target_opset=18),
              to_onnx(b, frame.iloc[:1][group_b].to_numpy(np.float32), target_opset=18)]  # fmt: skip
    result = onnxfuse.merge(protos, frame.iloc[joint], target="target", features=[group_a, group_b])
    metrics = result.report["holdout"]["metrics"]  # 54 hold-out rows: B alone is near perfect (AUC 1.0)
    assert metrics["fused"]["roc_auc"] >= max(metrics["m1 model1"]["roc_auc"], metrics["m2 model2"]["roc_auc"]) - 0.01
    only_a = frame.iloc[joint].copy()
    only_a[group_b] = np.nan
    fused = FusedModel(result.model).predict_proba(only_a)
    assert np.isfinite(fused).all()
    alone = a.predict(frame.iloc[joint][group_a])
    assert (fused.argmax(axis=1) == alone).mean() > 0.9  # a row with only A's group answers like A


def test_merge_in_memory_reads_a_source_s_external_weights(example_frame: pd.DataFrame, tmp_path: Path) -> None:
    """A source whose weights sit in a .data file beside it: the in-memory merge reads them (no file written)
    and gives the bytes the merge with an output writes."""
    from sklearn.neural_network import MLPClassifier

    x, y = example_frame[["a", "b"]].to_numpy(np.float32), example_frame["y"].to_numpy()
    model = to_onnx(MLPClassifier(hidden_layer_sizes=(32,), max_iter=50, random_state=0).fit(x[:300], y[:300]),
                    x[:1], options={"zipmap": False})  # fmt: skip
    for tensor in model.graph.initializer:  # raw_data, so the large ones can move out
        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor), tensor.name))
    onnx.external_data_helper.convert_model_to_external_data(model, location="mlp.data", size_threshold=100)
    onnx.save(model, str(tmp_path / "mlp.onnx"))
    assert any(t.data_location == onnx.TensorProto.EXTERNAL
               for t in onnx.load(str(tmp_path / "mlp.onnx"), load_external_data=False).graph.initializer)  # fmt: skip
    models = [tmp_path / "mlp.onnx", EXAMPLE / "b.onnx"]
    in_memory = onnxfuse.merge(models, example_frame, target="y", features=FEATURES, meta="linear")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.data", "mlp.onnx"]
    written = onnxfuse.merge(models, example_frame, target="y", features=FEATURES, meta="linear",
                             output=tmp_path / "fused.onnx")  # fmt: skip
    assert in_memory.sealed == written.sealed
