"""What each source outputs: real exports (torch.onnx, skl2onnx options, CatBoost) merged and checked numerically."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import (
    as_matrix,
    assert_checker_and_portable,
    assert_one_error_line,
    assert_runtimes_agree,
    columns_of,
    ort_outputs,
    run_cli,
    save,
    write_csv,
)
from skl2onnx import to_onnx
from sklearn.linear_model import LinearRegression, LogisticRegression

from onnxfuse.errors import OnnxfuseError, OnnxfuseWarning
from onnxfuse.pipeline import merge
from onnxfuse.signals import Signals
from onnxfuse.spec import FuseSpec, ModelSpec

torch = pytest.importorskip("torch")

CLASSES_FOR = {"y": (0, 1), "y3": (0, 1, 2)}
LABELS = (10, 20, 30)  # class values a torch net gathers from a buffer


class Net(torch.nn.Module):
    """A small MLP whose forward returns what `mode` says (the patterns torch users export)."""

    def __init__(self, inputs: int, width: int, mode: str) -> None:
        super().__init__()
        self.hidden = torch.nn.Sequential(torch.nn.Linear(inputs, 8), torch.nn.ReLU())
        self.out = torch.nn.Linear(8, width)
        self.mode = mode
        self.register_buffer("labels", torch.tensor(LABELS))

    def logits(self, x):
        return self.out(self.hidden(x))

    def forward(self, x):
        z = self.logits(x)
        if self.mode == "argmax":
            return z, z.argmax(1)
        if self.mode == "gathernd":
            return z, self.labels[z.argmax(1)]
        if self.mode == "gather":
            return z, torch.index_select(self.labels, 0, z.argmax(1))
        if self.mode == "sigmoid":
            return torch.sigmoid(z)
        if self.mode == "embedding":
            return z, self.hidden(x)
        if self.mode == "log_softmax":
            return torch.log_softmax(z, dim=1)
        return z  # "logits", "logit"


def torch_net(path: Path, x: np.ndarray, y: np.ndarray, *, width: int, mode: str) -> Path:
    """Trained briefly (cross entropy, or BCE on one logit) and exported with torch.onnx (dynamo, dynamic batch)."""
    torch.manual_seed(0)
    net = Net(x.shape[1], width, mode)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.03)
    inputs = torch.from_numpy(x)
    truth = torch.from_numpy(y.astype(np.float32).reshape(-1, 1) if width == 1 else y)
    loss = torch.nn.functional.binary_cross_entropy_with_logits if width == 1 else torch.nn.functional.cross_entropy
    for _ in range(80):
        optimizer.zero_grad()
        loss(net.logits(inputs), truth).backward()
        optimizer.step()
    net.eval()
    program = torch.onnx.export(
        net, (inputs[:4],), dynamo=True, input_names=["x"], dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
        verbose=False,
    )  # fmt: skip
    program.save(str(path))
    return path


def partner(rows, folder: Path, label: str, classes=None) -> Path:
    """Model 1 of every merge: skl2onnx LogisticRegression on a,b with its default ZipMap output."""
    y = rows[label] if classes is None else np.array(classes)[rows[label]]
    model = LogisticRegression().fit(rows["x"][:, columns_of("ab")], y)
    name = "_".join(str(c) for c in classes or ("index",))
    return save(to_onnx(model, rows["x"][:1, :2]), folder / f"partner_{label}_{name}.onnx")


def first_output(outputs: dict) -> np.ndarray:
    return np.asarray(next(iter(outputs.values())))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def two_columns(p: np.ndarray) -> np.ndarray:
    p = p.reshape(len(p), 1)
    return np.concatenate([1 - p, p], axis=1)


def source_probabilities(path: Path, x: np.ndarray, read) -> np.ndarray:
    """Source `path` run alone in onnxruntime on `x`; `read` turns its outputs into probabilities (numpy)."""
    model = onnx.load(str(path))
    return np.asarray(read(ort_outputs(path, {model.graph.input[0].name: x})), dtype=np.float32)


def merged(sources, columns, data: Path, out: Path, **options):
    models = tuple(ModelSpec(p, tuple(c), **options.pop(f"declare{i}", {})) for i, (p, c) in enumerate(
        zip(sources, columns), start=1))  # fmt: skip
    return merge(FuseSpec(models=models, output=out, data=data, target="y", **options))


def check_fused(out: Path, result, x: np.ndarray, per_model: list[np.ndarray]) -> dict:
    """Checker, both runtimes agree, rows are distributions, and the file equals the fitted head on these rows."""
    assert_checker_and_portable(out)
    fused = assert_runtimes_agree(out, {"features": x})
    probabilities = fused["probabilities"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert probabilities.min() >= 0
    head = getattr(result.head, "head", result.head)  # --meta auto wraps the head it chose
    columns = getattr(head, "meta_columns", tuple((1,) for _ in per_model))  # a stacking head's choice
    signals = Signals(tuple(np.asarray(p, np.float32) for p in per_model), columns, (True,) * len(per_model))
    expected = result.head.predict(signals, x)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fused["label"], np.array(result.classes)[np.argmax(expected, axis=1)])
    return fused


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("roles")


def partner_probabilities(path: Path, x: np.ndarray, classes) -> np.ndarray:
    return source_probabilities(path, x[:, :2], lambda o: as_matrix(o["output_probability"], classes))


@pytest.mark.parametrize("fusion", ["mean", "vote", "gate", pytest.param("stack", marks=pytest.mark.slow)])
def test_output_role_reads_torch_logits_as_softmax_when_fusing(rows, folder, tmp_path, fusion):
    x = rows["x"][:, :4]
    net = torch_net(folder / f"logits_{fusion}.onnx", x[:, 2:4], rows["y3"], width=3, mode="logits")
    first = partner(rows, folder, "y3")
    data = write_csv(tmp_path / "rows.csv", rows, label="y3")
    out = tmp_path / "fused.onnx"
    result = merged([first, net], ["ab", "cd"], data, out, fusion=fusion)
    assert result.classes == (0, 1, 2)
    assert result.fusion["holdout"]["metrics"]["m2 " + net.stem], "logits now get hold-out metrics of their own"
    own = source_probabilities(net, x[:300, 2:4], lambda o: softmax(first_output(o)))
    if fusion == "vote":
        own = np.eye(3, dtype=np.float32)[own.argmax(axis=1)]
        mine = np.eye(3, dtype=np.float32)[partner_probabilities(first, x[:300], (0, 1, 2)).argmax(axis=1)]
    else:
        mine = partner_probabilities(first, x[:300], (0, 1, 2))
    check_fused(out, result, x[:300], [mine, own])


@pytest.mark.parametrize(
    "mode, classes",
    [("argmax", (0, 1, 2)), ("gathernd", LABELS), ("gather", LABELS)],
    ids=["argmax", "gathernd", "gather"],
)
def test_output_role_reads_a_label_computed_in_the_graph(rows, folder, tmp_path, mode, classes):
    x = rows["x"][:, :4]
    target = np.array(classes)[rows["y3"]]
    net = torch_net(folder / f"label_{mode}.onnx", x[:, 2:4], rows["y3"], width=3, mode=mode)
    kinds = {n.op_type for n in onnx.load(str(net)).graph.node}
    assert {"argmax": "ArgMax", "gathernd": "GatherND", "gather": "Gather"}[mode] in kinds
    first = partner(rows, folder, "y3", classes=classes)
    data = write_csv(tmp_path / "rows.csv", {**rows, "label": target}, label="label")
    out = tmp_path / "fused.onnx"
    result = merged([first, net], ["ab", "cd"], data, out, fusion="mean")
    assert result.classes == tuple(classes)
    own = source_probabilities(net, x[:300, 2:4], lambda o: softmax(first_output(o)))
    check_fused(out, result, x[:300], [partner_probabilities(first, x[:300], classes), own])


@pytest.mark.parametrize("fusion", ["mean", "vote", "gate", "stack"])
def test_output_role_reads_a_sigmoid_column_as_the_positive_class(rows, folder, tmp_path, fusion):
    x = rows["x"][:, :4]
    net = torch_net(folder / f"sigmoid_{fusion}.onnx", x[:, 2:4], rows["y"], width=1, mode="sigmoid")
    first = partner(rows, folder, "y")
    out = tmp_path / "fused.onnx"
    result = merged([first, net], ["ab", "cd"], write_csv(tmp_path / "rows.csv", rows), out, fusion=fusion)
    own = source_probabilities(net, x[:300, 2:4], lambda o: two_columns(first_output(o)))
    mine = partner_probabilities(first, x[:300], (0, 1))
    if fusion == "vote":
        own, mine = (np.eye(2, dtype=np.float32)[p.argmax(axis=1)] for p in (own, mine))
    check_fused(out, result, x[:300], [mine, own])


def test_output_role_reads_a_raw_column_as_the_positive_logit_with_one_warning(rows, folder, tmp_path):
    x = rows["x"][:, :4]
    net = torch_net(folder / "logit.onnx", x[:, 2:4], rows["y"], width=1, mode="logit")
    first = partner(rows, folder, "y")
    out = tmp_path / "fused.onnx"
    with pytest.warns(OnnxfuseWarning, match=r"model 2 \(logit.onnx\).*logit.*--declare 2:prediction="):
        result = merged([first, net], ["ab", "cd"], write_csv(tmp_path / "rows.csv", rows), out, fusion="mean")
    own = source_probabilities(net, x[:300, 2:4], lambda o: two_columns(1 / (1 + np.exp(-first_output(o)))))
    check_fused(out, result, x[:300], [partner_probabilities(first, x[:300], (0, 1)), own])


def test_output_role_reads_a_raw_column_as_a_prediction_when_declared(rows, folder, tmp_path):
    x = rows["x"][:, :4]
    net = torch_net(folder / "logit.onnx", x[:, 2:4], rows["y"], width=1, mode="logit")
    name = onnx.load(str(net)).graph.output[0].name
    first = partner(rows, folder, "y")
    data, out = write_csv(tmp_path / "rows.csv", rows), tmp_path / "fused.onnx"
    result = merged([first, net], ["ab", "cd"], data, out, declare2={"prediction": name})
    assert result.fusion["holdout"]["metrics"]["m2 logit"] == {}, "a prediction is no classifier of the target"
    mean = run_cli("merge", first, net, "--features", "a,b", "--features", "c,d", "--data", data, "--target", "y",
                   "--fusion", "mean", "--declare", f"2:prediction={name}", "-o", out.with_name("m.onnx"))  # fmt: skip
    assert_one_error_line(mean, "model 2 (logit.onnx)", "regressor", "--fusion stack")
    assert not out.with_name("m.onnx").exists()


def test_output_role_reads_log_softmax_as_log_probabilities(rows, folder, tmp_path):
    x = rows["x"][:, :4]
    net = torch_net(folder / "lsm.onnx", x[:, 2:4], rows["y3"], width=3, mode="log_softmax")
    first = partner(rows, folder, "y3")
    out = tmp_path / "fused.onnx"
    result = merged([first, net], ["ab", "cd"], write_csv(tmp_path / "rows.csv", rows, label="y3"), out, fusion="mean")
    own = source_probabilities(net, x[:300, 2:4], lambda o: np.exp(first_output(o)))
    check_fused(out, result, x[:300], [partner_probabilities(first, x[:300], (0, 1, 2)), own])


def test_output_role_picks_the_logits_beside_an_embedding_as_wide_as_the_classes(rows, folder, tmp_path):
    x = rows["x"][:, :4]
    net = torch_net(folder / "embedding.onnx", x[:, 2:4], rows["y3"], width=3, mode="embedding")
    first = partner(rows, folder, "y3")
    out = tmp_path / "fused.onnx"
    result = merged([first, net], ["ab", "cd"], write_csv(tmp_path / "rows.csv", rows, label="y3"), out, fusion="mean")
    own = source_probabilities(net, x[:300, 2:4], lambda o: softmax(first_output(o)))
    check_fused(out, result, x[:300], [partner_probabilities(first, x[:300], (0, 1, 2)), own])


def test_merge_refuses_logits_and_embedding_naming_the_declaration_then_takes_it(rows, folder, tmp_path):
    x = rows["x"][:, :4]
    net = torch_net(folder / "embedding2.onnx", x[:, 2:4], rows["y"], width=3, mode="embedding")
    first = partner(rows, folder, "y")
    data, out = write_csv(tmp_path / "rows.csv", rows), tmp_path / "fused.onnx"
    args = ["merge", first, net, "--features", "a,b", "--features", "c,d", "--data", data, "--target", "y", "-o", out]
    logits, embedding = (o.name for o in onnx.load(str(net)).graph.output)
    refused = run_cli(*args)
    assert_one_error_line(refused, "model 2 (embedding2.onnx)", f"{logits} [N,3]", f"{embedding} [N,8]", "2:logits=")
    assert not out.exists()
    declared = run_cli(*args, "--declare", f"2:logits={logits}", "--declare", "2:classes=0,1,2")
    assert_one_error_line(declared, "model 2 (embedding2.onnx)", "class 2 is not a label of the target")
    scores = run_cli(*args, "--declare", f"2:logits={logits}")  # no class list: raw columns for the stacking head
    assert scores.exit_code == 0, scores.stderr
    assert_checker_and_portable(out)
    fused = assert_runtimes_agree(out, {"features": x[:300]})
    np.testing.assert_allclose(fused["probabilities"].sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "options, read",
    [
        ({"output_class_labels": True, "zipmap": False}, lambda o: o["probabilities"]),
        ({"zipmap": "columns"}, lambda o: np.stack([o["scat"], o["sdog"], o["seel"]], axis=1)),
        ({"zipmap": False}, lambda o: o["probabilities"]),
        ({}, lambda o: as_matrix(o["output_probability"], ("cat", "dog", "eel"))),
    ],
    ids=["output_class_labels", "zipmap_columns", "zipmap_false", "zipmap"],
)
def test_output_role_reads_skl2onnx_export_options(rows, folder, tmp_path, options, read):
    x, names = rows["x"][:, :4], ("cat", "dog", "eel")
    target = np.array(names, dtype=object)[rows["y3"]]
    model = LogisticRegression().fit(x[:, 2:4], target)
    source = save(to_onnx(model, x[:1, 2:4], options=options or None), tmp_path / "s.onnx")
    first = partner(rows, folder, "y3", classes=names)
    data = write_csv(tmp_path / "rows.csv", {**rows, "label": target}, label="label")
    out = tmp_path / "fused.onnx"
    result = merged([first, source], ["ab", "cd"], data, out, fusion="mean", keep_model_outputs=True)
    assert result.classes == names
    own = source_probabilities(source, x[:300, 2:4], read)
    check_fused(out, result, x[:300], [partner_probabilities(first, x[:300], names), own])
    checked = run_cli("verify", out, first, source, "--data", data)
    assert checked.exit_code == 0, checked.stderr


@pytest.mark.slow  # the tox 'slow' environment (CI runs it): --meta auto, ~30 s
def test_merge_with_raw_scores_stacks_them_with_a_warning_and_refuses_mean(rows, folder, tmp_path):
    x = rows["x"][:, :4]
    model = LogisticRegression().fit(x[:, 2:4], rows["y3"])
    source = save(to_onnx(model, x[:1, 2:4], options={"raw_scores": True, "zipmap": False}), tmp_path / "raw.onnx")
    first = partner(rows, folder, "y3")
    data, out = write_csv(tmp_path / "rows.csv", rows, label="y3"), tmp_path / "fused.onnx"
    args = ["merge", first, source, "--features", "a,b", "--features", "c,d", "--data", data, "--target", "y"]
    args += ["-o", out]
    mean = run_cli(*args, "--fusion", "mean")
    line = assert_one_error_line(mean, "model 2 (raw.onnx)", "output 'probabilities' holds scores", "--fusion stack")
    assert "declare --declare 2:logits=probabilities" in line and "values down to -" in line
    assert not out.exists()
    stacked = run_cli(*args)
    assert stacked.exit_code == 0, stacked.stderr
    warnings = [w for w in stacked.stderr.splitlines() if w.startswith("warning: ") and "holds scores" in w]
    assert len(warnings) == 1 and "model 2 (raw.onnx)" in warnings[0] and "raw columns" in warnings[0]
    fused = assert_runtimes_agree(out, {"features": x[:300]})
    np.testing.assert_allclose(fused["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    assert_checker_and_portable(out)
    logits = run_cli(*args, "--fusion", "mean", "--declare", "2:logits=probabilities", "-o", out.with_name("l.onnx"))
    assert logits.exit_code == 0, logits.stderr
    scores = source_probabilities(source, x[:300, 2:4], lambda o: softmax(o["probabilities"]))
    mine = partner_probabilities(first, x[:300], (0, 1, 2))
    weights = onnx_weights(out.with_name("l.onnx"))
    fused = assert_runtimes_agree(out.with_name("l.onnx"), {"features": x[:300]})
    np.testing.assert_allclose(fused["probabilities"], weights[0] * mine + weights[1] * scores, rtol=1e-4, atol=2e-5)


def onnx_weights(path: Path) -> list[float]:
    import json

    meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    return meta["onnxfuse.fusion"]["weights"]


def test_merge_reads_nocl_exports_with_declared_string_classes(rows, folder, tmp_path):
    x, names = rows["x"][:, :4], ("cat", "dog", "eel")
    target = np.array(names, dtype=object)[rows["y3"]]
    model = LogisticRegression().fit(x[:, 2:4], target)
    source = save(to_onnx(model, x[:1, 2:4], options={"nocl": True, "zipmap": False}), tmp_path / "nocl.onnx")
    first = partner(rows, folder, "y3", classes=names)
    data = write_csv(tmp_path / "rows.csv", {**rows, "label": target}, label="label")
    spec = tmp_path / "fuse.toml"
    spec.write_text(
        f'output = "fused.onnx"\ndata = "{data.name}"\ntarget = "y"\nfusion = "mean"\n'
        f'[[model]]\npath = "{first}"\nfeatures = ["a", "b"]\n'
        f'[[model]]\npath = "{source.name}"\nfeatures = ["c", "d"]\nclasses = ["cat", "dog", "eel"]\n'
    )
    result = run_cli("merge", "--spec", spec)
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "fused.onnx"
    fused = assert_runtimes_agree(out, {"features": x[:300]})
    weights = onnx_weights(out)
    own = source_probabilities(source, x[:300, 2:4], lambda o: o["probabilities"])
    expected = weights[0] * partner_probabilities(first, x[:300], names) + weights[1] * own
    np.testing.assert_allclose(fused["probabilities"], expected, rtol=1e-4, atol=2e-5)
    assert list(fused["label"]) == list(np.array(names, dtype=object)[expected.argmax(axis=1)])
    cli = run_cli("merge", first, source, "--features", "a,b", "--features", "c,d", "--data", data, "--target", "y",
                  "--fusion", "mean", "--declare", "2:classes=cat,dog,eel", "-o", tmp_path / "cli.onnx")  # fmt: skip
    assert cli.exit_code == 0, cli.stderr
    assert (tmp_path / "cli.onnx").read_bytes() == out.read_bytes()
    wrong = run_cli("merge", first, source, "--features", "a,b", "--features", "c,d", "--data", data, "--target", "y",
                    "--declare", "2:classes=cat,dog", "-o", tmp_path / "w.onnx")  # fmt: skip
    assert_one_error_line(wrong, "model 2 (nocl.onnx)", "3 columns but 2 classes", "--declare 2:classes=")


def test_merge_refuses_a_declared_output_that_does_not_exist(rows, folder, tmp_path):
    first = partner(rows, folder, "y")
    data = write_csv(tmp_path / "rows.csv", rows)
    result = run_cli("merge", first, first, "--features", "a,b", "--features", "c,d", "--data", data, "--target", "y",
                     "--declare", "2:logits=scores", "-o", tmp_path / "out.onnx")  # fmt: skip
    assert_one_error_line(result, "model 2 (", "no output 'scores'", "output_label", "output_probability")
    bad = run_cli("merge", first, first, "--declare", "3:logits=x", "-o", tmp_path / "out.onnx")
    assert_one_error_line(bad, "--declare '3:logits=x'", "1..2")
    unknown = run_cli("merge", first, first, "--declare", "1:scores=x", "-o", tmp_path / "out.onnx")
    assert_one_error_line(unknown, "unknown declaration 'scores'", "logits")
    assert not (tmp_path / "out.onnx").exists()


def test_merge_without_data_refuses_a_sigmoid_without_classes_naming_the_declaration(rows, folder, tmp_path):
    x = rows["x"][:, :4]
    net = torch_net(folder / "sigmoid_nodata.onnx", x[:, 2:4], rows["y"], width=1, mode="sigmoid")
    first = partner(rows, folder, "y")
    out = tmp_path / "fused.onnx"
    args = ["merge", first, net, "--features", "a,b", "--features", "c,d", "--fusion", "mean", "-o", out]
    assert_one_error_line(run_cli(*args), "model 2 (sigmoid_nodata.onnx)", "sigmoid [N,1]", "--declare 2:classes=")
    assert not out.exists()
    declared = run_cli(*args, "--declare", "2:classes=0,1")
    assert declared.exit_code == 0, declared.stderr
    own = source_probabilities(net, x[:300, 2:4], lambda o: two_columns(first_output(o)))
    fused = assert_runtimes_agree(out, {"features": x[:300]})
    expected = 0.5 * partner_probabilities(first, x[:300], (0, 1)) + 0.5 * own
    np.testing.assert_allclose(fused["probabilities"], expected, rtol=1e-5, atol=1e-5)


def catboost_sources(rows, tmp_path: Path, label: str) -> Path:
    catboost = pytest.importorskip("catboost")
    x = rows["x"][:, 2:4]
    options = {"iterations": 30, "depth": 3, "verbose": 0, "random_seed": 0, "allow_writing_files": False}
    if label == "yr":
        model = catboost.CatBoostRegressor(**options).fit(x, rows["yr"])
    else:
        model = catboost.CatBoostClassifier(**options).fit(x, rows[label])
    model.save_model(str(tmp_path / f"catboost_{label}.onnx"), format="onnx")
    return tmp_path / f"catboost_{label}.onnx"


def test_merge_reads_catboost_regressor_that_declares_the_wrong_shape(rows, tmp_path):
    x = rows["x"][:, :4]
    source = catboost_sources(rows, tmp_path, "yr")
    assert onnx.load(str(source)).graph.output[0].type.tensor_type.shape.dim[-1].dim_param, "declares [N]"
    linear = LinearRegression().fit(x[:, :2], rows["yr"])
    first = save(to_onnx(linear, x[:1, :2]), tmp_path / "linear.onnx")
    data = write_csv(tmp_path / "rows.csv", {**rows, "label": rows["yr"]}, label="label")
    out = tmp_path / "fused.onnx"
    result = merged([first, source], ["ab", "cd"], data, out, fusion="mean")
    assert_checker_and_portable(out)
    fused = assert_runtimes_agree(out, {"features": x[:300]})
    own = ort_outputs(source, {"features": x[:300, 2:4]})["predictions"].reshape(-1)
    mine = ort_outputs(first, {"X": x[:300, :2]})["variable"].reshape(-1)
    weights = result.fusion["weights"]
    np.testing.assert_allclose(fused["prediction"], weights[0] * mine + weights[1] * own, rtol=1e-4, atol=1e-4)
    checked = run_cli("verify", out, first, source, "--data", data)
    assert checked.exit_code == 0, checked.stderr


def test_merge_reads_catboost_classifier(rows, folder, tmp_path):
    x = rows["x"][:, :4]
    source = catboost_sources(rows, tmp_path, "y3")
    first = partner(rows, folder, "y3")
    out = tmp_path / "fused.onnx"
    result = merged([first, source], ["ab", "cd"], write_csv(tmp_path / "rows.csv", rows, label="y3"), out,
                    fusion="gate")  # fmt: skip
    own = source_probabilities(source, x[:300, 2:4], lambda o: as_matrix(o["probabilities"], (0, 1, 2)))
    check_fused(out, result, x[:300], [partner_probabilities(first, x[:300], (0, 1, 2)), own])


def test_merge_votes_over_string_classes_by_each_source_s_most_probable_class(rows, folder, tmp_path):
    x, names = rows["x"][:, :4], ("cat", "dog", "eel")
    target = np.array(names, dtype=object)[rows["y3"]]
    source = save(to_onnx(LogisticRegression().fit(x[:, 2:4], target), x[:1, 2:4]), tmp_path / "s.onnx")
    first = partner(rows, folder, "y3", classes=names)
    data = write_csv(tmp_path / "rows.csv", {**rows, "label": target}, label="label")
    out = tmp_path / "fused.onnx"
    result = merged([first, source], ["ab", "cd"], data, out, fusion="vote")
    votes = [
        np.eye(3, dtype=np.float32)[p.argmax(axis=1)]
        for p in (partner_probabilities(first, x[:300], names), partner_probabilities(source, x[:300, 2:], names))
    ]
    check_fused(out, result, x[:300], votes)


HAND_BUILT = """
<ir_version: 10, opset_import: ["" : 21]>
agraph (float[N, 2] x) => (float[N, 3] probs, int64[N] label) <float[2, 3] w = {1.5, -1.0, 0.2, 0.5, 1.0, -1.2}> {
    scores = MatMul(x, w)
    probs = Softmax <axis = 1> (scores)
    index = ArgMax <axis = 1, keepdims = 1> (probs)
    flat = Flatten <axis = 0> (index)
    shape = Constant <value = int64[1] {-1}> ()
    column = Reshape (flat, shape)
    label = Cast <to = 7> (column)
}
"""


def test_output_role_follows_a_hand_built_argmax_label_through_reshape_flatten_and_cast(rows, folder, tmp_path):
    """No exporter writes this chain; hand-built graphs do (ONNX text syntax)."""
    x = rows["x"][:, :4]
    source = save(onnx.parser.parse_model(HAND_BUILT), tmp_path / "hand.onnx")
    first = partner(rows, folder, "y3")
    out = tmp_path / "fused.onnx"
    result = merged([first, source], ["ab", "cd"], write_csv(tmp_path / "rows.csv", rows, label="y3"), out,
                    fusion="vote")  # fmt: skip
    assert result.classes == (0, 1, 2)
    own = source_probabilities(source, x[:300, 2:4], lambda o: np.eye(3)[o["label"]])
    mine = np.eye(3, dtype=np.float32)[partner_probabilities(first, x[:300], (0, 1, 2)).argmax(axis=1)]
    check_fused(out, result, x[:300], [mine, own])


NORMALISED_BY_HAND = """
<ir_version: 10, opset_import: ["" : 21]>
bgraph (float[N, 2] x) => (float[N, 2] out) <float[2, 2] w = {1.5, -1.0, -0.5, 1.0}> {
    scores = MatMul(x, w)
    e = Exp(scores)
    axes = Constant <value = int64[1] {1}> ()
    total = ReduceSum <keepdims = 1> (e, axes)
    out = Div(e, total)
}
"""


@pytest.mark.parametrize("fusion", ["mean", "stack"])
def test_output_role_reads_hand_normalised_probabilities_as_such_with_one_warning(rows, folder, tmp_path, fusion):
    """`exp(z) / sum(exp(z))` written out: no Softmax to recognise, a plain `[N, 2]` name, but every scored row is
    a distribution — a second Softmax would flatten it, so it is read as probabilities and the merge says so."""
    x = rows["x"][:, :4]
    source = save(onnx.parser.parse_model(NORMALISED_BY_HAND), tmp_path / "normalised.onnx")
    first = partner(rows, folder, "y")
    out = tmp_path / "fused.onnx"

    with pytest.warns(OnnxfuseWarning, match=r"model 2 \(normalised.onnx\): output 'out' holds probabilities"):
        result = merged([first, source], ["ab", "cd"], write_csv(tmp_path / "rows.csv", rows), out, fusion=fusion)

    own = source_probabilities(source, x[:300, 2:4], first_output)
    check_fused(out, result, x[:300], [partner_probabilities(first, x[:300], (0, 1)), own])


# --- the rules of `output_role`'s docstring, one hand-built graph each (no exporter writes these shapes) -----------


def role_of(path: Path, *, task: str | None = "classification", target=(0, 1, 2), **declared):
    """The role `output_role` gives the source at `path` (model 1, columns c,d) for a target of classes `target`."""
    from onnxfuse.load import load_model
    from onnxfuse.normalize import normalize
    from onnxfuse.roles import output_role

    (normalized,), _ = normalize([load_model(ModelSpec(path, ("c", "d"), **declared), 1)])
    return output_role(normalized, task=task, classes=target)


def text_source(folder: Path, name: str, text: str) -> Path:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return save(model, folder / f"{name}.onnx")


W23 = "<float[2, 3] w = {1.5, -1.0, 0.2, 0.5, 1.0, -1.2}, float[2, 3] v = {0.3, 0.1, -0.4, -0.7, 0.9, 0.2}>"
TWO_MATRICES = f"""
<ir_version: 10, opset_import: ["" : 21]>
two (float[N, 2] x) => (float[N, 3] first, float[N, 3] second) {W23} {{
    first = MatMul (x, w)
    second = MatMul (x, v)
}}
"""
NORMALIZED_BESIDE_SCORES = f"""
<ir_version: 10, opset_import: ["" : 21]>
beside (float[N, 2] x) => (float[N, 3] scores, float[N, 3] normalized) {W23} {{
    scores = MatMul (x, w)
    normalized = %s <axis = 1> (scores)
}}
"""
THROUGH_PASS_THROUGH_OPS = f"""
<ir_version: 10, opset_import: ["" : 21]>
through (float[N, 2] x) => (float[N, 3] out) {W23} {{
    scores = MatMul (x, w)
    probs = Softmax <axis = 1> (scores)
    shape = Constant <value = int64[2] {{-1, 3}}> ()
    shaped = Reshape (probs, shape)
    cast = Cast <to = 1> (shaped)
    out = Identity (cast)
}}
"""
SIGMOID_THROUGH_FLATTEN = """
<ir_version: 10, opset_import: ["" : 21]>
sigmoid (float[N, 2] x) => (float[N, 1] column) <float[2, 1] w = {1.5, -1.0}> {
    score = MatMul (x, w)
    p = Sigmoid (score)
    flat = Flatten <axis = 1> (p)
    column = Identity (flat)
}
"""
PROB_NAMED = f"""
<ir_version: 10, opset_import: ["" : 21]>
named (float[N, 2] x) => (float[N, 3] class_prob) {W23} {{
    class_prob = MatMul (x, w)
}}
"""
WITH_CONSTANT_PRIOR = f"""
<ir_version: 10, opset_import: ["" : 21]>
prior (float[N, 2] x) => (float[N, 3] z, float[1, 3] prior) {W23} {{
    z = MatMul (x, w)
    prior = Constant <value = float[1, 3] {{0.2, 0.3, 0.5}}> ()
}}
"""
TWO_LABELS = f"""
<ir_version: 10, opset_import: ["" : 21]>
labels (float[N, 2] x) => (float[N, 3] probs, int64[N] top, int64[N] other) {W23} {{
    scores = MatMul (x, w)
    probs = Softmax <axis = 1> (scores)
    top = ArgMax <axis = 1, keepdims = 0> (probs)
    axes = Constant <value = int64[1] {{1}}> ()
    total = ReduceSum <keepdims = 0> (x, axes)
    other = Cast <to = 7> (total)
}}
"""
FEATURE_EXTRACTED_LABEL = f"""
<ir_version: 10, opset_import: ["" : 21, "ai.onnx.ml" : 3]>
extracted (float[N, 2] x) => (int64[N] label, float[N, 3] probs) {W23} {{
    scores = MatMul (x, w)
    probs = Softmax <axis = 1> (scores)
    index = ArgMax <axis = 1, keepdims = 0> (probs)
    classes = Constant <value = int64[3] {{10, 20, 30}}> ()
    picked = ai.onnx.ml.ArrayFeatureExtractor (classes, index)
    flat = Constant <value = int64[1] {{-1}}> ()
    label = Reshape (picked, flat)
}}
"""


@pytest.fixture(scope="module")
def graphs(folder: Path) -> dict[str, Path]:
    texts = {
        "two_matrices": TWO_MATRICES, "softmax_beside": NORMALIZED_BESIDE_SCORES % "Softmax",
        "log_softmax_beside": NORMALIZED_BESIDE_SCORES % "LogSoftmax", "through": THROUGH_PASS_THROUGH_OPS,
        "sigmoid": SIGMOID_THROUGH_FLATTEN, "prob_named": PROB_NAMED, "prior": WITH_CONSTANT_PRIOR,
        "two_labels": TWO_LABELS, "extracted": FEATURE_EXTRACTED_LABEL,
    }  # fmt: skip
    return {name: text_source(folder, name, text) for name, text in texts.items()}


@pytest.mark.parametrize("key", ["probabilities", "logits", "log_probabilities"])
def test_output_role_takes_the_declared_signal_and_its_form(graphs, key):
    role = role_of(graphs["two_matrices"], **{key: "second"})
    assert (role.probabilities, role.form, role.declared) == ("second", key, True)
    assert role.classes == (0, 1, 2)


def test_output_role_refuses_two_unnormalised_matrices_naming_outputs_and_declaration(graphs):
    with pytest.raises(OnnxfuseError) as refused:
        role_of(graphs["two_matrices"])
    message = str(refused.value)
    for part in ("model 1 (two_matrices.onnx)", "first [N,3], second [N,3]", "--declare 1:logits=NAME"):
        assert part in message, message


def test_output_role_takes_the_declared_label_when_two_outputs_could_be_one(graphs):
    assert role_of(graphs["two_labels"]).label is None, "two int64 [N] outputs: neither is guessed"
    role = role_of(graphs["two_labels"], label="other")
    assert (role.label, role.probabilities, role.form) == ("other", "probs", "probabilities")


@pytest.mark.parametrize(("name", "form"), [("softmax_beside", "probabilities"), ("log_softmax_beside",
                                                                                    "log_probabilities")])  # fmt: skip
def test_output_role_picks_the_normalised_matrix_among_several(graphs, name, form):
    role = role_of(graphs[name])  # both are as wide as the target's classes: only the normalisation decides
    assert (role.probabilities, role.form) == ("normalized", form)


def test_output_role_reads_the_form_through_reshape_cast_and_identity(graphs):
    assert role_of(graphs["through"]).form == "probabilities"
    sigmoid = role_of(graphs["sigmoid"], target=(0, 1))
    assert (sigmoid.form, sigmoid.classes) == ("positive", (0, 1))


def test_output_role_reads_a_prob_named_matrix_as_probabilities(graphs):
    assert role_of(graphs["prob_named"]).form == "probabilities"
    assert role_of(graphs["two_matrices"], logits="first").form == "logits", "other names: logits"


def test_output_role_never_takes_an_output_that_depends_on_no_input(graphs):
    role = role_of(graphs["prior"])
    assert (role.probabilities, role.form, role.classes) == ("z", "logits", (0, 1, 2))


def test_output_role_takes_classes_from_a_constant_array_feature_extracted_by_argmax(graphs):
    role = role_of(graphs["extracted"], target=LABELS)
    assert (role.label, role.probabilities, role.classes) == ("label", "probs", LABELS)


def test_output_role_reads_scores_when_no_class_list_is_known(graphs):
    role = role_of(graphs["two_matrices"], task=None, target=None, logits="first")
    assert (role.task, role.prediction, role.width) == ("scores", "first", 3)


def test_output_role_refuses_a_positive_column_with_more_than_two_declared_classes(graphs):
    with pytest.raises(OnnxfuseError, match=r"model 1 \(sigmoid.onnx\): one-column output 'column' is P\(second "
                                            r"class\) but 3 classes are declared; declare two"):  # fmt: skip
        role_of(graphs["sigmoid"], target=(0, 1), classes=(0, 1, 2))


def test_merge_reads_probabilities_through_pass_through_ops_without_a_warning(rows, folder, graphs, tmp_path):
    """Recognised by its Softmax, not by the distribution check that warns: no second Softmax, no warning
    about how its output is read (the hold-out's caveats may still speak of the mean's figures)."""
    x = rows["x"][:, :4]
    first = partner(rows, folder, "y3")
    out = tmp_path / "fused.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OnnxfuseWarning)
        result = merged([first, graphs["through"]], ["ab", "cd"], write_csv(tmp_path / "rows.csv", rows, label="y3"),
                        out, fusion="mean")  # fmt: skip
    readings = [str(w.message) for w in caught if "output '" in str(w.message)]
    assert not readings, readings
    own = source_probabilities(graphs["through"], x[:300, 2:4], first_output)
    check_fused(out, result, x[:300], [partner_probabilities(first, x[:300], (0, 1, 2)), own])


def test_merge_reads_a_label_array_feature_extracted_from_class_constants(rows, folder, graphs, tmp_path):
    x = rows["x"][:, :4]
    target = np.array(LABELS)[rows["y3"]]
    first = partner(rows, folder, "y3", classes=LABELS)
    data = write_csv(tmp_path / "rows.csv", {**rows, "label": target}, label="label")
    out = tmp_path / "fused.onnx"
    result = merged([first, graphs["extracted"]], ["ab", "cd"], data, out, fusion="vote")
    assert result.classes == LABELS
    expected = source_probabilities(graphs["extracted"], x[:300, 2:4], lambda o: o["label"])
    assert set(np.unique(expected)) <= set(LABELS)
    own = np.eye(3, dtype=np.float32)[np.searchsorted(LABELS, expected)]  # its own label is its vote
    mine = np.eye(3, dtype=np.float32)[partner_probabilities(first, x[:300], LABELS).argmax(axis=1)]
    check_fused(out, result, x[:300], [mine, own])
