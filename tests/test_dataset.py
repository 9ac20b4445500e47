"""`--data` as a dataset (a folder with hive partitions, a glob, a list of files), read in pieces for the needed
columns; `--fit-rows`: the head fitted on a seeded sample, the hold-out table measured over every hold-out row.

Real data at its natural scales: scikit-learn's breast cancer table (30 features from 0.001 to 4,000). Two sources
from skl2onnx, trained on rows disjoint from the fusion rows: a scaled logistic regression on the first 15
features, a random forest on the other 15. The fusion rows are written as Parquet files with several row groups.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from conftest import assert_one_error_line, run_cli
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import onnxfuse
from onnxfuse import dataset as dataset_module
from onnxfuse import fuse as fuse_module
from onnxfuse import holdout as holdout_module
from onnxfuse.evaluation import FUSED
from onnxfuse.report import metrics
from onnxfuse.sampling import held_out

NAMES = [f"f{i}" for i in range(30)]
A, B = ",".join(NAMES[:15]), ",".join(NAMES[15:])
FILE_ROWS = (150, 120, 129)  # the 399 fusion rows, in three files


@dataclasses.dataclass(frozen=True)
class Case:
    a: Path
    b: Path
    x: np.ndarray  # the fusion rows, float64
    y: np.ndarray
    folder: Path  # the fusion rows as part-0..2.parquet, row groups of 40 rows


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    folder = tmp_path_factory.mktemp("dataset")
    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    first = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[:85, :15], y[:85])
    second = RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0).fit(x[85:170, 15:], y[85:170])
    a, b = folder / "a.onnx", folder / "b.onnx"
    for model, path, columns in ((first, a, slice(0, 15)), (second, b, slice(15, 30))):
        onnx.save(to_onnx(model, x[:1, columns].astype(np.float32), options={"zipmap": False}), path)
    data = folder / "parts"
    write_parts(data, x[170:], y[170:], row_group=40)
    return Case(a, b, x[170:], y[170:], data)


def arrow_table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    return pa.table({**{name: x[:, i] for i, name in enumerate(NAMES)}, "y": y.astype(np.int64)})


def write_parts(folder: Path, x: np.ndarray, y: np.ndarray, *, row_group: int, suffix: str = ".parquet") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for i, count in enumerate(FILE_ROWS):
        part = arrow_table(x[start : start + count], y[start : start + count])
        if suffix == ".csv":
            pa_csv.write_csv(part, folder / f"part-{i}.csv")
        else:
            pq.write_table(part, folder / f"part-{i}{suffix}", row_group_size=row_group)
        start += count


def merge(case: Case, data, out: Path, *extra: object) -> tuple[bytes, dict]:
    """`onnxfuse merge` on `data` (one path or a list of them, each a `--data`); the file's bytes and its
    fusion report."""
    datas = [item for path in (data if isinstance(data, list) else [data]) for item in ("--data", path)]
    result = run_cli("merge", case.a, case.b, "--features", A, "--features", B, *datas, "--target", "y", "-o", out,
                     *extra)  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    model = onnx.load(out)
    fusion = json.loads({p.key: p.value for p in model.metadata_props}["onnxfuse.fusion"])
    return out.read_bytes(), fusion


# ------------------------------------------------------------------------------------------------
# The forms of --data: the same rows give the same file
# ------------------------------------------------------------------------------------------------


def test_folder_glob_list_and_one_file_give_the_same_bytes(case: Case, tmp_path: Path) -> None:
    whole = tmp_path / "whole.parquet"
    pq.write_table(arrow_table(case.x, case.y), whole, row_group_size=50)
    files = sorted(case.folder.glob("*.parquet"))
    made = {
        "folder": merge(case, case.folder, tmp_path / "folder.onnx")[0],
        "glob": merge(case, case.folder / "part-*.parquet", tmp_path / "glob.onnx")[0],
        "list, reversed": merge(case, list(reversed(files)), tmp_path / "list.onnx")[0],
        "one file": merge(case, whole, tmp_path / "one.onnx")[0],
    }
    in_memory = onnxfuse.merge([case.a, case.b], arrow_table(case.x, case.y), features=[A.split(","), B.split(",")],
                               target="y")  # fmt: skip
    made["in memory"] = in_memory.sealed
    assert len(set(made.values())) == 1, {name: len(value) for name, value in made.items()}


def test_a_hive_partitioned_folder_reads_its_keys_as_columns(case: Case, tmp_path: Path) -> None:
    """`site=<n>/` folders: `site` is a column of every row (here the target), read from the folder names."""
    data = tmp_path / "hive"
    start = 0
    for site, count in enumerate(FILE_ROWS):
        rows = arrow_table(case.x[start : start + count], case.y[start : start + count])
        folder = data / f"site={site}"
        folder.mkdir(parents=True)
        pq.write_table(rows, folder / "rows.parquet", row_group_size=64)
        start += count
    (data / "_SUCCESS").write_text("")  # what Spark leaves beside the data is not data
    opened = dataset_module.open_dataset(data)
    assert "site" in opened.columns
    read = opened.read(["site", "f3", "y"])
    np.testing.assert_array_equal(read["site"], np.repeat(np.arange(3), FILE_ROWS))
    np.testing.assert_array_equal(read["f3"], case.x[:, 3])
    np.testing.assert_array_equal(read["y"], case.y)
    result = run_cli("merge", case.a, case.b, "--features", A, "--features", B, "--data", data, "--target", "site",
                     "-o", tmp_path / "site.onnx", "--fusion", "mean")  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr


def test_only_the_needed_columns_are_read(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A column no model reads is never read, even one that could not be read as a feature."""
    read: list[tuple[str, ...]] = []
    original = dataset_module.piece_batches

    def recording(piece, columns, schema):
        read.append(tuple(columns))
        return original(piece, columns, schema)

    monkeypatch.setattr(dataset_module, "piece_batches", recording)
    monkeypatch.setattr(holdout_module, "piece_batches", recording)
    data = tmp_path / "wide.parquet"
    table = arrow_table(case.x, case.y).append_column("comment", pa.array(["free text"] * len(case.y)))
    pq.write_table(table, data, row_group_size=100)
    merge(case, data, tmp_path / "wide.onnx")
    streamed = len(read)
    merge(case, data, tmp_path / "sampled.onnx", "--fit-rows", 120)  # the sample pass, then the hold-out stage
    assert len(read) > streamed + 4  # the hold-out stage read each of the four row groups too
    assert read and all(set(columns) == {*NAMES, "y"} for columns in read)


