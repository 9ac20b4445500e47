"""Tests of `onnxfuse verify FUSED MODEL...`: 0 when the file reproduces its sources, 1 when not, 2 for bad input.

"Reproduces" covers the whole file: each source's copy, the head recomputed from the source files' outputs,
and the file's bytes (and weights' file above 2 GB) against the digest merge sealed into it.
"""

from __future__ import annotations

import functools
import json
import shutil
import warnings
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
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from onnxfuse import digest, emit, pipeline

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
    """models/ copied, and fused three ways: a linear stack (its LinearClassifier is what a test tampers with),
    mean, and the default stack with --keep-model-outputs."""
    folder = tmp_path_factory.mktemp("verify_example")
    for name in ("a.onnx", "b.onnx", "train.csv"):
        shutil.copy(EXAMPLE / name, folder / name)
    flags = [str(folder / a) if a.endswith(".csv") else a for a in EXAMPLE_FLAGS]
    sources = (folder / "a.onnx", folder / "b.onnx")
    merged(run_cli("merge", *sources, *flags, "--meta", "linear", "-o", folder / "stack.onnx"))
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


def test_verify_without_models_is_a_usage_error_with_the_help_hint(workdir: Path) -> None:
    before = snapshot(workdir)
    result = run_cli("verify", workdir / "stack.onnx")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: Missing argument 'MODELS...'.", "Try 'onnxfuse verify -h' for help."]
    assert snapshot(workdir) == before


# ------------------------------------------------------------------------------------------------
# The head and the whole file: recomputed head, digest, weights' files above 2 GB
# ------------------------------------------------------------------------------------------------


def negate_head_coefficients(model: onnx.ModelProto) -> None:
    """The stack head's logistic regression: every coefficient negated (the sources' copies untouched)."""
    node = _node(model, "fusion/head/", "LinearClassifier")
    _set_attribute(node, "coefficients", lambda values: [-v for v in values])


def head_reads_model_2_for_model_1(model: onnx.ModelProto) -> None:
    """The head's column of model 1 taken from model 2's probabilities (where model 1 is available)."""
    first, second = _node(model, "fusion/m1/filled", "Where"), _node(model, "fusion/m2/filled", "Where")
    first.input[1] = second.input[1]


def head_reads_inside_model_1(model: onnx.ModelProto) -> None:
    """The head's column of model 1 taken from model 1's input columns (feature b), not its probabilities."""
    _node(model, "fusion/m1/meta", "Gather").input[0] = _node(model, "m1/bind/", "Gather").output[0]


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        (negate_head_coefficients, "onnxfuse.digest"),
        (head_reads_model_2_for_model_1, "onnxfuse.digest"),
        (head_reads_inside_model_1, "'m1/bind/X/gathered' from inside a source's computation"),
    ],
)
def test_verify_exits_1_naming_the_head_when_the_head_was_tampered(
    workdir: Path, tamper: Callable[[onnx.ModelProto], None], named: str
) -> None:
    fused = workdir / "stack.onnx"
    model = onnx.load(str(fused))
    tamper(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(fused))
    before = snapshot(workdir)

    result = run_cli("verify", fused, workdir / "a.onnx", workdir / "b.onnx", "--data", workdir / "train.csv")

    line = assert_one_error_line(result, "stack.onnx", "does not reproduce its sources", named, code=1)
    if named == "onnxfuse.digest":
        assert "its sources' copies and head agree on the verification rows" in line
    assert result.stdout == ""
    assert scratch_files(workdir) == []
    assert snapshot(workdir) == before


