"""Tests of `onnxfuse predict` and `onnxfuse evaluate`: columns by name, atomic outputs, sources by sha256."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import assert_one_error_line, run_cli

from onnxfuse import FusedModel
from onnxfuse.report import metrics

EXAMPLE = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's models and rows, a fused file with --explain, and a 'new month' of rows: the training rows
    shuffled, columns reordered, c and d missing on every third row."""
    here = tmp_path_factory.mktemp("predict")
    for name in ("a.onnx", "b.onnx", "train.csv"):
        shutil.copy(EXAMPLE / name, here / name)
    merged = run_cli("merge", here / "a.onnx", here / "b.onnx", "--data", here / "train.csv", "--target", "y",
                     "--features", "a,b", "--features", "c,d", "--meta", "linear", "--explain",
                     "-o", here / "fused.onnx")  # fmt: skip
    assert merged.exit_code == 0, merged.stderr
    rows = pd.read_csv(here / "train.csv").sample(frac=1.0, random_state=5).reset_index(drop=True)
    rows.insert(0, "id", np.arange(len(rows)) + 1000)
    rows.loc[rows.index % 3 == 0, ["c", "d"]] = np.nan
    rows["label"] = "a column of the data that happens to be called label"
    rows[["id", "y", "d", "c", "b", "a", "label"]].to_csv(here / "month.csv", index=False)
    return here


def test_predict_writes_labels_probabilities_and_kept_columns_as_the_api_gives(folder: Path) -> None:
    out = folder / "answers.csv"
    result = run_cli("predict", folder / "fused.onnx", folder / "month.csv", "-o", out, "--keep", "id")
    assert result.exit_code == 0, result.stderr
    assert f"wrote {out}: 800 rows" in result.stdout
    answers = pd.read_csv(out)
    assert list(answers.columns) == ["id", "label", "probability_0", "probability_1", "available_m1",
                                     "available_m2", "effect_m1", "effect_m2"]  # fmt: skip
    month = pd.read_csv(folder / "month.csv")
    fused = FusedModel(folder / "fused.onnx")
    np.testing.assert_array_equal(answers["id"], month["id"])
    np.testing.assert_array_equal(answers["label"], fused.predict(month))
    np.testing.assert_allclose(answers[["probability_0", "probability_1"]], fused.predict_proba(month), atol=1e-6)
    assert not answers["available_m2"][month.index % 3 == 0].any()


def test_predict_writes_parquet(folder: Path) -> None:
    out = folder / "answers.parquet"
    result = run_cli("predict", folder / "fused.onnx", folder / "month.csv", "-o", out)
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(out)
    assert table.num_rows == 800 and table.column_names[:2] == ["label", "probability_0"]


@pytest.mark.parametrize(
    ("args", "culprits"),
    [
        (["-o", "{f}/answers.txt"], ["answers.txt", ".csv or .parquet"]),
        (["-o", "{f}/out.csv", "--keep", "nope"], ["no column 'nope'"]),
        (["-o", "{f}/out.csv", "--keep", "label"], ["--keep label"]),
        (["-o", "{f}/month.csv"], ["month.csv", "input"]),
    ],
    ids=["suffix", "keep-missing", "keep-clash", "overwrites-input"],
)
def test_predict_refuses_mistakes_and_writes_nothing(folder: Path, args: list[str], culprits: list[str]) -> None:
    month = (folder / "month.csv").read_bytes()
    listing = sorted(p.name for p in folder.iterdir())
    result = run_cli("predict", folder / "fused.onnx", folder / "month.csv", *(a.format(f=folder) for a in args))
    assert_one_error_line(result, *culprits)
    assert sorted(p.name for p in folder.iterdir()) == listing
    assert (folder / "month.csv").read_bytes() == month


def test_predict_names_the_missing_column(folder: Path, tmp_path: Path) -> None:
    pd.read_csv(folder / "month.csv").drop(columns="c").to_csv(tmp_path / "no_c.csv", index=False)
    result = run_cli("predict", folder / "fused.onnx", tmp_path / "no_c.csv", "-o", tmp_path / "out.csv")
    assert_one_error_line(result, "no_c.csv", "no column 'c'")
    assert not (tmp_path / "out.csv").exists()


def test_evaluate_scores_the_fused_file_and_its_sources_given_in_any_order(folder: Path) -> None:
    report = folder / "evaluation.json"
    result = run_cli("evaluate", folder / "fused.onnx", folder / "b.onnx", folder / "a.onnx",
                     "--data", folder / "month.csv", "--target", "y", "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "evaluated on 800 rows" in result.stdout and "by availability pattern" in result.stdout
    summary = json.loads(report.read_text())
    assert sorted(summary["metrics"]) == ["fused", "m1 a", "m2 b"]
    assert summary["rows"]["patterns"] == {"m1+m2": 533, "m1": 267}
    month = pd.read_csv(folder / "month.csv")
    expected = metrics("classification", month["y"].to_numpy(), FusedModel(folder / "fused.onnx").predict_proba(month),
                       (0, 1))  # fmt: skip
    assert summary["metrics"]["fused"] == expected
    assert set(summary["patterns"]["m1"]["metrics"]) == {"m1 a", "fused"}  # B has no features there


def test_evaluate_without_sources_scores_the_fused_file(folder: Path) -> None:
    result = run_cli("evaluate", folder / "fused.onnx", "--data", folder / "month.csv", "--target", "y")
    assert result.exit_code == 0, result.stderr
    assert "fused" in result.stdout and "m1 a" not in result.stdout


def test_evaluate_refuses_a_source_it_was_not_merged_from(folder: Path, tmp_path: Path) -> None:
    result = run_cli("evaluate", folder / "fused.onnx", folder / "a.onnx", folder / "fused.onnx",
                     "--data", folder / "month.csv", "--target", "y")  # fmt: skip
    assert_one_error_line(result, "not among the given files", "give the files it was merged from")


def test_evaluate_names_a_class_the_model_does_not_know(folder: Path, tmp_path: Path) -> None:
    month = pd.read_csv(folder / "month.csv")
    month.loc[0, "y"] = 7
    month.to_csv(tmp_path / "odd.csv", index=False)
    result = run_cli("evaluate", folder / "fused.onnx", "--data", tmp_path / "odd.csv", "--target", "y")
    assert_one_error_line(result, "odd.csv", "column 'y'", "7", "does not know")