# ------------------------------------------------------------------------------------------------
# --fit-rows: fitted on a sample, measured on every hold-out row
# ------------------------------------------------------------------------------------------------


def test_fit_rows_measures_the_sources_on_every_hold_out_row(case: Case, tmp_path: Path) -> None:
    """With 120 of 399 rows in the fit sample, each source's hold-out figures are those of the source run by
    onnxruntime on all hold-out rows of the data (the rows `sampling.held_out` picks), not of the sample's."""
    report = merge(case, case.folder, tmp_path / "sampled.onnx", "--fit-rows", 120, "--holdout", 0.3)[1]["holdout"]
    rows = report["rows"]
    held = np.concatenate([held_out(f"part-{i}.parquet", 0, count, seed=0, holdout=0.3)
                           for i, count in enumerate(FILE_ROWS)])  # fmt: skip
    assert rows["data"] == len(case.y) and rows["fit_sample"] == 120
    assert rows["holdout"] == held.sum() and 0.2 < held.mean() < 0.4
    for path, columns, name in ((case.a, slice(0, 15), "m1 a"), (case.b, slice(15, 30), "m2 b")):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {session.get_inputs()[0].name: case.x[held][:, columns].astype(np.float32)}
        probabilities = session.run(None, feeds)[1]
        expected = metrics("classification", case.y[held], probabilities, (0, 1))
        assert report["metrics"][name] == expected, name
    fused = report["metrics"]["fused"]
    assert fused["accuracy"] > 0.85 and np.isfinite(fused["log_loss"])


