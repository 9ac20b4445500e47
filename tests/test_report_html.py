"""Tests of the HTML report: self-contained, every plot a real non-blank PNG, escaped, deterministic, and rendered
by headless Chromium from a real merge and a real evaluate."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_error_line, run_cli
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from onnxfuse.errors import OnnxfuseError
from onnxfuse.evaluation import FUSED, Evaluation
from onnxfuse.report import metrics
from onnxfuse.report_html import html_report, write_html

EXAMPLE = Path(__file__).resolve().parents[1] / "models"
IMAGE = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _evaluation(loader, task: str, first, second, **extra) -> Evaluation:
    """Two real scikit-learn models on halves of a bundled table's columns, fitted on one half of the rows and
    scored on the other; their mean stands in for the fused answer."""
    x, y = loader(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))  # iris is sorted by class
    x, y = x[order], y[order]
    half, width = len(x) // 2, x.shape[1] // 2
    models = [first.fit(x[:half, :width], y[:half]), second.fit(x[:half, width:], y[:half])]
    parts = [x[half:, :width], x[half:, width:]]
    if task == "classification":
        outputs = [m.predict_proba(p) for m, p in zip(models, parts)]
        classes = tuple(int(c) for c in models[0].classes_)
    else:
        outputs, classes = [m.predict(p) for m, p in zip(models, parts)], None
    answers = {"m1 first <a&b>": outputs[0], "m2 second": outputs[1], FUSED: (outputs[0] + outputs[1]) / 2}
    truth = y[half:]
    summary = {"metrics": {name: metrics(task, truth, values, classes) for name, values in answers.items()},
               "method": "mean", **extra.pop("summary", {})}  # fmt: skip
    return Evaluation(task, classes, truth, answers, ("m1 first <a&b>", "m2 second"), summary, **extra)


BINARY = _evaluation(load_breast_cancer, "classification", LogisticRegression(max_iter=5000),
                     DecisionTreeClassifier(max_depth=3, random_state=0))  # fmt: skip
MULTICLASS = _evaluation(load_iris, "classification", LogisticRegression(max_iter=1000),
                         DecisionTreeClassifier(max_depth=2, random_state=0))  # fmt: skip
REGRESSION = _evaluation(load_diabetes, "regression", LinearRegression(), DecisionTreeRegressor(max_depth=3))


def _images(document: str) -> list[np.ndarray]:
    import matplotlib.image

    return [matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png") for data in
            IMAGE.findall(document)]  # fmt: skip


@pytest.mark.parametrize("evaluation", [BINARY, MULTICLASS, REGRESSION], ids=["binary", "multiclass", "regression"])
def test_html_report_is_self_contained_with_non_blank_plots(evaluation: Evaluation) -> None:
    document = html_report(evaluation, title="report <title>")
    assert not re.search(r"https?://|<link|<script", document)
    assert all(src.startswith("data:image/png") for src in re.findall(r'src="([^"]*)"', document))
    images = _images(document)
    assert len(images) == document.count("<img")
    assert all(image.std() > 0.01 for image in images)  # every plot draws something
    assert "m1 first &lt;a&amp;b&gt;" in document and "<a&b>" not in document
    assert "report &lt;title&gt;" in document
    headings = re.findall(r"<h2>(.*?)</h2>", document)
    if evaluation.classification:
        assert headings == ["Each model on the rows", "ROC curves", "Calibration",
                            "Confusion matrix of the fused model"]  # fmt: skip
    else:
        assert headings == ["Each model on the rows", "Predicted against actual", "Residuals of the fused model"]


def test_html_report_shows_the_head_choice_weights_patterns_and_effects_when_given() -> None:
    rows, sources = len(BINARY.truth), len(BINARY.sources)
    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(sources), size=rows)
    available = rng.random((rows, sources)) > 0.2
    patterns = {"m1+m2": {"rows": 200, "metrics": BINARY.summary["metrics"]},
                "m1": {"rows": 85, "metrics": {k: BINARY.summary["metrics"][k] for k in ("m1 first <a&b>", FUSED)}}}
    evaluation = Evaluation(
        BINARY.task, BINARY.classes, BINARY.truth, BINARY.outputs, BINARY.sources,
        {**BINARY.summary, "chosen": "linear", "candidates": {"linear": 0.2, "mlp": 0.25, "m1 alone": 0.3},
         "cv": {"folds": 5, "metric": "log_loss"}, "patterns": patterns},
        available=available, effects=rng.normal(size=(rows, sources)) * available, weights=weights,
    )  # fmt: skip
    document = html_report(evaluation, title="t")
    for heading in ("Head chosen: linear", "Per-row weights of the sources", "By availability pattern",
                    "Source effects"):  # fmt: skip
        assert f"<h2>{heading}</h2>" in document
    assert all(image.std() > 0.01 for image in _images(document))


def test_html_report_is_byte_identical_when_rendered_twice() -> None:
    assert html_report(MULTICLASS, title="t") == html_report(MULTICLASS, title="t")


def test_write_html_names_the_extra_when_matplotlib_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(OnnxfuseError, match=r"pip install 'onnxfuse\[report\]'"):
        write_html(tmp_path / "r.html", BINARY, title="t")
    assert list(tmp_path.iterdir()) == []


def test_merge_refuses_an_html_report_without_hold_out_rows(tmp_path: Path) -> None:
    result = run_cli("merge", EXAMPLE / "a.onnx", EXAMPLE / "b.onnx", "--features", "a,b", "--features", "c,d",
                     "--fusion", "mean", "-o", tmp_path / "f.onnx", "--report", tmp_path / "r.html")  # fmt: skip
    assert_one_error_line(result, "r.html", "hold-out rows")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Reports of a real merge (--explain, so effects are drawn) and of a real evaluate on new rows."""
    folder = tmp_path_factory.mktemp("reports")
    merged = run_cli("merge", EXAMPLE / "a.onnx", EXAMPLE / "b.onnx", "--features", "a,b", "--features", "c,d",
                     "--data", EXAMPLE / "train.csv", "--target", "y", "--explain", "-o", folder / "f.onnx",
                     "--report", folder / "merge.html")  # fmt: skip
    assert merged.exit_code == 0, merged.stderr
    evaluated = run_cli("evaluate", folder / "f.onnx", EXAMPLE / "b.onnx", EXAMPLE / "a.onnx", "--data",
                        EXAMPLE / "month.csv", "--target", "y", "--report", folder / "evaluate.html")  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.stderr
    return {"merge": folder / "merge.html", "evaluate": folder / "evaluate.html"}