def _mlp(x: np.ndarray, y: np.ndarray, name: str) -> onnx.ModelProto:
    """scikit-learn's MLPClassifier: its weights are initializers (two over 1 KB, so above 2 GB they go external)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few hundred rows: converged enough for a source
        model = MLPClassifier(hidden_layer_sizes=(32, 32), max_iter=300, random_state=0).fit(x, y)
    return to_onnx(
        model, initial_types=[(name, FloatTensorType([None, 2]))], target_opset=18, options={"zipmap": False}
    )


def merge_mlps(folder: Path, rows: dict[str, np.ndarray], out: Path) -> None:
    x, y = rows["x"][:ROWS], rows["y"][:ROWS]
    if not (folder / "rows.csv").exists():
        save(_mlp(x[:, columns_of("ab")], y, "ab_input"), folder / "mlp_ab.onnx")
        save(_mlp(x[:, columns_of("cd")], y, "cd_input"), folder / "mlp_cd.onnx")
        write_csv(folder / "rows.csv", {k: v[:ROWS] for k, v in rows.items()})
    flags = ("--features", "a,b", "--features", "c,d", "--data", folder / "rows.csv", "--target", "y")
    merged(run_cli("merge", folder / "mlp_ab.onnx", folder / "mlp_cd.onnx", *flags, "-o", out))


MLP_SOURCES = ("mlp_ab.onnx", "mlp_cd.onnx")


@pytest.fixture(scope="module")
def mlps(tmp_path_factory: pytest.TempPathFactory, rows: dict[str, np.ndarray]) -> Path:
    """Two MLP classifiers (skl2onnx) stacked: `stack.onnx` in one file, `large/stack.onnx` as if over 2 GB."""
    folder = tmp_path_factory.mktemp("verify_mlps")
    merge_mlps(folder, rows, folder / "stack.onnx")
    (folder / "large").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "stage", functools.partial(emit.stage, limit=0))  # every file counts as over 2 GB
        merge_mlps(folder, rows, folder / "large" / "stack.onnx")
    return folder


def _verify_mlps(fused: Path) -> Result:
    folder = fused.parent if fused.parent.name != "large" else fused.parent.parent
    return run_cli("verify", fused, *(folder / name for name in MLP_SOURCES), "--data", folder / "rows.csv")


def test_verify_exits_1_naming_the_source_copy_when_an_m1_initializer_was_changed(tmp_path: Path, mlps: Path):
    folder = tmp_path / "w"
    shutil.copytree(mlps, folder)
    model = onnx.load(str(folder / "stack.onnx"))
    weights = [t for t in model.graph.initializer if t.name.startswith("m1/") and t.data_type == onnx.TensorProto.FLOAT]
    assert weights, [t.name for t in model.graph.initializer]
    weights[0].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights[0]) * 1.5, weights[0].name))
    onnx.save(model, str(folder / "stack.onnx"))

    result = _verify_mlps(folder / "stack.onnx")

    line = assert_one_error_line(result, "stack.onnx", "m1/", "model 1 alone", code=1)
    assert "values differ" in line
    assert scratch_files(folder) == []


def test_verify_exits_1_when_the_feature_order_metadata_was_reordered(workdir: Path) -> None:
    fused = workdir / "stack.onnx"
    model = onnx.load(str(fused))
    (entry,) = [p for p in model.metadata_props if p.key == "onnxfuse.features"]
    entry.value = json.dumps(["b", "a", "c", "d"])
    onnx.save(model, str(fused))

    result = run_cli("verify", fused, workdir / "a.onnx", workdir / "b.onnx", "--data", workdir / "train.csv")

    line = assert_one_error_line(result, "stack.onnx", code=1)
    assert "['b', 'a', 'c', 'd']" in line
    assert scratch_files(workdir) == []


def test_verify_exits_1_saying_nothing_proves_the_head_when_the_file_has_no_digest(workdir: Path) -> None:
    """Files written before onnxfuse sealed them: the checks that can run pass, but verify does not say ok."""
    fused = workdir / "stack.onnx"
    model = onnx.load(str(fused))
    kept = [p for p in model.metadata_props if p.key != "onnxfuse.digest"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(fused))

    result = run_cli("verify", fused, workdir / "a.onnx", workdir / "b.onnx")

    line = assert_one_error_line(result, "stack.onnx", "records no onnxfuse.digest", "merge it again", code=1)
    assert "its sources' copies and head agree" in line


def test_verify_prints_ok_when_the_file_was_written_over_the_limit(mlps: Path) -> None:
    (data,) = sorted((mlps / "large").glob("stack.*.data"))
    assert digest.external_locations(mlps / "large" / "stack.onnx") == [data.name]

    for fused in (mlps / "stack.onnx", mlps / "large" / "stack.onnx"):
        result = _verify_mlps(fused)
        assert result.exit_code == 0, f"stdout: {result.stdout!r}\nstderr: {result.stderr!r}"
        assert result.stdout.splitlines() == [f"ok: {fused} reproduces its 2 sources"]


def test_verify_exits_1_naming_the_weights_file_when_it_is_not_the_one_written(tmp_path: Path, mlps: Path) -> None:
    """Bytes appended to the weights' file change no weight (the outputs agree); its name's hash catches it."""
    shutil.copytree(mlps, tmp_path / "w")
    (data,) = sorted((tmp_path / "w" / "large").glob("stack.*.data"))
    with open(data, "ab") as handle:
        handle.write(b"\0" * 64)

    result = _verify_mlps(tmp_path / "w" / "large" / "stack.onnx")

    line = assert_one_error_line(result, "stack.onnx", data.name, code=1)
    assert "is not the one it was written with" in line


def test_merge_writes_identical_bytes_and_digest_when_run_twice(tmp_path: Path, mlps: Path) -> None:
    shutil.copytree(mlps, tmp_path / "w")
    again = tmp_path / "w" / "again.onnx"
    merged(
        run_cli(
            "merge", *(tmp_path / "w" / name for name in MLP_SOURCES), "--features", "a,b", "--features", "c,d",
            "--data", tmp_path / "w" / "rows.csv", "--target", "y", "-o", again,
        )
    )  # fmt: skip
    assert again.read_bytes() == (mlps / "stack.onnx").read_bytes()
    assert digest.read_metadata(again)["onnxfuse.digest"].startswith('"sha256:')
    digest.check_digest(again)
