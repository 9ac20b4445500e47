"""score: the spliced sources run batch by batch equal each source file run once on all rows; a merge does not
depend on the batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from conftest import as_matrix, columns_of, make_rows, ort_outputs, save, write_csv
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

import onnxfuse.score
from onnxfuse.bind import bind
from onnxfuse.load import load_model
from onnxfuse.normalize import normalize
from onnxfuse.pipeline import merge
from onnxfuse.score import score
from onnxfuse.spec import FuseSpec, ModelSpec
from onnxfuse.splice import Spliced, splice

ROWS = 100
COLUMNS = {"zipmap": "a,b", "forest": "c,d,e", "strings": "b,e", "linear": "c,d,e"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """skl2onnx exports: a logistic regression with ZipMap, a forest without, string classes, and a logistic
    regression without ZipMap (`linear`, for the merge below; not among the scored sources)."""
    folder = tmp_path_factory.mktemp("score")
    train = make_rows(800, seed=1)
    x = train["x"]

    def fit(model, name: str, label: str = "y"):
        return model.fit(x[:, columns_of(COLUMNS[name].split(","))], train[label])

    forest = fit(RandomForestClassifier(n_estimators=4, max_depth=4, random_state=0), "forest", "y3")
    models = {
        "zipmap": to_onnx(fit(LogisticRegression(), "zipmap"), x[:1, :2]),
        "forest": to_onnx(forest, x[:1, :3], options={"zipmap": False}),
        "strings": to_onnx(fit(LogisticRegression(), "strings", "ys"), x[:1, :2], options={"zipmap": False}),
        "linear": to_onnx(fit(LogisticRegression(), "linear"), x[:1, :3], options={"zipmap": False}),
    }
    return {name: save(model, folder / f"{name}.onnx") for name, model in models.items()}


def scored_sources(sources: dict[str, Path]) -> dict[str, Path]:
    return {name: sources[name] for name in ("zipmap", "forest", "strings")}


def spliced_sources(sources: dict[str, Path]) -> Spliced:
    chosen = scored_sources(sources)
    loaded = [load_model(ModelSpec(p, tuple(COLUMNS[n].split(","))), i) for i, (n, p) in enumerate(chosen.items(), 1)]
    normalized, versions = normalize(loaded)
    return splice(normalized, bind(normalized), versions)


def wanted(spliced: Spliced) -> dict[str, ir.Value]:
    """Every output of every source, keyed `source/output`."""
    return {f"{i}/{name}": value for i, outputs in enumerate(spliced.outputs) for name, value in outputs.items()}


def alone(sources: dict[str, Path], x: np.ndarray) -> dict[str, np.ndarray]:
    """Each source file run once in onnxruntime on all rows, keyed as `wanted`, ZipMap read as `[N, C]`."""
    expected = {}
    for i, (name, path) in enumerate(scored_sources(sources).items()):
        outputs = ort_outputs(path, {"X": x[:, columns_of(COLUMNS[name].split(","))]})
        for output, value in outputs.items():
            expected[f"{i}/{output}"] = as_matrix(value, (0, 1))
    return expected


def features(count: int) -> np.ndarray:
    return make_rows(count, seed=4)["x"]


@pytest.mark.parametrize("batch_rows", [7, 25, 99, 100, 1000], ids=lambda b: f"batch{b}")
def test_score_equals_one_run_of_each_source_when_batches_are_smaller_than_the_rows(sources, tmp_path, batch_rows):
    spliced = spliced_sources(sources)
    x = features(ROWS)
    counts: list[int] = []

    scored = score(spliced.model, wanted(spliced), {"features": x}, folder=tmp_path, batch_rows=batch_rows,
                   progress=counts.append)  # fmt: skip

    full, last = divmod(ROWS, batch_rows)
    assert counts == [batch_rows] * full + ([last] if last else [])
    expected = alone(sources, x)
    assert scored.keys() == expected.keys()
    for key, value in expected.items():
        assert scored[key].shape == value.shape and scored[key].dtype == value.dtype, key
        if value.dtype.kind == "f":
            np.testing.assert_allclose(scored[key], value, rtol=1e-6, atol=1e-7, err_msg=key)
        else:  # labels, strings included: exact
            np.testing.assert_array_equal(scored[key], value, err_msg=key)


def test_score_reads_batch_rows_at_call_time(sources, tmp_path, monkeypatch):
    spliced = spliced_sources(sources)
    counts: list[int] = []
    monkeypatch.setattr(onnxfuse.score, "BATCH_ROWS", 30)

    score(spliced.model, wanted(spliced), {"features": features(ROWS)}, folder=tmp_path, progress=counts.append)

    assert counts == [30, 30, 30, 10]


def test_score_leaves_the_model_as_it_was(sources, tmp_path):
    spliced = spliced_sources(sources)
    spliced.model.graph.outputs.append(spliced.outputs[0]["output_label"])  # the graph already exposes one value
    before = list(spliced.model.graph.outputs)
    proto = ir.to_proto(spliced.model).SerializeToString(deterministic=True)

    score(spliced.model, wanted(spliced), {"features": features(ROWS)}, folder=tmp_path, batch_rows=7)

    assert list(spliced.model.graph.outputs) == before
    assert ir.to_proto(spliced.model).SerializeToString(deterministic=True) == proto


def test_merge_writes_the_same_bytes_whatever_the_batch_size(sources, tmp_path, monkeypatch):
    """Batches of 16 rows train the very head one batch of 300 does. Linear sources: onnxruntime's tree ensembles
    sum their trees in an order that depends on the batch size and thread count (last-bit differences)."""
    data = write_csv(tmp_path / "rows.csv", make_rows(300, seed=0))
    models = tuple(ModelSpec(sources[n], tuple(COLUMNS[n].split(","))) for n in ("zipmap", "linear"))

    class Counts(list):
        """A progress reporter that keeps the row counts told while the sources are scored (reading tells its own)."""

        scoring = False

        def stage(self, text: str) -> None:
            self.scoring = text.startswith("scoring")

        def rows(self, count: int, total: int) -> None:
            if self.scoring:
                self.append(count)

    def merged(name: str) -> tuple[bytes, list[int]]:
        counts = Counts()
        out = tmp_path / f"{name}.onnx"
        merge(FuseSpec(models=models, output=out, data=data, target="y", meta="gbdt"), progress=counts)
        return out.read_bytes(), list(counts)

    whole, one_batch = merged("default")
    monkeypatch.setattr(onnxfuse.score, "BATCH_ROWS", 16)
    batched, batches = merged("batched")

    assert one_batch == [300]
    assert batches == [16] * 18 + [300 - 18 * 16]
    assert batched == whole


@pytest.fixture(scope="module")
def big_forest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A forest of many trees: onnxruntime's tree ensemble sums them in an order that follows its thread count."""
    train = make_rows(800, seed=5)
    forest = RandomForestClassifier(n_estimators=200, max_depth=8, random_state=0).fit(train["x"], train["y3"])
    exported = to_onnx(forest, train["x"][:1], options={"zipmap": False})
    return save(exported, tmp_path_factory.mktemp("forest") / "f.onnx")


