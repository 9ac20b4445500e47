"""Tests of data handling: csv/parquet/npz tables, target checks, the seeded hold-out split, the CLI on bad data."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import Result
from conftest import (
    COLUMNS,
    assert_checker_and_portable,
    assert_runtimes_agree,
    columns_of,
    ort_outputs,
    run_cli,
    save,
    write_csv,
)
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from onnxfuse.bind import Binding
from onnxfuse.data import read_table
from onnxfuse.errors import OnnxfuseError
from onnxfuse.feeds import Labelled, labelled_rows, split_rows

ROWS = 300
PLAIN = Binding(features=("a", "b"), models=(), shared=())

# Columns in an order that is not sorted, so "file order" is told apart from "sorted".
SAMPLE: dict[str, list] = {
    "zeta": [0.5, -1.25, 3.0, 2.75],
    "alpha": [3, 1, 2, 7],
    "mid": ["red", "green", "blue", "red"],
}


# --- helpers ----------------------------------------------------------------------------------------------------------


def write_text_csv(path: Path, header: Sequence[str], lines: Sequence[Sequence[object]]) -> Path:
    text = ",".join(header) + "\n" + "".join(",".join(str(v) for v in line) + "\n" for line in lines)
    path.write_text(text)
    return path


def csv_table(tmp_path: Path, columns: dict[str, Sequence[object]], name: str = "data.csv") -> tuple[dict, Path]:
    """Write `columns` as a real csv file and read it back the way a merge does."""
    path = write_text_csv(tmp_path / name, list(columns), list(zip(*columns.values())))
    return read_table(path), path


def write_sample(path: Path) -> Path:
    if path.suffix == ".csv":
        return write_text_csv(path, list(SAMPLE), list(zip(*SAMPLE.values())))
    if path.suffix == ".parquet":
        arrays = [pa.array(values) for values in SAMPLE.values()]
        pq.write_table(pa.Table.from_arrays(arrays, names=list(SAMPLE)), path)
        return path
    np.savez(
        path,
        zeta=np.array(SAMPLE["zeta"], dtype=np.float64),
        alpha=np.array(SAMPLE["alpha"], dtype=np.int64),
        mid=np.array(SAMPLE["mid"]),  # a fixed-width unicode array: no pickle needed
    )
    return path


def raised(call, *args: object, **kwargs: object) -> str:
    """The OnnxfuseError message of `call`, checked to be one line."""
    with pytest.raises(OnnxfuseError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- read_table -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npz"])
def test_read_table_gives_same_columns_in_file_order_when_csv_parquet_or_npz(tmp_path: Path, suffix: str) -> None:
    path = write_sample(tmp_path / f"sample{suffix}")

    table = read_table(path)

    assert list(table) == list(SAMPLE)
    for name, expected in SAMPLE.items():
        assert isinstance(table[name], np.ndarray), name
        assert table[name].tolist() == expected, name
    assert table["zeta"].dtype.kind == "f"
    assert table["alpha"].dtype.kind in "iu"


def test_read_table_raises_naming_file_when_npz_holds_object_array(tmp_path: Path) -> None:
    path = tmp_path / "pickled.npz"
    np.savez(path, a=np.arange(3.0), b=np.array([1, "x", None], dtype=object))

    message = raised(read_table, path)

    assert "pickled.npz" in message


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        pytest.param("noise.csv", bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8)), id="noise"),
        pytest.param("binary.csv", b"\xff\xfe\x00\x81garbage\x80\x00\xc3\x28\n\x9f,\x00\n", id="invalid_utf8"),
        pytest.param("short_row.csv", b"a,b,y\n1,2,0\n3,4\n5,6,1\n", id="row_with_fewer_fields"),
        pytest.param("long_row.csv", b"a,b,y\n1,2,0\n3,4,5,6\n5,6,1\n", id="row_with_more_fields"),
        pytest.param("empty.csv", b"", id="empty"),
        pytest.param("header_only.csv", b"a,b,y\n", id="header_only"),
        pytest.param("not_a_zip.npz", b"this is not a zip archive", id="npz_not_a_zip"),
    ],
)
def test_read_table_raises_naming_file_when_file_is_garbled_or_empty(tmp_path: Path, name: str, payload: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(payload)

    message = raised(read_table, path)

    assert name in message


def test_read_table_raises_naming_file_when_npz_has_no_arrays(tmp_path: Path) -> None:
    path = tmp_path / "nothing.npz"
    np.savez(path)

    assert "nothing.npz" in raised(read_table, path)


def test_read_table_raises_naming_file_when_npz_arrays_differ_in_length(tmp_path: Path) -> None:
    path = tmp_path / "ragged.npz"
    np.savez(path, a=np.zeros(4), img=np.zeros((3, 2, 2)))

    assert "ragged.npz" in raised(read_table, path)


def test_read_table_raises_naming_suffix_when_suffix_is_unknown(tmp_path: Path) -> None:
    path = write_text_csv(tmp_path / "data.txt", ["a", "y"], [(1, 0), (2, 1)])

    message = raised(read_table, path)

    assert "data.txt" in message and ".txt" in message


def test_read_table_raises_naming_file_when_file_is_missing(tmp_path: Path) -> None:
    assert "ghost.csv" in raised(read_table, tmp_path / "ghost.csv")


# --- labelled_rows ----------------------------------------------------------------------------------------------------


def features_ab(count: int = 8) -> dict[str, list[float]]:
    return {"a": [0.25 * i for i in range(count)], "b": [1.0 - 0.5 * i for i in range(count)]}


def test_labelled_rows_gives_sorted_string_classes_when_target_is_strings(tmp_path: Path) -> None:
    target = ["mid", "low", "high", "low", "mid", "high", "low", "mid"]
    table, path = csv_table(tmp_path, {**features_ab(), "y": target})

    labelled = labelled_rows(table, PLAIN, path, target="y")

    assert labelled.task == "classification"
    assert labelled.classes == ("high", "low", "mid")
    assert labelled.target.tolist() == target
    assert labelled.rows == 8
    np.testing.assert_array_equal(labelled.feeds["features"], np.array(list(features_ab().values()), np.float32).T)
    assert labelled.feeds["features"].dtype == np.float32


def test_labelled_rows_gives_classification_when_target_is_few_integers(tmp_path: Path) -> None:
    table, path = csv_table(tmp_path, {**features_ab(), "y": [2, 0, 1, 1, 0, 2, 2, 0]})

    labelled = labelled_rows(table, PLAIN, path, target="y")

    assert labelled.task == "classification"
    assert labelled.classes == (0, 1, 2)
    assert all(type(c) is int for c in labelled.classes)
    assert labelled.target.dtype == np.int64


def test_labelled_rows_gives_regression_when_target_is_many_integers(tmp_path: Path) -> None:
    table, path = csv_table(tmp_path, {**features_ab(30), "y": list(range(100, 130))})

    labelled = labelled_rows(table, PLAIN, path, target="y")

    assert labelled.task == "regression"
    assert labelled.classes is None


def test_labelled_rows_gives_regression_when_target_is_float(tmp_path: Path) -> None:
    target = [0.5, 1.25, -2.0, 3.5, 0.0, 1.0, 2.0, 7.75]
    table, path = csv_table(tmp_path, {**features_ab(), "y": target})

    labelled = labelled_rows(table, PLAIN, path, target="y")

    assert labelled.task == "regression"
    assert labelled.classes is None
    assert labelled.target.dtype == np.float64
    assert labelled.target.tolist() == target


def test_labelled_rows_gives_integer_classes_when_task_classification_and_target_is_integral_float(
    tmp_path: Path,
) -> None:
    table, path = csv_table(tmp_path, {**features_ab(), "y": ["0.0", "1.0", "2.0", "1.0", "0.0", "2.0", "1.0", "0.0"]})
    assert table["y"].dtype.kind == "f"

    labelled = labelled_rows(table, PLAIN, path, target="y", task="classification")

    assert labelled.task == "classification"
    assert labelled.classes == (0, 1, 2)
    assert labelled.target.tolist() == [0, 1, 2, 1, 0, 2, 1, 0]


def test_labelled_rows_gives_classification_when_target_is_integral_float_and_sources_are_classifiers(
    tmp_path: Path,
) -> None:
    table, path = csv_table(tmp_path, {**features_ab(), "y": ["0.0", "1.0", "1.0", "0.0", "1.0", "0.0", "1.0", "0.0"]})
    assert table["y"].dtype.kind == "f"

    labelled = labelled_rows(table, PLAIN, path, target="y", classifiers=True)

    assert labelled.task == "classification"
    assert labelled.classes == (0, 1)
    assert "the sources are classifiers" in labelled.why


def test_labelled_rows_gives_regression_when_target_is_integral_float_and_sources_are_regressors(
    tmp_path: Path,
) -> None:
    table, path = csv_table(tmp_path, {**features_ab(), "y": ["0.0", "1.0", "1.0", "0.0", "1.0", "0.0", "1.0", "0.0"]})

    labelled = labelled_rows(table, PLAIN, path, target="y", classifiers=False)

    assert labelled.task == "regression"
    assert "no source is a classifier" in labelled.why


def test_labelled_rows_gives_classification_when_target_has_many_integers_and_sources_are_classifiers(
    tmp_path: Path,
) -> None:
    table, path = csv_table(tmp_path, {**features_ab(30), "y": list(range(100, 130))})

    labelled = labelled_rows(table, PLAIN, path, target="y", classifiers=True)

    assert labelled.task == "classification"
    assert len(labelled.classes) == 30


def test_labelled_rows_keeps_regression_when_task_is_given_and_sources_are_classifiers(tmp_path: Path) -> None:
    table, path = csv_table(tmp_path, {**features_ab(), "y": [0, 1, 1, 0, 1, 0, 1, 0]})

    labelled = labelled_rows(table, PLAIN, path, target="y", task="regression", classifiers=True)

    assert labelled.task == "regression"
    assert labelled.why == "--task regression"


def test_merge_classifies_when_target_column_is_integral_float(rows, model_dir: Path, tmp_path: Path) -> None:
    """pandas writes a label column that once held a NaN as 0.0/1.0: with classifier sources it is a label."""
    x, y = rows["x"], rows["y"]
    linear = to_onnx(LogisticRegression().fit(x[:, :2], y), x[:1, :2], options={"zipmap": False})
    first = save(linear, model_dir / "f1.onnx")
    second = save(to_onnx(DecisionTreeClassifier(max_depth=3, random_state=0).fit(x[:, 2:4], y), x[:1, 2:4]),
                  model_dir / "f2.onnx")  # fmt: skip
    data = tmp_path / "float_label.csv"
    lines = ["a,b,c,d,y", *(",".join(f"{v:.6f}" for v in row[:4]) + f",{float(t):.1f}" for row, t in zip(x, y))]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "fused.onnx"

    result = run_cli("merge", first, second, "--features", "a,b", "--features", "c,d", "--data", data, "--target", "y",
                     "-o", out)  # fmt: skip

    assert result.exit_code == 0, result.stderr
    assert "classification (target 'y' holds 2 whole numbers and the sources are classifiers)" in result.stdout
    model = assert_checker_and_portable(out)
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    fused = assert_runtimes_agree(out, {"features": x[:200, :4]})
    assert set(np.unique(fused["label"]).tolist()) <= {0, 1}
    np.testing.assert_allclose(fused["probabilities"].sum(axis=1), 1.0, rtol=1e-5)


def test_labelled_rows_raises_naming_column_when_task_classification_and_target_is_fractional(tmp_path: Path) -> None:
    table, path = csv_table(tmp_path, {**features_ab(), "score": [0.5, 1.0, 2.0, 1.0, 0.0, 2.0, 1.0, 0.0]})

    assert "'score'" in raised(labelled_rows, table, PLAIN, path, target="score", task="classification")


def test_labelled_rows_raises_naming_column_when_task_regression_and_target_is_strings(tmp_path: Path) -> None:
    table, path = csv_table(tmp_path, {**features_ab(), "kind": ["x", "y", "x", "y", "x", "y", "x", "y"]})

    message = raised(labelled_rows, table, PLAIN, path, target="kind", task="regression")

    assert "'kind'" in message


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", ""])
def test_labelled_rows_raises_naming_column_when_target_has_nan_or_inf(tmp_path: Path, bad: str) -> None:
    target = ["0", "1", "0", bad, "1", "0", "1", "1"]
    table, path = csv_table(tmp_path, {**features_ab(), "label": target})

    message = raised(labelled_rows, table, PLAIN, path, target="label")

    assert "'label'" in message and "data.csv" in message


def test_labelled_rows_raises_naming_column_when_string_target_has_empty_cell(tmp_path: Path) -> None:
    table, path = csv_table(tmp_path, {**features_ab(), "label": ["x", "y", "", "x", "y", "x", "y", "x"]})

    assert "'label'" in raised(labelled_rows, table, PLAIN, path, target="label")


@pytest.mark.parametrize("task", ["auto", "regression", "classification"])
def test_labelled_rows_raises_naming_column_when_target_has_nan_and_task_is_given(tmp_path: Path, task: str) -> None:
    table, path = csv_table(tmp_path, {**features_ab(), "label": ["0", "1", "nan", "1", "0", "1", "0", "1"]})

    assert "'label'" in raised(labelled_rows, table, PLAIN, path, target="label", task=task)


def test_labelled_rows_raises_naming_column_when_target_column_is_missing(tmp_path: Path) -> None:
    table, path = csv_table(tmp_path, {**features_ab(), "y": [0, 1, 0, 1, 0, 1, 0, 1]})

    message = raised(labelled_rows, table, PLAIN, path, target="outcome")

    assert "'outcome'" in message and "data.csv" in message


@pytest.mark.parametrize("value", ["7", "only"])
def test_labelled_rows_raises_naming_column_when_target_has_one_class(tmp_path: Path, value: str) -> None:
    table, path = csv_table(tmp_path, {**features_ab(), "y": [value] * 8})

    message = raised(labelled_rows, table, PLAIN, path, target="y")

    assert "'y'" in message and value in message


def test_labelled_rows_passes_nan_through_when_feature_has_nan(tmp_path: Path) -> None:
    columns = features_ab()
    columns["b"] = [*columns["b"][:3], "nan", *columns["b"][4:]]
    columns["a"] = ["", *columns["a"][1:]]  # an empty cell in a float column is a missing value too
    table, path = csv_table(tmp_path, {**columns, "y": [0, 1, 0, 1, 0, 1, 0, 1]})

    labelled = labelled_rows(table, PLAIN, path, target="y")

    features = labelled.feeds["features"]
    assert features.shape == (8, 2) and features.dtype == np.float32
    missing = np.argwhere(np.isnan(features)).tolist()
    assert missing == [[0, 0], [3, 1]]
    np.testing.assert_array_equal(features[1:3], np.array([[0.25, 0.5], [0.5, 0.0]], np.float32))


def test_labelled_rows_orders_feature_columns_as_binding_when_binding_differs_from_file(tmp_path: Path) -> None:
    table, path = csv_table(tmp_path, {**features_ab(), "y": [0, 1, 0, 1, 0, 1, 0, 1]})
    swapped = Binding(features=("b", "a"), models=(), shared=())

    labelled = labelled_rows(table, swapped, path, target="y")

    np.testing.assert_array_equal(labelled.feeds["features"][:, 0], np.array(table["b"], np.float32))
    np.testing.assert_array_equal(labelled.feeds["features"][:, 1], np.array(table["a"], np.float32))


def test_labelled_rows_raises_naming_column_when_feature_column_is_strings(tmp_path: Path) -> None:
    colours = ["red", "green", "blue", "red", "green", "blue", "red", "green"]
    table, path = csv_table(tmp_path, {**features_ab(), "colour": colours, "y": [0, 1, 0, 1, 0, 1, 0, 1]})
    binding = Binding(features=("a", "colour"), models=(), shared=())

    message = raised(labelled_rows, table, binding, path, target="y")

    assert "'colour'" in message


# --- split_rows -------------------------------------------------------------------------------------------------------


def classified(target: Sequence[object]) -> Labelled:
    values = np.array(target, dtype=object if isinstance(target[0], str) else np.int64)
    classes = tuple(sorted(set(values.tolist())))
    return Labelled(feeds={}, target=values, task="classification", classes=classes)


def skewed_labels(seed: int = 3) -> list[int]:
    """100 rows, classes 0/1/2 in proportion 60/30/10, shuffled."""
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    return np.random.default_rng(seed).permutation(labels).tolist()


def test_split_rows_gives_same_indices_when_seed_is_same() -> None:
    labelled = classified(skewed_labels())

    first = split_rows(labelled, 0.2, seed=7, target="y")
    second = split_rows(labelled, 0.2, seed=7, target="y")

    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_split_rows_gives_other_indices_when_seed_differs() -> None:
    labelled = classified(skewed_labels())

    _, held_7 = split_rows(labelled, 0.2, seed=7, target="y")
    _, held_8 = split_rows(labelled, 0.2, seed=8, target="y")

    assert len(held_7) == len(held_8)
    assert held_7.tolist() != held_8.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_rows_partitions_rows_when_holdout_is_set(seed: int) -> None:
    labelled = classified(skewed_labels())

    train, held = split_rows(labelled, 0.2, seed=seed, target="y")

    assert len(held) == 20
    assert np.intersect1d(train, held).size == 0
    assert sorted([*train.tolist(), *held.tolist()]) == list(range(100))
    assert train.tolist() == sorted(train.tolist()) and held.tolist() == sorted(held.tolist())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_rows_keeps_class_proportions_when_classification(seed: int) -> None:
    labelled = classified(skewed_labels(seed))

    _, held = split_rows(labelled, 0.2, seed=seed, target="y")

    counts = {c: int(np.sum(labelled.target[held] == c)) for c in labelled.classes}
    expected = {0: 12, 1: 6, 2: 2}
    assert all(abs(counts[c] - expected[c]) <= 1 for c in expected), counts


def test_split_rows_gives_all_rows_to_training_when_holdout_is_zero() -> None:
    labelled = classified(skewed_labels())

    train, held = split_rows(labelled, 0.0, seed=0, target="y")

    assert train.tolist() == list(range(100))
    assert held.size == 0


def test_split_rows_splits_unstratified_when_regression() -> None:
    target = np.linspace(-1.0, 1.0, 50)
    labelled = Labelled(feeds={}, target=target, task="regression", classes=None)

    train, held = split_rows(labelled, 0.2, seed=0, target="yr")

    assert len(held) == 10 and len(train) == 40


def test_split_rows_raises_naming_class_and_column_when_class_has_one_row() -> None:
    labelled = classified(["common"] * 10 + ["usual"] * 10 + ["rare"])

    message = raised(split_rows, labelled, 0.2, seed=0, target="outcome")

    assert "'rare'" in message and "'outcome'" in message


def test_split_rows_raises_naming_class_as_user_wrote_it_when_integer_class_has_one_row() -> None:
    labelled = classified([0] * 10 + [1] * 10 + [2])

    message = raised(split_rows, labelled, 0.2, seed=0, target="y")

    assert "class 2 " in message and "'y'" in message, message
    assert "np." not in message and "int64" not in message, f"numpy repr leaked into the message: {message}"


# --- the command line on data -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory: pytest.TempPathFactory, rows: dict[str, np.ndarray]) -> Path:
    """Two skl2onnx classifiers fitted on columns a,b and c,d (inputs `ab_input`, `cd_input`)."""
    folder = tmp_path_factory.mktemp("data_sources")
    x, y = rows["x"][:ROWS], rows["y"][:ROWS]
    for name, estimator, columns in [
        ("lr.onnx", LogisticRegression(), "ab"),
        ("tree.onnx", DecisionTreeClassifier(max_depth=3, random_state=0), "cd"),
    ]:
        estimator.fit(x[:, columns_of(columns)], y)
        initial = [(f"{columns}_input", FloatTensorType([None, 2]))]
        save(to_onnx(estimator, initial_types=initial, target_opset=18), folder / name)
    return folder


def labelled_data(rows: dict[str, np.ndarray], target: np.ndarray | None = None) -> dict[str, np.ndarray]:
    return {"x": rows["x"][:ROWS], "y": rows["y"][:ROWS] if target is None else target}


def y_with(rows: dict[str, np.ndarray], value: float, *, at: int = 5) -> np.ndarray:
    target = rows["y"][:ROWS].astype(np.float64)
    target[at] = value
    return target


def write_data(kind: str, folder: Path, rows: dict[str, np.ndarray]) -> Path:
    """One of the data files the CLI cases use, written to `folder`."""
    if kind == "nan_target":
        return write_csv(folder / "nan_target.csv", labelled_data(rows, y_with(rows, np.nan)))
    if kind == "inf_target":
        return write_csv(folder / "inf_target.csv", labelled_data(rows, y_with(rows, np.inf)))
    if kind == "one_class":
        return write_csv(folder / "one_class.csv", labelled_data(rows, np.zeros(ROWS, dtype=np.int64)))
    if kind == "single_row_class":
        target = rows["y"][:ROWS].copy()
        target[11] = 2
        return write_csv(folder / "single_row_class.csv", labelled_data(rows, target))
    if kind == "empty":
        (folder / "empty.csv").write_bytes(b"")
        return folder / "empty.csv"
    if kind == "header_only":
        (folder / "header_only.csv").write_text(",".join((*COLUMNS, "y")) + "\n")
        return folder / "header_only.csv"
    return write_csv(folder / "data.csv", labelled_data(rows))


def merge_command(models: Path, out: Path, *extra: object, data: Path | None = None) -> list[object]:
    args: list[object] = ["merge", models / "lr.onnx", models / "tree.onnx", "--features", "a,b", "--features", "c,d"]
    if data is not None:
        args += ["--data", data, "--target", "y"]
    return [*args, "-o", out, *extra]


def assert_failed_cleanly(result: Result, out: Path, *culprits: str) -> None:
    shown = f"exit {result.exit_code}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.exit_code == 2, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for culprit in culprits:
        assert culprit in lines[0], f"{culprit!r} not named: {lines[0]!r}"
    assert not out.exists(), "a failed merge left OUT"
    assert sorted(p.name for p in out.parent.iterdir()) == [], "a failed merge left files beside OUT"


DATA_MISTAKES = [
    pytest.param("nan_target", ("nan_target.csv", "'y'", "NaN"), id="nan_in_target"),
    pytest.param("inf_target", ("inf_target.csv", "'y'", "infinite"), id="inf_in_target"),
    pytest.param("one_class", ("one_class.csv", "'y'", "one class"), id="one_class_only"),
    pytest.param("single_row_class", ("'y'", "class 2"), id="class_with_one_row"),
    pytest.param("empty", ("empty.csv",), id="empty_data"),
    pytest.param("header_only", ("header_only.csv",), id="header_only_data"),
]


@pytest.mark.parametrize(("kind", "culprits"), DATA_MISTAKES)
def test_merge_exits_2_with_one_error_line_when_data_is_bad(
    tmp_path: Path, classifiers: Path, rows: dict[str, np.ndarray], kind: str, culprits: tuple[str, ...]
) -> None:
    data = write_data(kind, tmp_path, rows)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "fused.onnx"

    result = run_cli(*merge_command(classifiers, out, data=data))

    assert_failed_cleanly(result, out, *culprits)


def test_merge_exits_2_naming_column_when_target_column_is_missing(
    tmp_path: Path, classifiers: Path, rows: dict[str, np.ndarray]
) -> None:
    data = write_data("good", tmp_path, rows)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "fused.onnx"
    args = merge_command(classifiers, out, data=data)
    args[args.index("--target") + 1] = "outcome"

    result = run_cli(*args)

    assert_failed_cleanly(result, out, "'outcome'")


def test_merge_exits_2_naming_stack_and_data_when_stack_has_no_data(tmp_path: Path, classifiers: Path) -> None:
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "fused.onnx"

    result = run_cli(*merge_command(classifiers, out))

    assert_failed_cleanly(result, out, "stack", "--data")


def write_parquet(path: Path, rows: dict[str, np.ndarray]) -> Path:
    x = rows["x"][:ROWS]
    arrays = [pa.array(x[:, i]) for i in range(len(COLUMNS))] + [pa.array(rows["y"][:ROWS])]
    pq.write_table(pa.Table.from_arrays(arrays, names=[*COLUMNS, "y"]), path)
    return path


def test_merge_writes_out_and_report_when_data_is_parquet(
    tmp_path: Path, classifiers: Path, rows: dict[str, np.ndarray]
) -> None:
    data = write_parquet(tmp_path / "data.parquet", rows)
    out, report = tmp_path / "fused.onnx", tmp_path / "r.json"

    result = run_cli(*merge_command(classifiers, out, "--report", report, data=data))

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"wrote {out}"), result.stdout
    assert "fused" in result.stdout and "baseline" in result.stdout, "the hold-out table is printed"
    metrics = json.loads(report.read_text())["holdout"]["metrics"]
    assert "fused" in metrics, metrics
    assert any(name.startswith("baseline") for name in metrics), metrics
    assert set(metrics["fused"]) == {"accuracy", "log_loss", "roc_auc"}
    assert_checker_and_portable(out)
    fused = assert_runtimes_agree(out, {"features": rows["x"][:64, columns_of("abcd")]})
    assert fused["probabilities"].shape == (64, 2)
    np.testing.assert_allclose(fused["probabilities"].sum(axis=1), 1.0, rtol=1e-5)


def test_merge_prints_no_table_and_reports_no_metrics_when_holdout_is_zero(
    tmp_path: Path, classifiers: Path, rows: dict[str, np.ndarray]
) -> None:
    data = write_data("good", tmp_path, rows)
    out, report = tmp_path / "fused.onnx", tmp_path / "r.json"

    result = run_cli(*merge_command(classifiers, out, "--holdout", "0", "--report", report, data=data))

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [result.stdout.splitlines()[-1]], "only the `wrote` line"
    assert result.stdout.startswith(f"wrote {out}"), result.stdout
    assert "baseline" not in result.stdout and "hold-out" not in result.stdout
    holdout = json.loads(report.read_text())["holdout"]
    assert holdout["metrics"] == {}
    assert holdout["rows"] == {"train": ROWS, "holdout": 0, "skipped_not_finite": 0, "patterns": {"m1+m2": ROWS}}
    assert out.is_file()
    onnx.checker.check_model(str(out), full_check=True)


def test_merge_trains_on_rows_with_a_source_masked_and_counts_those_with_an_infinite_feature(
    tmp_path: Path, classifiers: Path, rows: dict[str, np.ndarray]
) -> None:
    broken = {k: v.copy() for k, v in rows.items()}
    broken["x"][:10, 0] = np.nan  # a source fed NaN says NaN: it is masked there, and those rows train the head
    broken["x"][10:15, 2] = np.inf
    data = write_data("holes", tmp_path, broken)
    out, report = tmp_path / "fused.onnx", tmp_path / "r.json"

    result = run_cli(*merge_command(classifiers, out, "--passthrough", "--report", report, data=data))

    assert result.exit_code == 0, result.stderr
    rows_used = json.loads(report.read_text())["holdout"]["rows"]
    assert rows_used["skipped_not_finite"] == 5
    assert rows_used["train"] + rows_used["holdout"] == ROWS - 5
    assert sum(rows_used["patterns"].values()) == ROWS and rows_used["patterns"].get("none", 0) == 0
    fused = ort_outputs(out, {"features": broken["x"][:20, :4]})
    assert np.isfinite(fused["probabilities"][:10]).all() and np.isfinite(fused["probabilities"][15:]).all()


# --- an .npz array feeding a model input that is not a column ---------------------------------------------------------

IMAGE_WEIGHT, IMAGE_BIAS = 2.0, 0.5


def image_model() -> onnx.ModelProto:
    """A regressor on `img` float [N, 2, 2]: `mean(img over axes 1, 2) @ [[2]] + 0.5`, output [N, 1]."""
    nodes = [
        helper.make_node("ReduceMean", ["img", "axes"], ["pooled"], keepdims=0),
        helper.make_node("Unsqueeze", ["pooled", "column_axis"], ["column"]),
        helper.make_node("MatMul", ["column", "weight"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["score"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "column_axis"),
        numpy_helper.from_array(np.array([[IMAGE_WEIGHT]], dtype=np.float32), "weight"),
        numpy_helper.from_array(np.array([IMAGE_BIAS], dtype=np.float32), "bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "image_regressor",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 2, 2])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_merge_feeds_npz_array_to_shared_input_when_model_input_is_not_a_column(
    tmp_path: Path, rows: dict[str, np.ndarray]
) -> None:
    x = rows["x"][:ROWS, columns_of("a")]
    regression = LinearRegression().fit(x, rows["yr"][:ROWS])
    linear_proto = to_onnx(regression, initial_types=[("a", FloatTensorType([None, 1]))], target_opset=18)
    linear = save(linear_proto, tmp_path / "linear_a.onnx")
    image = save(image_model(), tmp_path / "image.onnx")
    count = 64
    rng = np.random.default_rng(5)
    a = rows["x"][:count, 0].astype(np.float64)
    img = rng.normal(size=(count, 2, 2)).astype(np.float32)
    data = tmp_path / "rows.npz"
    np.savez(data, a=a, img=img)
    out = tmp_path / "fused.onnx"

    result = run_cli("merge", linear, image, "--data", data, "--fusion", "mean", "-o", out)

    assert result.exit_code == 0, f"stdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    model = assert_checker_and_portable(out)
    assert sorted(i.name for i in model.graph.input) == ["features", "img"]
    assert [o.name for o in model.graph.output] == ["prediction"]
    feeds = {"features": a.astype(np.float32)[:, None], "img": img}
    fused = assert_runtimes_agree(out, feeds)
    linear_prediction = np.asarray(next(iter(ort_outputs(linear, {"a": feeds["features"]}).values()))).ravel()
    image_prediction = np.asarray(next(iter(ort_outputs(image, {"img": img}).values()))).ravel()
    np.testing.assert_allclose(image_prediction, IMAGE_WEIGHT * img.mean(axis=(1, 2)) + IMAGE_BIAS, rtol=1e-5)
    expected = (linear_prediction + image_prediction) / 2
    assert np.asarray(fused["prediction"]).shape == (count,)
    np.testing.assert_allclose(fused["prediction"], expected, rtol=1e-5, atol=1e-5)


# --- string columns, float64 features, integer inputs -----------------------------------------------------------------


def test_string_rows_gives_n_by_1_strings_with_empty_for_missing_when_csv_or_parquet(tmp_path: Path) -> None:
    from onnxfuse.data import string_rows

    csv = write_text_csv(tmp_path / "colours.csv", ["colour", "x"], [["red", 1], ["", 2], ["blue", 3]])
    parquet = tmp_path / "colours.parquet"
    pq.write_table(pa.table({"colour": ["red", None, "blue"], "x": [1, 2, 3]}), parquet)
    for path in (csv, parquet):
        rows = string_rows(read_table(path), "colour", path)
        assert rows.shape == (3, 1) and rows.dtype == object
        assert rows[:, 0].tolist() == ["red", "", "blue"]


def test_string_rows_raises_naming_column_when_column_holds_floats(tmp_path: Path) -> None:
    from onnxfuse.data import string_rows

    table, path = csv_table(tmp_path, {"colour": [0.5, 1.5]})
    assert "'colour'" in raised(string_rows, table, "colour", path)


def test_feature_rows_keeps_every_digit_when_dtype_is_float64(tmp_path: Path) -> None:
    from onnxfuse.data import feature_rows

    table, path = csv_table(tmp_path, {"t": [1_700_001_799, 1_700_000_001]})
    assert feature_rows(table, ("t",), path, dtype=np.float64)[:, 0].tolist() == [1_700_001_799, 1_700_000_001]
    assert feature_rows(table, ("t",), path)[:, 0].tolist() == [1_700_001_792, 1_700_000_000]  # float32 rounds


def integer_reader(dtype: int) -> Binding:
    """Model 1 reads column `n` through an int64 input; `features` of `dtype`."""
    from onnxfuse.bind import InputBinding

    reader = InputBinding(name="n_input", elem_type=TensorProto.INT64, rank=2, columns=("n",))
    return Binding(features=("n",), models=((reader,),), shared=(), dtype=dtype, labels=("model 1 (ints.onnx)",))


@pytest.mark.parametrize(
    ("values", "dtype", "said"),
    [
        ([1, 2**24 + 1], TensorProto.FLOAT, ("2^24", "--features-dtype float64")),
        ([1, 2**53 + 2], TensorProto.DOUBLE, ("2^53",)),
        ([1.0, float("nan")], TensorProto.DOUBLE, ("NaN",)),
    ],
    ids=["beyond_2_24_in_float32", "beyond_2_53_in_float64", "nan"],
)
def test_check_bound_columns_raises_naming_column_and_model_when_integer_input_cannot_read_it(
    tmp_path: Path, values: list, dtype: int, said: tuple[str, ...]
) -> None:
    from onnxfuse.feeds import check_bound_columns

    table = {"n": np.array(values)}
    message = raised(check_bound_columns, table, integer_reader(dtype), tmp_path / "data.csv")
    for part in ("column 'n'", "model 1 (ints.onnx)", "'n_input'", *said):
        assert part in message, message


def test_check_bound_columns_passes_when_integers_fit_the_features_dtype(tmp_path: Path) -> None:
    from onnxfuse.feeds import check_bound_columns

    check_bound_columns({"n": np.array([1, 2**24])}, integer_reader(TensorProto.FLOAT), tmp_path / "data.csv")
    check_bound_columns({"n": np.array([1, 2**40])}, integer_reader(TensorProto.DOUBLE), tmp_path / "data.csv")


def test_labelled_rows_refuses_a_date_target_naming_it(tmp_path: Path) -> None:
    """A Parquet date column is no label: one error naming it, not a TypeError from the task rules."""
    import datetime

    path = tmp_path / "dates.parquet"
    days = [datetime.date(2020, 1, day) for day in range(1, 9)]
    pq.write_table(pa.table({**features_ab(), "when": pa.array(days)}), path)

    message = raised(labelled_rows, read_table(path), PLAIN, path, target="when")

    assert "'when'" in message and "dates" in message and "dates.parquet" in message


def test_string_rows_refuses_bytes_that_are_not_utf8_naming_the_column(tmp_path: Path) -> None:
    """A CSV string cell in another encoding (Latin-1 here) is named with the fix, not a UnicodeDecodeError."""
    from onnxfuse.data import string_rows

    path = tmp_path / "latin1.csv"
    path.write_bytes("a,color\n1,gr\u00fcn\n2,blue\n".encode("latin-1"))

    message = raised(string_rows, read_table(path), "color", path)

    assert "'color'" in message and "UTF-8" in message and "latin1.csv" in message


def test_merge_feeds_a_bool_column_to_the_rank_2_input_of_its_name(tmp_path: Path) -> None:
    """A source input `flag: bool [N, 1]` bound by name to the data column `flag` gets `[N, 1]`, not the
    column's `[N]` (onnxruntime refused the rank: exit 1); the fused file equals the source on those rows."""
    from conftest import assert_runtimes_agree, ort_outputs, run_cli, save
    from onnx import helper

    weights = helper.make_tensor("W", TensorProto.FLOAT, [3, 2], [1, -1, 0.5, -0.5, -0.3, 0.3])
    nodes = [helper.make_node("Cast", ["flag"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Concat", ["f", "a", "b"], ["fx"], axis=1),
             helper.make_node("MatMul", ["fx", "W"], ["z"]),
             helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
             helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0)]  # fmt: skip
    inputs = [helper.make_tensor_value_info(name, kind, ["N", 1])
              for name, kind in (("flag", TensorProto.BOOL), ("a", TensorProto.FLOAT), ("b", TensorProto.FLOAT))]
    outputs = [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])]  # fmt: skip
    graph = helper.make_graph(nodes, "flagged", inputs, outputs, initializer=[weights])
    flagged = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10),
                   tmp_path / "flagged.onnx")  # fmt: skip
    rng = np.random.default_rng(3)
    a, b, c = rng.normal(size=(3, 60)).round(3)
    flag = rng.random(60) < 0.5
    data = tmp_path / "data.parquet"
    pq.write_table(pa.table({"flag": flag, "a": a, "b": b, "c": c, "y": (a + c > 0).astype(np.int64)}), data)
    other = tmp_path / "other.onnx"
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    save(to_onnx(LogisticRegression().fit(c.reshape(-1, 1), a > 0), c[:1].reshape(1, 1).astype(np.float32),
                 options={"zipmap": False}), other)  # fmt: skip
    out = tmp_path / "fused.onnx"

    result = run_cli("merge", flagged, other, "--features", "-", "--features", "c", "--data", data, "--target", "y",
                     "--keep-model-outputs", "-o", out)  # fmt: skip

    assert result.exit_code == 0, result.stderr
    feeds = {"features": np.stack([a, b, c], axis=1).astype(np.float32), "flag": flag.reshape(-1, 1)}
    fused = assert_runtimes_agree(out, feeds)
    alone = ort_outputs(flagged, {"flag": flag.reshape(-1, 1), "a": feeds["features"][:, :1],
                                  "b": feeds["features"][:, 1:2]})  # fmt: skip
    np.testing.assert_array_equal(fused["m1/probabilities"], alone["probabilities"])


def test_read_table_refuses_an_npz_member_of_an_unknown_compression_naming_the_file(tmp_path: Path) -> None:
    """A damaged `.npz` whose member names a compression method zipfile does not know is one error, not
    NotImplementedError (exit 1)."""
    import zipfile

    path = tmp_path / "damaged.npz"
    np.savez_compressed(path, x=np.arange(10.0), y=np.arange(10))
    data = bytearray(path.read_bytes())
    for header in (b"PK\x03\x04", b"PK\x01\x02"):  # local and central headers: compression method at +8 / +10
        start = 0
        while (start := data.find(header, start)) != -1:
            offset = start + (8 if header == b"PK\x03\x04" else 10)
            data[offset : offset + 2] = (99).to_bytes(2, "little")
            start += 4
    path.write_bytes(bytes(data))
    with pytest.raises(NotImplementedError), zipfile.ZipFile(path) as archive:  # what zipfile itself does
        archive.read(archive.namelist()[0])

    message = raised(read_table, path)

    assert "damaged.npz" in message
