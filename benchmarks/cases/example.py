"""Case (i): the models/ example as shipped, beside the same estimators refitted as models/make_examples.py fits them.

models/a.onnx (random forest, ZipMap) on a,b and models/b.onnx (scaler + logistic regression,
ZipMap) on c,d, merged on models/train.csv with the default stack linear head. The refitted
estimators are checked to export byte-identical copies of the two files (so they are the
originals (b) stacks), and are exported once more with ZipMap off for (a), the fair comparison.
"""

from __future__ import annotations

from pathlib import Path

from _children import REPO, repo_module

from cases import Case, Source, build

MODELS = REPO / "models"


def example_case(folder: Path) -> Case:
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    examples = repo_module("models/make_examples.py")
    x, y = examples.make_rows()
    forest = RandomForestClassifier(n_estimators=12, max_depth=6, random_state=examples.SEED).fit(x[:, :2], y)
    linear = make_pipeline(StandardScaler(), LogisticRegression()).fit(x[:, 2:], y)
    exports = (  # file, estimator, columns, opset and its ZipMap-off option, as make_examples.py exports them
        ("a", forest, ("a", "b"), 18, {"zipmap": False}),
        ("b", linear, ("c", "d"), 13, {id(linear): {"zipmap": False}}),
    )
    given, plain, identical = [], [], True
    for index, (stem, estimator, features, opset, no_zipmap) in enumerate(exports, start=1):
        sample = x[:1, ["abcd".index(f) for f in features]]
        path, plain_path = MODELS / f"{stem}.onnx", folder / f"{stem}_nozipmap.onnx"
        identical &= path.read_bytes() == to_onnx(estimator, sample, target_opset=opset).SerializeToString()
        plain_path.write_bytes(to_onnx(estimator, sample, target_opset=opset, options=no_zipmap).SerializeToString())
        given.append(Source(f"m{index} {stem}", path, features, estimator))
        plain.append(Source(f"m{index} {stem}", plain_path, features, estimator))
    note = (
        "original estimators refitted as models/make_examples.py does; skl2onnx export byte-identical to "
        f"models/a.onnx and models/b.onnx: {identical}"
    )
    title = "(i) models/ example: RF(a,b) + scaler+LR(c,d)"
    return build("i", title, given, data=MODELS / "train.csv", folder=folder, plain_sources=plain, notes=(note,))
