"""Tests of `merge --spec`: the merge the flags give, paths relative to the spec, flags win, bad specs exit 2."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
import pytest
from click.testing import Result
from conftest import assert_checker_and_portable, assert_one_error_line, run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "models"
# The options of models/fuse.toml, as flags (models and --features in the same order).
EXAMPLE_FLAGS = (
    "--features", "a,b", "--features", "c,d", "--data", "train.csv", "--target", "y",
    "--fusion", "stack", "--meta", "linear", "--holdout", "0.2", "--seed", "0",
)  # fmt: skip
# The spec keys INTERFACE.md names; an unknown-key error must list them all.
KNOWN_KEYS = (
    "output", "data", "target", "fusion", "meta", "task", "passthrough", "holdout", "seed",
    "target_opset", "max_ir_version", "keep_model_outputs", "ort", "report",
)  # fmt: skip
MODEL_KEYS = ("path", "features", "name")


@pytest.fixture(autouse=True)
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONNXFUSE_DEBUG", raising=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """`project/models/` is a copy of models/ (fuse.toml writes `project/fused.onnx`), `plain.toml` lacks names."""
    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root / "models", ignore=shutil.ignore_patterns("__pycache__"))
    plain = "\n".join(line for line in (root / "models" / "fuse.toml").read_text().splitlines() if "name" not in line)
    (root / "models" / "plain.toml").write_text(plain + "\n")
    return root


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder that is not the spec's."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def merged(result: Result) -> None:
    assert result.exit_code == 0, f"stdout: {result.stdout!r}\nstderr: {result.stderr!r}"


def metadata(path: Path) -> dict[str, object]:
    model = onnx.load(str(path))
    return {p.key: json.loads(p.value) for p in model.metadata_props}


def source_names(path: Path) -> list[str]:
    return [source["name"] for source in metadata(path)["onnxfuse.sources"]]  # type: ignore[index]


def test_merge_writes_spec_output_when_example_spec(project: Path, elsewhere: Path) -> None:
    result = run_cli("merge", "--spec", project / "models" / "fuse.toml")

    merged(result)
    out = project / "fused.onnx"
    assert result.stdout.splitlines()[-1].startswith(f"wrote {out}"), result.stdout
    assert_checker_and_portable(out)
    assert source_names(out) == ["forest_ab", "logistic_cd"]
    assert metadata(out)["onnxfuse.features"] == ["a", "b", "c", "d"]


def test_merge_resolves_spec_paths_against_spec_folder_when_run_from_another_cwd(
    project: Path, elsewhere: Path
) -> None:
    spec = Path("..") / "project" / "models" / "fuse.toml"  # the spec itself is found from the cwd

    result = run_cli("merge", "--spec", spec)

    merged(result)
    assert (project / "fused.onnx").is_file()
    assert list(elsewhere.iterdir()) == [], "nothing is written relative to the cwd"
    assert sorted(p.name for p in project.iterdir()) == ["fused.onnx", "models"]


def test_merge_spec_gives_same_bytes_as_flags_when_spec_names_no_model(project: Path, elsewhere: Path) -> None:
    models = project / "models"
    merged(run_cli("merge", "--spec", models / "plain.toml", "-o", "from_spec.onnx"))
    merged(run_cli("merge", models / "a.onnx", models / "b.onnx", *_in(EXAMPLE_FLAGS, models), "-o", "from_flags.onnx"))

    assert (elsewhere / "from_spec.onnx").read_bytes() == (elsewhere / "from_flags.onnx").read_bytes()


def test_merge_spec_equals_flags_but_for_model_names_when_spec_names_models(project: Path, elsewhere: Path) -> None:
    """There is no flag for a model's name: the example spec's names are the only difference."""
    models = project / "models"
    merged(run_cli("merge", "--spec", models / "fuse.toml", "-o", "from_spec.onnx"))
    merged(run_cli("merge", models / "a.onnx", models / "b.onnx", *_in(EXAMPLE_FLAGS, models), "-o", "from_flags.onnx"))

    from_spec = onnx.load(str(elsewhere / "from_spec.onnx"))
    from_flags = onnx.load(str(elsewhere / "from_flags.onnx"))
    for prop in from_spec.metadata_props:
        prop.value = prop.value.replace('"forest_ab"', '"a"').replace('"logistic_cd"', '"b"')
        prop.value = prop.value.replace('"m1 forest_ab"', '"m1 a"').replace('"m2 logistic_cd"', '"m2 b"')
    for model in (from_spec, from_flags):  # the digest hashes the bytes, names included: it differs too
        kept = [prop for prop in model.metadata_props if prop.key != "onnxfuse.digest"]
        assert len(kept) == len(model.metadata_props) - 1
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
    assert from_spec == from_flags


def _in(args: Sequence[str], folder: Path) -> list[str]:
    """EXAMPLE_FLAGS with the data file inside `folder`."""
    return [str(folder / a) if a.endswith(".csv") else a for a in args]


def _method_is_gate(path: Path) -> None:
    assert metadata(path)["onnxfuse.fusion"]["method"] == "gate"  # type: ignore[index]


def _seed_is_5(path: Path) -> None:
    assert metadata(path)["onnxfuse.fusion"]["holdout"]["seed"] == 5  # type: ignore[index]


def _features_are_float64(path: Path) -> None:
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert metadata(path)["onnxfuse.features_dtype"] == "float64"


def _not_optimized(path: Path) -> None:
    model = onnx.load(str(path))
    assert any(node.op_type in ("Identity", "Cast") for node in model.graph.node), "--no-optimize keeps the splice"


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        pytest.param(("--fusion", "gate"), _method_is_gate, id="fusion_gate"),
        pytest.param(("--seed", "5"), _seed_is_5, id="seed"),
        pytest.param(("--no-optimize",), _not_optimized, id="no_optimize"),
        pytest.param(("--features-dtype", "float64"), _features_are_float64, id="features_dtype"),
    ],
)
def test_merge_uses_command_line_flag_over_spec_when_both_give_it(
    project: Path, elsewhere: Path, extra: tuple[str, ...], check: Callable[[Path], None]
) -> None:
    models = project / "models"
    merged(run_cli("merge", "--spec", models / "plain.toml", *extra, "-o", "from_spec.onnx"))
    merged(
        run_cli(
            "merge", models / "a.onnx", models / "b.onnx", *_in(EXAMPLE_FLAGS, models), *extra, "-o", "from_flags.onnx"
        )
    )

    check(elsewhere / "from_spec.onnx")
    assert (elsewhere / "from_spec.onnx").read_bytes() == (elsewhere / "from_flags.onnx").read_bytes()


def test_merge_uses_flag_over_spec_when_flag_repeats_the_default(project: Path, elsewhere: Path) -> None:
    """`--fusion stack --holdout 0.2` are the defaults, yet given on the command line they beat the spec's."""
    models = project / "models"
    text = (models / "plain.toml").read_text().replace('fusion = "stack"', 'fusion = "mean"')
    (models / "mean.toml").write_text(text.replace("holdout = 0.2", "holdout = 0.5"))

    merged(run_cli("merge", "--spec", models / "mean.toml", "--fusion", "stack", "--holdout", "0.2", "-o", "spec.onnx"))
    merged(run_cli("merge", models / "a.onnx", models / "b.onnx", *_in(EXAMPLE_FLAGS, models), "-o", "flags.onnx"))

    assert metadata(elsewhere / "spec.onnx")["onnxfuse.fusion"]["method"] == "stack"  # type: ignore[index]
    assert (elsewhere / "spec.onnx").read_bytes() == (elsewhere / "flags.onnx").read_bytes()