def test_fit_rows_measures_the_fused_head_in_its_graph_on_every_hold_out_row(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused figures are those of the hold-out model (the sources and the head fitted on the training part, in
    one graph) run by onnxruntime on every hold-out row; building it leaves the spliced graph as it was."""
    captured = {}
    build = fuse_module._holdout_model

    def spy(spliced, *args, **kwargs):
        before = ir.serde.serialize_model(spliced.model).SerializeToString()
        model, outputs = build(spliced, *args, **kwargs)
        captured["unchanged"] = ir.serde.serialize_model(spliced.model).SerializeToString() == before
        captured["model"] = Path(model).read_bytes() if isinstance(model, str) else model
        captured["outputs"] = dict(outputs)
        return model, outputs

    monkeypatch.setattr(fuse_module, "_holdout_model", spy)
    report = merge(case, case.folder, tmp_path / "sampled.onnx", "--fit-rows", 120, "--holdout", 0.3)[1]["holdout"]
    assert captured["unchanged"]
    held = np.concatenate([held_out(f"part-{i}.parquet", 0, count, seed=0, holdout=0.3)
                           for i, count in enumerate(FILE_ROWS)])  # fmt: skip
    session = ort.InferenceSession(captured["model"], providers=["CPUExecutionProvider"])
    probabilities = session.run([captured["outputs"][FUSED]], {"features": case.x[held].astype(np.float32)})[0]
    assert probabilities.shape == (held.sum(), 2)
    assert report["metrics"]["fused"] == metrics("classification", case.y[held], probabilities, (0, 1))
    assert report["rows"]["baseline_rows"] == report["rows"]["sample_holdout"]  # the baseline is not streamed


def test_string_labels_are_measured_on_every_hold_out_row(case: Case, tmp_path: Path) -> None:
    """A text target (the labels as the sources' exporter gives them): the hold-out stage turns only the held rows
    into Python strings, and scores them as the in-memory table would."""
    names = np.array(["benign", "malignant"], dtype=object)
    x, y = load_breast_cancer(return_X_y=True)
    shuffled = np.random.default_rng(0).permutation(len(y))  # as `case` does: its first 170 rows train the sources
    x, y = x[shuffled], y[shuffled]
    first = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[:85, :15], names[y[:85]])
    second = RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0).fit(x[85:170, 15:], names[y[85:170]])
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for model, path, columns in ((first, a, slice(0, 15)), (second, b, slice(15, 30))):
        onnx.save(to_onnx(model, x[:1, columns].astype(np.float32), options={"zipmap": False}), path)
    data = tmp_path / "labels.parquet"
    table = arrow_table(case.x, case.y)
    pq.write_table(table.set_column(table.schema.get_field_index("y"), "y", pa.array(names[case.y].tolist())), data,
                   row_group_size=64)  # fmt: skip
    result = run_cli("merge", a, b, "--features", A, "--features", B, "--data", data, "--target", "y", "-o",
                     tmp_path / "labels.onnx", "--fit-rows", 120, "--holdout", 0.3)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    model = onnx.load(tmp_path / "labels.onnx")
    report = json.loads({p.key: p.value for p in model.metadata_props}["onnxfuse.fusion"])["holdout"]
    held = held_out("labels.parquet", 0, len(case.y), seed=0, holdout=0.3)
    assert report["rows"]["holdout"] == held.sum() > report["rows"]["sample_holdout"]
    session = ort.InferenceSession(str(b), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {session.get_inputs()[0].name: case.x[held][:, 15:].astype(np.float32)})[1]
    expected = metrics("classification", names[case.y][held], probabilities, ("benign", "malignant"))
    assert report["metrics"]["m2 b"] == expected


def test_rows_at_equals_the_whole_batch_s_columns_at_those_rows() -> None:
    """Numbers (nulls included) and text picked from a record batch as `to_numpy` of the whole column would give."""
    batch = pa.record_batch({
        "x": pa.array([0.5, None, 2.0, 3.5, np.nan], pa.float32()),
        "n": pa.array([1, None, 3, 4, 5], pa.int64()),
        "flag": pa.array([True, False, None, True, False]),
        "text": pa.array(["a", None, "ç", "d", ""]),
    })  # fmt: skip
    positions = np.array([4, 1, 2])
    picked = dataset_module.rows_at(batch, positions)
    for name, column in zip(batch.schema.names, batch.columns):
        whole = dataset_module.to_numpy(column)
        assert picked[name].dtype == whole.dtype, name
        np.testing.assert_array_equal(picked[name], whole[positions], err_msg=name)


def test_the_baseline_keeps_its_figures_on_the_sample_s_hold_out_rows(case: Case, tmp_path: Path) -> None:
    """The from-scratch baseline is not streamed (its learner's predict would cost more than the graph): its figures
    are those on the fit sample's hold-out rows, which the report counts and the summary line names, while the
    sources and the fused head cover every hold-out row."""
    result = run_cli("merge", case.a, case.b, "--features", A, "--features", B, "--data", case.folder, "--target",
                     "y", "-o", tmp_path / "fused.onnx", "--fit-rows", 120, "--holdout", 0.3)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    model = onnx.load(tmp_path / "fused.onnx")
    report = json.loads({p.key: p.value for p in model.metadata_props}["onnxfuse.fusion"])["holdout"]
    rows = report["rows"]
    assert rows["baseline_rows"] == rows["sample_holdout"] < rows["holdout"]
    assert f"the baseline on the sample's {rows['sample_holdout']:,}" in result.stdout + result.stderr
    baseline = next(name for name in report["metrics"] if name.startswith("baseline"))
    assert 0.5 < report["metrics"][baseline]["accuracy"] <= 1


def test_the_file_does_not_depend_on_row_groups_batches_or_listing(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same rows in other row groups, read in other batches, listed in another order: the same bytes."""
    first = merge(case, case.folder, tmp_path / "first.onnx", "--fit-rows", 150)[0]
    regrouped = tmp_path / "regrouped"
    write_parts(regrouped, case.x, case.y, row_group=17)
    monkeypatch.setattr(dataset_module, "READ_ROWS", 23)
    files = sorted(regrouped.glob("*.parquet"), reverse=True)
    again = merge(case, files, tmp_path / "again.onnx", "--fit-rows", 150)[0]
    assert again == first
    other_seed = merge(case, case.folder, tmp_path / "seed.onnx", "--fit-rows", 150, "--seed", 1)[0]
    assert other_seed != first


def test_csv_files_are_streamed_in_batches_with_the_same_result(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CSV pieces are whole files, read in record batches: the batch size changes nothing."""
    data = tmp_path / "csv"
    write_parts(data, case.x, case.y, row_group=0, suffix=".csv")
    sizes = []
    for read_rows in (1_000, 31):
        monkeypatch.setattr(dataset_module, "READ_ROWS", read_rows)
        sizes.append(merge(case, data, tmp_path / f"csv{read_rows}.onnx", "--fit-rows", 150)[0])
    assert sizes[0] == sizes[1]


# ------------------------------------------------------------------------------------------------
# Bad datasets: one error line naming the file and the column
# ------------------------------------------------------------------------------------------------


def _two_files(tmp_path: Path, case: Case, second: pa.Table) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir()
    pq.write_table(arrow_table(case.x[:100], case.y[:100]), folder / "a.parquet")
    pq.write_table(second, folder / "b.parquet")
    return folder


def test_files_that_disagree_on_a_column_type_are_named(case: Case, tmp_path: Path) -> None:
    second = arrow_table(case.x[100:], case.y[100:]).set_column(3, "f3", pa.array(["x"] * (len(case.y) - 100)))
    folder = _two_files(tmp_path, case, second)
    result = run_cli("merge", case.a, case.b, "--features", A, "--features", B, "--data", folder, "--target", "y",
                     "-o", tmp_path / "out.onnx")  # fmt: skip
    assert_one_error_line(result, "b.parquet", "'f3'", "a.parquet")
    assert not (tmp_path / "out.onnx").exists()


def test_integers_in_one_file_and_floats_in_another_are_read_as_floats(case: Case, tmp_path: Path) -> None:
    second = arrow_table(case.x[100:], case.y[100:])
    second = second.set_column(0, "f0", pa.array(np.round(case.x[100:, 0]).astype(np.int64)))
    opened = dataset_module.open_dataset(_two_files(tmp_path, case, second))
    assert opened.schema.field("f0").type == pa.float64()
    assert opened.read(["f0"])["f0"].dtype == np.float64


def test_a_file_missing_a_needed_column_is_named(case: Case, tmp_path: Path) -> None:
    folder = _two_files(tmp_path, case, arrow_table(case.x[100:], case.y[100:]).drop_columns(["f20"]))
    result = run_cli("merge", case.a, case.b, "--features", A, "--features", B, "--data", folder, "--target", "y",
                     "-o", tmp_path / "out.onnx")  # fmt: skip
    assert_one_error_line(result, "b.parquet", "'f20'")


@pytest.mark.parametrize("kind", ["no_rows", "no_files", "no_match"])
def test_an_empty_dataset_is_refused(case: Case, tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    if kind == "no_rows":
        pq.write_table(arrow_table(case.x[:0], case.y[:0]), folder / "a.parquet")
    data = folder / "*.parquet" if kind == "no_match" else folder
    result = run_cli("merge", case.a, case.b, "--features", A, "--features", B, "--data", data, "--target", "y",
                     "-o", tmp_path / "out.onnx")  # fmt: skip
    assert_one_error_line(result, str(folder))


def test_a_csv_header_that_is_not_utf8_is_named(case: Case, tmp_path: Path) -> None:
    """pyarrow decodes column names lazily: a Latin-1 header is one error line naming the file, not a traceback."""
    data = tmp_path / "latin1.csv"
    pa_csv.write_csv(arrow_table(case.x, case.y), data)
    data.write_bytes(b"\xe9" + data.read_bytes())
    result = run_cli("merge", case.a, case.b, "--features", A, "--features", B, "--data", data, "--target", "y",
                     "-o", tmp_path / "out.onnx")  # fmt: skip
    assert_one_error_line(result, str(data), "UTF-8")
    assert not (tmp_path / "out.onnx").exists()


def test_mixed_formats_are_refused(case: Case, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_parts(folder, case.x, case.y, row_group=50)
    pa_csv.write_csv(arrow_table(case.x[:5], case.y[:5]), folder / "extra.csv")
    result = run_cli("merge", case.a, case.b, "--features", A, "--features", B, "--data", folder, "--target", "y",
                     "-o", tmp_path / "out.onnx")  # fmt: skip
    assert_one_error_line(result, str(folder), "csv", "parquet")


# ------------------------------------------------------------------------------------------------
# Interruption
# ------------------------------------------------------------------------------------------------


class _Interrupting:
    """A progress reporter that is Ctrl-C'd while the hold-out rows of the whole data are measured."""

    def __init__(self) -> None:
        self.measuring = False

    def stage(self, text: str) -> None:
        self.measuring = text.startswith("measuring the head")

    def rows(self, count: int, total: int) -> None:
        if self.measuring:
            raise KeyboardInterrupt


def test_ctrl_c_while_measuring_leaves_nothing(case: Case, tmp_path: Path) -> None:
    out = tmp_path / "out" / "fused.onnx"
    out.parent.mkdir()
    with pytest.raises(KeyboardInterrupt):
        onnxfuse.merge([case.a, case.b], str(case.folder), features=[A.split(","), B.split(",")], target="y",
                       fit_rows=100, output=out, progress=_Interrupting())  # fmt: skip
    assert list(out.parent.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# The Ray engine (the tox 'ray' environment)
# ------------------------------------------------------------------------------------------------


@pytest.mark.ray
def test_the_ray_engine_writes_the_same_bytes(case: Case, tmp_path: Path) -> None:
    local = merge(case, case.folder, tmp_path / "local.onnx", "--fit-rows", 150)[0]
    ray = merge(case, case.folder, tmp_path / "ray.onnx", "--fit-rows", 150, "--engine", "ray")[0]
    assert ray == local


@pytest.mark.ray
def test_ctrl_c_on_the_ray_engine_leaves_nothing(case: Case, tmp_path: Path) -> None:
    out = tmp_path / "out" / "fused.onnx"
    out.parent.mkdir()
    with pytest.raises(KeyboardInterrupt):
        onnxfuse.merge([case.a, case.b], str(case.folder), features=[A.split(","), B.split(",")], target="y",
                       fit_rows=100, engine="ray", output=out, progress=_Interrupting())  # fmt: skip
    assert list(out.parent.iterdir()) == []