def test_merge_and_evaluate_reports_hold_their_sections(reports: dict[str, Path]) -> None:
    merge = reports["merge"].read_text()
    assert "<h2>Head chosen: linear</h2>" in merge and "<h2>Source effects</h2>" in merge
    assert "<h2>By availability pattern</h2>" in merge
    evaluate = reports["evaluate"].read_text()
    assert "rows per pattern: m1+m2 710, m1 290" in evaluate
    assert all(image.std() > 0.01 for image in _images(merge) + _images(evaluate))


CHECK = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener("load", () => {
  const images = Array.from(document.images).map(i => i.complete && i.naturalWidth > 0);
  const pre = document.createElement("pre"); pre.id = "onnxfuse-check";
  pre.textContent = JSON.stringify({images, errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    return found


@pytest.mark.parametrize("which", ["merge", "evaluate"])
def test_report_renders_in_headless_chromium_with_every_image_loaded(reports, which: str, tmp_path: Path) -> None:
    chromium = _chromium()
    checked = tmp_path / "checked.html"  # the report plus a probe script; the report itself has none
    checked.write_text(reports[which].read_text().replace("</body>", CHECK + "</body>"))
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="onnxfuse-check">(.*?)</pre>', dom.stdout)
    assert found, dom.stderr[-2000:]
    state = json.loads(found.group(1).replace("&quot;", '"'))
    assert state["errors"] == []
    assert len(state["images"]) >= 5 and all(state["images"])
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,3000", reports[which].as_uri()],
                   capture_output=True, timeout=180, check=True)  # fmt: skip
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.std() > 0.05  # not a blank page