def one_thread_run(path: Path, x: np.ndarray, batch_rows: int) -> np.ndarray:
    """The forest's probabilities, batch by batch, in a one-thread session."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["probabilities"], {"X": x[s : s + batch_rows]})[0]
                           for s in range(0, len(x), batch_rows)])  # fmt: skip


@pytest.mark.parametrize("cores", [1, 2, 8])
def test_score_gives_the_same_bits_whatever_the_core_count(big_forest, tmp_path, monkeypatch, cores):
    """The head is fitted on these scores, so a merge writes the same bytes on machines with other core
    counts only if they do not change: each batch runs on one onnxruntime thread, whatever `os.cpu_count()`."""
    monkeypatch.setattr(onnxfuse.score.os, "cpu_count", lambda: cores)
    x = make_rows(900, seed=6)["x"]
    loaded = [load_model(ModelSpec(big_forest, ("a", "b", "c", "d", "e")), 1)]
    normalized, versions = normalize(loaded)
    spliced = splice(normalized, bind(normalized), versions)
    values = {"p": spliced.outputs[0]["probabilities"]}
    got = score(spliced.model, values, {"features": x}, folder=tmp_path, batch_rows=300)
    np.testing.assert_array_equal(got["p"], one_thread_run(big_forest, x, 300))
