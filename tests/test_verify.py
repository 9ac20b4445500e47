"""verify: a source the reference evaluator computes otherwise than onnxruntime is checked with its outputs fed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_checker_and_portable, ort_outputs, run_cli, save
from onnx.reference import ReferenceEvaluator
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC


@pytest.mark.slow  # the tox 'slow' environment (CI runs it): --meta auto, ~30 s
def test_merge_checks_around_a_source_the_reference_evaluator_computes_otherwise(rows, tmp_path: Path) -> None:
    """scikit-learn's multi-class SVC(probability=True): onnxruntime matches scikit-learn within 1e-6, the
    reference evaluator is up to ~0.1 off. The merge must not fail on the evaluator: it feeds that source's
    outputs from onnxruntime for the cross-runtime check, says so once, and the file still equals its sources."""
    x, y = rows["x"], rows["y3"]
    svc = SVC(probability=True, random_state=0).fit(x[:500, :2], y[:500])
    first = save(to_onnx(svc, x[:1, :2], options={"zipmap": False}), tmp_path / "svc.onnx")
    second = save(to_onnx(LogisticRegression().fit(x[:500, 2:4], y[:500]), x[:1, 2:4], options={"zipmap": False}),
                  tmp_path / "lr.onnx")  # fmt: skip
    held = x[500:]
    evaluator = ReferenceEvaluator(str(first)).run(None, {"X": held[:, :2]})[1]
    assert np.abs(evaluator - svc.predict_proba(held[:, :2])).max() > 1e-3, "the evaluator's SVM differs (premise)"
    data = tmp_path / "rows.csv"
    lines = ["a,b,c,d,y", *(",".join(f"{v:.6f}" for v in r[:4]) + f",{t}" for r, t in zip(held, y[500:]))]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "fused.onnx"

    result = run_cli("merge", first, second, "--features", "a,b", "--features", "c,d", "--data", data, "--target", "y",
                     "--keep-model-outputs", "-o", out)  # fmt: skip

    assert result.exit_code == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: model 1 (svc.onnx): onnx's reference evaluator")
    assert_checker_and_portable(out)
    fused = ort_outputs(out, {"features": held[:200, :4]})
    np.testing.assert_allclose(fused["m1/probabilities"], svc.predict_proba(held[:200, :2]), atol=1e-5)
    np.testing.assert_allclose(fused["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    reverified = run_cli("verify", out, first, second, "--data", data)
    assert reverified.exit_code == 0, reverified.stderr
