"""`--ort`: the fused model in onnxruntime's ORT format for mobile builds, checked against the .onnx."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from onnxfuse.emit import PACKED, Staged
from onnxfuse.errors import OnnxfuseError, VerificationError
from onnxfuse.verify import REFERENCE_TOLERANCE, compare, run_onnxruntime

ORT_SUFFIX = ".ort"
CONFIG_SUFFIX = ".required_operators.config"


def write_ort(staged: Staged, out: Path, feeds: Mapping[str, np.ndarray]) -> Staged:
    """Add `OUT.ort` and its required-operators config to what emit moves into place.

    Rules: converted with onnxruntime's `convert_onnx_models_to_ort` in the Runtime
    optimisation style (the graph keeps standard ops; saved optimisations replay
    only where a session enables them), and the `.ort` must give the `.onnx`'s
    outputs on the verification rows; only for files below 2 GB (the ORT format's
    limit too).
    """
    import onnxruntime
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    packed = staged.view.parent / PACKED
    if not packed.is_file():
        raise OnnxfuseError("--ort: the fused model is over 2 GB, which the ORT format cannot hold; drop --ort")
    folder = packed.parent / "ort"
    onnxruntime.set_default_logger_severity(4)
    for name in ("ort_format_model", "ort_format_model.utils"):  # their INFO lines name our temp files
        logging.getLogger(name).setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):
        convert_onnx_models_to_ort(packed, output_dir=folder, optimization_styles=[OptimizationStyle.Runtime])
    converted = folder / f"{packed.stem}.with_runtime_opt.ort"
    config = folder / f"{packed.stem}.required_operators.with_runtime_opt.config"
    expected, actual = run_onnxruntime(packed, feeds), run_onnxruntime(converted, feeds)
    if expected.keys() != actual.keys():
        raise VerificationError(f"the .ort model has outputs {sorted(actual)}, the .onnx {sorted(expected)}")
    for name, value in expected.items():
        compare(name, actual[name], value, REFERENCE_TOLERANCE, ".ort vs .onnx in onnxruntime")
    _name_sources(config, out.with_suffix(ORT_SUFFIX).name)
    moves = ((converted, out.with_suffix(ORT_SUFFIX)), (config, out.with_suffix(CONFIG_SUFFIX)))
    return Staged(view=staged.view, moves=moves + staged.moves)


def _name_sources(config: Path, ort_name: str) -> None:
    """The converter's header names temporary files: name the shipped one (and keep bytes reproducible)."""
    lines = [line for line in config.read_text().splitlines() if not line.startswith("#")]
    config.write_text(
        f"# Operators {ort_name} needs, for a reduced onnxruntime build (onnxfuse --ort)\n" + "\n".join(lines) + "\n"
    )
