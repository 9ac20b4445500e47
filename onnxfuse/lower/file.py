"""`onnxfuse lower MODEL -o OUT`: one ONNX file's ai.onnx.ml ops rewritten into ai.onnx, checked, written atomically."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx

from onnxfuse.emit import PROTOBUF_LIMIT
from onnxfuse.errors import OnnxfuseError, warn
from onnxfuse.load import load_model
from onnxfuse.lower import MIN_OPSET, ML, lower_model
from onnxfuse.lower.check import check_lowered, with_missing
from onnxfuse.normalize import convert_opset, probe_feeds, strip_zipmap
from onnxfuse.support import iter_model_nodes

CHECK_ROWS = 256


@dataclasses.dataclass(frozen=True)
class LoweredFile:
    """What `lower` did, for its summary line."""

    output: Path
    rewritten: int  # ai.onnx.ml nodes
    nodes: int  # nodes of the lowered file
    rows: int  # rows the lowered file was checked on


def lower_file(path: Path, output: Path) -> LoweredFile:
    """Read MODEL (the merge's checks), lower it, check it against MODEL in onnxruntime on seeded rows (a copy
    of them with NaN cells too), and write OUT atomically; MODEL is never changed.

    A ZipMap output (a sequence of maps, which ai.onnx cannot build) becomes the float [N, classes] tensor it
    wraps, with a warning; an opset below 13 is converted up first (and that is checked too)."""
    from onnxfuse.emit import check_output, write_file
    from onnxfuse.spec import ModelSpec

    check_output(output, [path])
    load_model(ModelSpec(path), 0)  # the checks every input gets: readable, valid, external data inside its folder
    proto = onnx.load(str(path))  # weights read in: OUT is one self-contained file
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise OnnxfuseError(f"{path}: with its weights it is over protobuf's 2 GB limit; `onnxfuse lower` writes "
                            "one self-contained file, so it lowers models below 2 GB only")  # fmt: skip
    classes = strip_zipmap(proto, str(path))
    if classes:
        for name, labels in classes.items():
            warn(f"{path}: ZipMap output '{name}' becomes a plain float [N, {len(labels)}] tensor, one column per "
                 f"class in the order {list(labels)} (ai.onnx has no maps)")  # fmt: skip
    original = proto.SerializeToString()
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        proto = convert_opset(proto, str(path), MIN_OPSET)
    lowered = lower_model(proto, str(path))
    feeds = probe_feeds(proto.graph, rows=CHECK_ROWS)
    if feeds is None:
        raise OnnxfuseError(f"{path}: its inputs cannot be generated to check the lowered file (an input type or "
                            "shape onnxfuse cannot build rows for)")  # fmt: skip
    checked = with_missing(feeds)
    data = lowered.SerializeToString(deterministic=True)
    check_lowered(original, data, checked, f"lower {path}")
    onnx.checker.check_model(data, full_check=True)
    write_file(output, data)
    rewritten = sum(1 for n in iter_model_nodes(proto) if n.domain == ML)
    return LoweredFile(output, rewritten, sum(1 for _ in iter_model_nodes(lowered)), len(next(iter(checked.values()))))
