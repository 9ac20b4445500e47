"""Tests of `onnxfuse verify FUSED MODEL...`: 0 when the file reproduces its sources, 1 when not, 2 for bad input."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import lightgbm
import numpy as np
import onnx
import onnxmltools
import pytest
from click.testing import Result
from conftest import assert_one_error_line, columns_of, run_cli, save, write_csv
from onnx import helper, numpy_helper
from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

EXAMPLE = Path(__file__).resolve().parents[1] / "models"
EXAMPLE_FLAGS = ("--features", "a,b", "--features", "c,d", "--data", "train.csv", "--target", "y")
ROWS = 600


@pytest.fixture(autouse=True)
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONNXFUSE_DEBUG", raising=False)


def merged(result: Result) -> None:
    assert result.exit_code == 0, f"stdout: {result.stdout!r}\nstderr: {result.stderr!r}"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ copied, and fused three ways: stack, mean, and stack with --keep-model-outputs."""
    folder = tmp_path_factory.mktemp("verify_example")
    for name in ("a.onnx", "b.onnx", "train.csv"):
        shutil.copy(EXAMPLE / name, folder / name)
    flags = [str(folder / a) if a.endswith(".csv") else a for a in EXAMPLE_FLAGS]
    sources = (folder / "a.onnx", folder / "b.onnx")
    merged(run_cli("merge", *sources, *flags, "-o", folder / "stack.onnx"))
    merged(run_cli("merge", *sources, *flags, "--fusion", "mean", "-o", folder / "mean.onnx"))
    merged(run_cli("merge", *sources, *flags, "--keep-model-outputs", "-o", folder / "keep.onnx"))
    return folder


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, rows: dict[str, np.ndarray]) -> Path:
    """LightGBM (onnxmltools) on a,b and scaler + logistic regression (skl2onnx) on c,d, fused by a stack head."""
    folder = tmp_path_factory.mktemp("verify_fitted")
    x, y = rows["x"][:ROWS], rows["y"][:ROWS]
    booster = lightgbm.LGBMClassifier(n_estimators=15, num_leaves=7, random_state=0, verbose=-1)
    booster.fit(x[:, columns_of("ab")], y)
    save(onnxmltools.convert_lightgbm(booster, initial_types=[("ab_input", MLFloat([None, 2]))]), folder / "lgbm.onnx")
    save(_logistic(x[:, columns_of("cd")], y), folder / "logistic.onnx")
    write_csv(folder / "rows.csv", {k: v[:ROWS] for k, v in rows.items()})
    flags = ("--features", "a,b", "--features", "c,d", "--data", folder / "rows.csv", "--target", "y")
    merged(run_cli("merge", folder / "lgbm.onnx", folder / "logistic.onnx", *flags, "-o", folder / "stack.onnx"))
    return folder


def _logistic(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> onnx.ModelProto:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c)).fit(x, y)
    return to_onnx(model, initial_types=[("cd_input", FloatTensorType([None, 2]))], target_opset=18)


@pytest.fixture
def workdir(tmp_path: Path, example: Path) -> Path:
    """A copy of the example folder a test may change."""
    shutil.copytree(example, tmp_path / "w")
    return tmp_path / "w"


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def scratch_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".verify.onnx") or p.name.startswith("."))


CASES = [
    pytest.param("example", "stack.onnx", ("a.onnx", "b.onnx"), "train.csv", id="stack"),
    pytest.param("example", "mean.onnx", ("a.onnx", "b.onnx"), "train.csv", id="mean"),
    pytest.param("example", "keep.onnx", ("a.onnx", "b.onnx"), "train.csv", id="keep_model_outputs"),
    pytest.param("fitted", "stack.onnx", ("lgbm.onnx", "logistic.onnx"), "rows.csv", id="lightgbm_stack"),
]


@pytest.mark.parametrize("with_data", [True, False], ids=["data", "seeded_rows"])
@pytest.mark.parametrize("reverse", [False, True], ids=["in_order", "reversed"])
@pytest.mark.parametrize(("fixture", "fused", "sources", "data"), CASES)
def test_verify_prints_ok_when_file_is_freshly_merged(
    request: pytest.FixtureRequest,
    fixture: str,
    fused: str,
    sources: tuple[str, str],
    data: str,
    reverse: bool,
    with_data: bool,
) -> None:
    folder: Path = request.getfixturevalue(fixture)
    before = snapshot(folder)
    models = [folder / name for name in (reversed(sources) if reverse else sources)]

    result = run_cli("verify", folder / fused, *models, *(("--data", folder / data) if with_data else ()))

    assert result.exit_code == 0, f"stdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.stdout.splitlines() == [f"ok: {folder / fused} reproduces its 2 sources"]
    assert result.stderr == ""
    assert scratch_files(folder) == []
    assert snapshot(folder) == before


