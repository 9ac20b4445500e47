"""Tests of `merge --ort`: OUT.ort and its required-operators config beside OUT, equal to the .onnx, reproducible."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import Result
from conftest import run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "models"
ROWS = 200
OUTPUTS = ["fused.onnx", "fused.ort", "fused.required_operators.config"]


@pytest.fixture(autouse=True)
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONNXFUSE_DEBUG", raising=False)


def merge_args(out: Path) -> list[object]:
    return ["merge", "--spec", EXAMPLE / "fuse.toml", "--ort", "-o", out]


def merged(result: Result) -> None:
    assert result.exit_code == 0, f"stdout: {result.stdout!r}\nstderr: {result.stderr!r}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The models/ example merged with --ort twice, each into an empty folder of its own."""
    root = tmp_path_factory.mktemp("ort")
    folders = (root / "first", root / "second")
    for folder in folders:
        folder.mkdir()
        result = run_cli(*merge_args(folder / "fused.onnx"))
        merged(result)
        assert "fused.ort" in result.stdout.splitlines()[-1], result.stdout
        assert result.stderr == ""
    return folders


def example_rows(count: int = ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` rows of models/train.csv: features a..d as float32, and the label."""
    table = np.loadtxt(EXAMPLE / "train.csv", delimiter=",", skiprows=1, max_rows=count, dtype=np.float64)
    return table[:, :4].astype(np.float32), table[:, 4].astype(np.int64)


def test_merge_writes_ort_and_config_beside_out_when_ort_flag(runs: tuple[Path, Path]) -> None:
    for folder in runs:
        assert sorted(p.name for p in folder.iterdir()) == OUTPUTS, "nothing else (no temp files) beside OUT"


def test_merge_writes_ort_that_gives_onnx_outputs_when_ort_flag(runs: tuple[Path, Path]) -> None:
    folder = runs[0]
    x, _ = example_rows()
    from_ort = ort.InferenceSession(str(folder / "fused.ort"))
    from_onnx = ort.InferenceSession(str(folder / "fused.onnx"))
    assert [o.name for o in from_ort.get_outputs()] == ["label", "probabilities"]
    assert [i.name for i in from_ort.get_inputs()] == ["features"]

    label, probabilities = from_ort.run(["label", "probabilities"], {"features": x})
    expected_label, expected_probabilities = from_onnx.run(["label", "probabilities"], {"features": x})

    assert label.shape == (ROWS,) and probabilities.shape == (ROWS, 2)
    np.testing.assert_array_equal(label, expected_label)
    np.testing.assert_allclose(probabilities, expected_probabilities, rtol=0, atol=1e-5)


def test_merge_writes_config_with_standard_domains_only_when_ort_flag(runs: tuple[Path, Path]) -> None:
    text = (runs[0] / "fused.required_operators.config").read_text()
    operators = [line for line in text.splitlines() if line and not line.startswith("#")]

    assert operators, text
    for line in operators:
        domain, version, ops = line.split(";")
        assert domain in ("ai.onnx", "ai.onnx.ml"), line
        assert version.isdigit() and ops, line
    listed = {op for line in operators for op in line.split(";")[2].split(",")}
    assert {"TreeEnsembleClassifier", "LinearClassifier"} <= listed, text


def test_merge_writes_config_without_temp_paths_when_ort_flag(runs: tuple[Path, Path]) -> None:
    text = (runs[0] / "fused.required_operators.config").read_text()

    for leak in (tempfile.gettempdir(), str(runs[0]), ".tmp", "packed", "with_runtime_opt"):
        assert leak not in text, f"{leak!r} in {text!r}"


def test_merge_writes_same_config_and_onnx_bytes_when_run_twice(runs: tuple[Path, Path]) -> None:
    """The converter's .ort bytes differ between processes; the .onnx and the config must not."""
    first, second = runs

    assert (first / "fused.onnx").read_bytes() == (second / "fused.onnx").read_bytes()
    config = "fused.required_operators.config"
    assert (first / config).read_bytes() == (second / config).read_bytes()


def test_merge_prints_no_temp_paths_when_ort_flag_in_a_fresh_process(tmp_path: Path) -> None:
    """The console command (not CliRunner under pytest, whose log capture hides root-logger output)."""
    out = tmp_path / "fused.onnx"
    code = "import sys; from onnxfuse.cli import main; sys.argv[0] = 'onnxfuse'; main()"
    env = {k: v for k, v in os.environ.items() if k != "ONNXFUSE_DEBUG"}

    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, merge_args(out))], capture_output=True, text=True, env=env, check=False
    )

    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "a successful merge prints nothing on stderr"
    assert ".tmp" not in done.stdout and "packed" not in done.stdout, done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == OUTPUTS