def test_merge_gives_float64_features_when_spec_sets_features_dtype(project: Path, elsewhere: Path) -> None:
    models = project / "models"
    text = (models / "plain.toml").read_text().replace("seed = 0", 'seed = 0\nfeatures_dtype = "float64"')
    (models / "doubles.toml").write_text(text)

    merged(run_cli("merge", "--spec", models / "doubles.toml", "-o", "doubles.onnx"))

    _features_are_float64(elsewhere / "doubles.onnx")


def test_merge_writes_flag_output_not_spec_output_when_o_given(project: Path, elsewhere: Path) -> None:
    result = run_cli("merge", "--spec", project / "models" / "fuse.toml", "-o", "other.onnx")

    merged(result)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["other.onnx"], "-o is relative to the cwd"
    assert not (project / "fused.onnx").exists()


def test_merge_uses_argument_models_instead_of_spec_models_when_models_given(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project / "models")

    result = run_cli("merge", "--spec", "fuse.toml", "b.onnx", "a.onnx", "--features", "c,d", "--features", "a,b")

    merged(result)
    out = project / "fused.onnx"
    assert metadata(out)["onnxfuse.features"] == ["c", "d", "a", "b"]
    sources = metadata(out)["onnxfuse.sources"]
    assert [s["file"] for s in sources] == ["b.onnx", "a.onnx"]  # type: ignore[union-attr,index]
    assert source_names(out) == ["b", "a"], "the spec's model names belong to the spec's models"