def test_verify_exits_1_naming_the_file_when_a_source_was_retrained(workdir: Path, rows: dict[str, np.ndarray]) -> None:
    x = rows["x"][:ROWS, columns_of("cd")]
    save(_logistic(x, rows["y"][:ROWS], c=0.01), workdir / "b.onnx")
    before = snapshot(workdir)

    result = run_cli("verify", workdir / "stack.onnx", workdir / "a.onnx", workdir / "b.onnx")

    line = assert_one_error_line(result, "stack.onnx", "b.onnx", code=1)
    assert "does not reproduce its sources" in line
    assert result.stdout == ""
    assert scratch_files(workdir) == []
    assert snapshot(workdir) == before


def _node(model: onnx.ModelProto, prefix: str, op_type: str) -> onnx.NodeProto:
    found = [n for n in model.graph.node if n.name.startswith(prefix) and n.op_type == op_type]
    assert len(found) == 1, [(n.name, n.op_type) for n in model.graph.node]
    return found[0]


def _set_attribute(node: onnx.NodeProto, name: str, change: Callable[[list], list]) -> None:
    for index, attribute in enumerate(node.attribute):
        if attribute.name == name:
            node.attribute[index].CopyFrom(helper.make_attribute(name, change(helper.get_attribute_value(attribute))))
            return
    raise AssertionError(f"{node.name} has no attribute {name}")


def shift_tree_thresholds(model: onnx.ModelProto) -> None:
    """m1's forest: every split threshold moved by +0.7."""
    node = _node(model, "m1/", "TreeEnsembleClassifier")
    _set_attribute(node, "nodes_values", lambda values: [v + 0.7 for v in values])


def double_linear_coefficients(model: onnx.ModelProto) -> None:
    """m2's logistic regression: coefficients doubled."""
    node = _node(model, "m2/", "LinearClassifier")
    _set_attribute(node, "coefficients", lambda values: [2 * v for v in values])


def swap_m1_columns(model: onnx.ModelProto) -> None:
    """The initializer under m1/ that picks m1's columns from `features`, reversed: model 1 reads (b, a)."""
    found = [t for t in model.graph.initializer if t.name.startswith("m1/") and t.name.endswith("columns")]
    assert len(found) == 1, [t.name for t in model.graph.initializer]
    columns = numpy_helper.to_array(found[0])
    found[0].CopyFrom(numpy_helper.from_array(columns[::-1].copy(), found[0].name))


@pytest.mark.parametrize("tamper", [shift_tree_thresholds, double_linear_coefficients, swap_m1_columns])
def test_verify_exits_1_when_fused_file_was_tampered(workdir: Path, tamper: Callable[[onnx.ModelProto], None]) -> None:
    fused = workdir / "stack.onnx"
    model = onnx.load(str(fused))
    recorded = list(model.metadata_props)
    tamper(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(fused))
    assert list(onnx.load(str(fused)).metadata_props) == recorded, "the tamper keeps the metadata"
    before = snapshot(workdir)

    result = run_cli("verify", fused, workdir / "a.onnx", workdir / "b.onnx", "--data", workdir / "train.csv")

    line = assert_one_error_line(result, "stack.onnx", code=1)
    assert "does not reproduce its sources" in line
    assert result.stdout == ""
    assert scratch_files(workdir) == []
    assert snapshot(workdir) == before


def _truncate(folder: Path) -> None:
    payload = (folder / "stack.onnx").read_bytes()
    (folder / "truncated.onnx").write_bytes(payload[: len(payload) // 2])


BAD_INPUT = [
    pytest.param(("a.onnx", "a.onnx", "b.onnx"), None, ("a.onnx", "onnxfuse"), id="fused_not_by_onnxfuse"),
    pytest.param(("stack.onnx", "a.onnx"), None, ("stack.onnx", "2", "1 given"), id="too_few_models"),
    pytest.param(("stack.onnx", "a.onnx", "b.onnx", "a.onnx"), None, ("stack.onnx", "3 given"), id="too_many_models"),
    pytest.param(("stack.onnx", "a.onnx", "ghost.onnx"), None, ("ghost.onnx",), id="model_missing"),
    pytest.param(("truncated.onnx", "a.onnx", "b.onnx"), _truncate, ("truncated.onnx",), id="fused_truncated"),
    pytest.param(("ghost_fused.onnx", "a.onnx", "b.onnx"), None, ("ghost_fused.onnx",), id="fused_missing"),
    pytest.param(("stack.onnx",), None, ("MODELS",), id="no_models"),
]


@pytest.mark.parametrize(("args", "prepare", "culprits"), BAD_INPUT)
def test_verify_exits_2_with_one_error_line_when_input_is_bad(
    workdir: Path, args: tuple[str, ...], prepare: Callable[[Path], None] | None, culprits: tuple[str, ...]
) -> None:
    if prepare is not None:
        prepare(workdir)
    before = snapshot(workdir)

    result = run_cli("verify", *(workdir / name for name in args))

    assert_one_error_line(result, *culprits, code=2)
    assert result.stdout == ""
    assert scratch_files(workdir) == []
    assert snapshot(workdir) == before
