"""Which runtimes run the fused files, standard and `--ops core`, and what the core file costs: one run.

The cases are the portability suite's (tests/portability/cases.py: the README's example, skl2onnx + LightGBM +
XGBoost under a gbdt stack with passthrough, string labels, a regression MLP head, a gate, a mean), each merged
twice by the real CLI: standard and `--ops core`. Every file is run in onnxruntime, OpenVINO (CPU plugin,
`INFERENCE_PRECISION_HINT=f32`) and tract (input facts set) on the case's 256 rows and compared with
onnxruntime on the standard file (floats within 1e-5, labels equal except near-ties): the table runtime x file.

Then per case: the size factor (core bytes / standard bytes), and the median latency per call of onnxruntime on
the standard file, onnxruntime on the core file and OpenVINO on the core file at batch 1 and 1024, timed side
by side (benchmarks/harness.py: interleaved rounds, 1 thread each), as ratios core/standard (onnxruntime) and
OpenVINO/onnxruntime (core file).

    python benchmarks/core_runtimes.py                # all cases
    python benchmarks/core_runtimes.py --cases example,mean --calls 100
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import numpy as np
from _children import repo_module, temporary_folder
from harness import Settings, batch_rows, fmt_ms, measure, session

BATCHES = (1, 1024)
RUNTIMES = ("onnxruntime", "openvino", "tract")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the built files and print their folder")
    Settings.add_arguments(parser)
    args = parser.parse_args()
    settings = Settings.parsed(parser, args)
    repo_module("tests/generators.py")
    repo_module("tests/conftest.py")
    cases = repo_module("tests/portability/cases.py")
    runtimes = repo_module("tests/portability/runtimes.py")
    chosen = args.cases.split(",") if args.cases else list(cases.CASES)
    print(settings.describe(["onnxruntime", "openvino", "tract", "onnx", "onnxfuse"], BATCHES))
    with temporary_folder("onnxfuse-core-", keep=args.keep) as folder:
        built = {name: _build(cases.CASES[name], folder / name) for name in chosen}
        _print_runtimes(built, runtimes)
        _print_costs(built, runtimes, settings)
    return 0


def _build(build, folder: Path) -> dict:
    (folder / "standard").mkdir(parents=True)
    (folder / "core").mkdir()
    standard = build(folder / "standard")
    core = build(folder / "core", "--ops", "core")
    return {"standard": standard.path, "core": core.path, "feeds": standard.feeds}


def _run(runtimes, runtime: str, path: Path, feeds: dict) -> dict:
    if runtime == "onnxruntime":
        sess = session(path, 1)
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    return getattr(runtimes, f"{runtime}_outputs")(path, feeds)


def _print_runtimes(built: dict, runtimes) -> None:
    print("\nruntime x file: 'ok (max error)' when every output agrees with onnxruntime on the standard file")
    print(f"  {'case':34} {'runtime':12} {'standard file':44} {'core file':44}")
    for name, files in built.items():
        expected = _run(runtimes, "onnxruntime", files["standard"], files["feeds"])
        for runtime in RUNTIMES:
            cells = []
            for kind in ("standard", "core"):
                try:
                    actual = _run(runtimes, runtime, files[kind], files["feeds"])
                except Exception as exc:  # a runtime that cannot load or run the file: the table says why
                    cells.append("fails: " + _first_line(exc))
                    continue
                unread = runtimes.unreturned(files[kind], files["feeds"]) if runtime == "tract" else {}
                wanted = {k: v for k, v in expected.items() if k not in unread}
                problems = runtimes.differences(actual, wanted)
                error = runtimes.worst_error(actual, wanted)
                note = f", {'+'.join(unread)} not readable from Python" if unread else ""
                cells.append(f"ok ({error:.1g}){note}" if not problems else "wrong: " + "; ".join(
                    f"{k} {v}" for k, v in problems.items()))  # fmt: skip
            print(f"  {name:34} {runtime:12} {cells[0][:44]:44} {cells[1][:44]:44}")


def _print_costs(built: dict, runtimes, settings: Settings) -> None:
    print("\nsize and latency: median ms per call (1 thread); ratios core/standard (onnxruntime) and "
          "OpenVINO/onnxruntime (core file)")  # fmt: skip
    print(f"  {'case':34} {'size x':>7} {'batch':>6} {'ort std':>9} {'ort core':>9} {'ov core':>9} "
          f"{'core/std':>9} {'ov/ort':>7}")  # fmt: skip
    for name, files in built.items():
        factor = files["core"].stat().st_size / files["standard"].stat().st_size
        for batch in BATCHES:
            feeds = {k: batch_rows(np.asarray(v), batch) for k, v in files["feeds"].items()}
            methods = {"std": _ort_call(files["standard"], feeds), "core": _ort_call(files["core"], feeds)}
            vino = _openvino_call(files["core"], feeds)
            if vino is not None:
                methods["ov"] = vino
            timing = measure(methods, settings)
            ov = timing["ov"].median if "ov" in timing else float("nan")
            print(f"  {name:34} {factor:7.2f} {batch:>6} {fmt_ms(timing['std'].median):>9} "
                  f"{fmt_ms(timing['core'].median):>9} {fmt_ms(ov):>9} "
                  f"{timing['core'].median / timing['std'].median:9.2f} {ov / timing['core'].median:7.2f}")  # fmt: skip


def _ort_call(path: Path, feeds: dict):
    sess = session(path, 1)
    return lambda: sess.run(None, feeds)


def _openvino_call(path: Path, feeds: dict):
    import openvino

    try:
        compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                    "INFERENCE_NUM_THREADS": 1})  # fmt: skip
    except Exception:  # the runtime table says why; no timing for a file OpenVINO cannot load
        return None
    request = compiled.create_infer_request()
    inputs = [feeds[i.get_any_name()] for i in compiled.inputs]
    return lambda: request.infer(inputs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:120]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        traceback.print_exc()
        sys.exit(130)