def test_merge_replaces_spec_features_when_features_flag_given(project: Path, elsewhere: Path) -> None:
    result = run_cli("merge", "--spec", project / "models" / "fuse.toml", "--features", "b,a", "--features", "d,c")

    merged(result)
    out = project / "fused.onnx"
    assert metadata(out)["onnxfuse.features"] == ["b", "a", "d", "c"]
    assert source_names(out) == ["forest_ab", "logistic_cd"], "names and paths still come from the spec"


def test_merge_exits_2_when_features_flag_count_differs_from_spec_models(project: Path, elsewhere: Path) -> None:
    before = snapshot(project)

    result = run_cli("merge", "--spec", project / "models" / "fuse.toml", "--features", "a,b")

    assert_one_error_line(result, "--features")
    assert snapshot(project) == before
    assert list(elsewhere.iterdir()) == []


def _edit(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, f"{old!r} not in the example spec"
        return text.replace(old, new, 1)

    return edit


BAD_SPECS = [
    pytest.param(_edit('target = "y"', 'target = "y"\ncolour = "red"'), ("colour", *KNOWN_KEYS, "model"), id="unknown"),
    pytest.param(_edit('path = "a.onnx"', 'path = "a.onnx"\nweight = 2'), ("weight", *MODEL_KEYS), id="unknown_model"),
    pytest.param(_edit("holdout = 0.2", 'holdout = "x"'), ("holdout",), id="holdout_string"),
    pytest.param(_edit("holdout = 0.2", "holdout = 1.5"), ("holdout", "1.5"), id="holdout_above_one"),
    pytest.param(_edit('features = ["a", "b"]', 'features = "a,b"'), ("features",), id="features_string"),
    pytest.param(_edit('fusion = "stack"', 'fusion = "magic"'), ("fusion", "magic"), id="fusion_unknown"),
    pytest.param(_edit("seed = 0", 'seed = "0"'), ("seed",), id="seed_string"),
    pytest.param(
        _edit("seed = 0", 'seed = 0\nfeatures_dtype = "float16"'), ("features_dtype", "float16"), id="features_dtype"
    ),
    pytest.param(_edit('data = "train.csv"', 'data = "train.csv"\nort = "yes"'), ("ort",), id="ort_string"),
    pytest.param(_edit('output = "../fused.onnx"', "output = 3"), ("output",), id="output_number"),
    pytest.param(_edit('data = "train.csv"', "data = [1, 2]"), ("data",), id="data_list_of_numbers"),
    pytest.param(_edit('data = "train.csv"', "data = []"), ("data",), id="data_empty_list"),
    pytest.param(_edit('path = "b.onnx"\n', ""), ("model 2", "path"), id="model_without_path"),
    pytest.param(_edit("seed = 0", "seed = = 0"), ("bad.toml",), id="invalid_toml"),
    pytest.param(_edit('output = "../fused.onnx"\n', ""), ("output",), id="no_output"),
]


@pytest.mark.parametrize(("edit", "culprits"), BAD_SPECS)
def test_merge_exits_2_with_one_error_line_when_spec_is_bad(
    project: Path, elsewhere: Path, edit: Callable[[str], str], culprits: tuple[str, ...]
) -> None:
    spec = project / "models" / "bad.toml"
    spec.write_text(edit((project / "models" / "fuse.toml").read_text()))
    before = snapshot(project)

    result = run_cli("merge", "--spec", spec)

    assert_one_error_line(result, *culprits)
    assert snapshot(project) == before, "a failed merge changed, left or removed files"
    assert list(elsewhere.iterdir()) == []


def test_merge_exits_2_with_one_error_line_when_spec_file_is_missing(project: Path, elsewhere: Path) -> None:
    before = snapshot(project)

    result = run_cli("merge", "--spec", project / "models" / "missing.toml")

    assert_one_error_line(result, "missing.toml")
    assert snapshot(project) == before
    assert list(elsewhere.iterdir()) == []


def test_every_merge_option_has_help_text_and_every_fuse_spec_option_is_a_flag() -> None:
    """Options are declared once (spec.FuseSpec): the command line is derived from them, each with help."""
    from onnxfuse.cli import merge as merge_command
    from onnxfuse.spec import long_flag, options

    flags = {flag for param in merge_command.params for flag in getattr(param, "opts", ())}
    for param in merge_command.params:
        if param.param_type_name == "option":
            assert param.help and len(param.help) > 10, f"{param.opts} has no help text"
    for field in options():
        assert long_flag(field) in flags, f"FuseSpec.{field.name} has no command-line flag"


def _spec_keys() -> list[str]:
    from onnxfuse.spec import options, spec_key

    keys = [spec_key(field) for field in options()]
    assert set(KNOWN_KEYS) <= set(keys), "INTERFACE.md's spec keys are FuseSpec options"
    return keys


@pytest.mark.parametrize("key", _spec_keys())
def test_merge_refuses_a_spec_key_of_the_wrong_type_naming_it(project: Path, elsewhere: Path, key: str) -> None:
    """Each spec key's type check comes from its FuseSpec field: a wrong type is one error line naming the key."""
    spec = project / "models" / "bad.toml"
    lines = [line for line in (project / "models" / "fuse.toml").read_text().splitlines() if "=" not in line
             or line.split("=")[0].strip() != key]  # fmt: skip
    first_table = lines.index("[[model]]") if "[[model]]" in lines else len(lines)
    spec.write_text("\n".join([*lines[:first_table], f"{key} = {{ x = 1 }}", *lines[first_table:]]) + "\n")

    result = run_cli("merge", "--spec", spec)

    assert_one_error_line(result, f"'{key}'", "wrong type")


@pytest.mark.parametrize(
    ("options", "culprits"),
    [({"holdout": 1.5}, ("--holdout", "1.5")), ({"fusion": "magic"}, ("--fusion", "magic")),
     ({"meta": "tree"}, ("--meta", "tree")), ({"target_opset": 0}, ("--target-opset", "0")),
     ({"features_dtype": "float16"}, ("--features-dtype", "float16")),
     ({"fusion": "mean", "passthrough": True}, ("--passthrough", "--fusion mean")),
     ({"fusion": "vote", "passthrough": True}, ("--passthrough", "--fusion vote"))],
    ids=["holdout", "fusion", "meta", "target_opset", "features_dtype", "passthrough_mean", "passthrough_vote"],
)  # fmt: skip
def test_merge_refuses_a_fuse_spec_option_out_of_its_rules(tmp_path: Path, options: dict, culprits) -> None:
    """A library caller's FuseSpec goes through the same rules as the flags: an OnnxfuseError naming the option."""
    from onnxfuse.errors import OnnxfuseError
    from onnxfuse.pipeline import merge
    from onnxfuse.spec import FuseSpec, ModelSpec

    models = (ModelSpec(EXAMPLE / "a.onnx"), ModelSpec(EXAMPLE / "b.onnx"))
    spec = FuseSpec(models=models, output=tmp_path / "out.onnx", data=EXAMPLE / "train.csv", target="y", **options)
    with pytest.raises(OnnxfuseError) as raised:
        merge(spec)
    assert all(culprit in str(raised.value) for culprit in culprits), raised.value
    assert list(tmp_path.iterdir()) == []
