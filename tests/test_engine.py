"""iter_pieces over a real Parquet dataset with a real onnxruntime session: local threads, and Ray Data (`-m ray`).

A piece is one row group of one file, (path, row group index); the job reads its columns with pyarrow, runs a
skl2onnx LogisticRegression on them and returns small partial results: (rows, per-class sums of the
probabilities in float64, per-class counts of the argmax, the session's intra-op threads).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from onnxfuse.engine import ENGINES, iter_pieces
from onnxfuse.errors import OnnxfuseError

COLUMNS = ("a", "b", "c", "d")
FILES = 3
FILE_ROWS = 1000
GROUP_ROWS = 256  # four row groups a file, the last one short

Piece = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class MakeJob:
    """Picklable: only the model's bytes and the columns travel; each worker builds its own session."""

    model: bytes
    columns: tuple[str, ...] = COLUMNS
    delay: float = 0.0  # seconds a piece takes, so that an interrupt lands while pieces are queued

    def __call__(self, threads: int) -> Job:
        return Job(self, threads)


class Job:
    """One onnxruntime session, shared by the threads that call it."""

    def __init__(self, make: MakeJob, threads: int) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(make.model, options, providers=["CPUExecutionProvider"])
        self.make = make
        self.ran: list[Piece] = []

    def __call__(self, piece: Piece) -> tuple[int, tuple[float, ...], tuple[int, ...], int]:
        path, group = piece
        self.ran.append(piece)
        time.sleep(self.make.delay)
        file = pq.ParquetFile(path)
        missing = [c for c in self.make.columns if c not in file.schema_arrow.names]
        if missing:
            raise OnnxfuseError(f"data {Path(path).name}: column '{missing[0]}' is missing")
        table = file.read_row_group(group, columns=list(self.make.columns))
        x = np.stack([table[c].to_numpy() for c in self.make.columns], axis=1)
        _, probabilities = self.session.run(None, {"X": x})
        sums = tuple(probabilities.sum(axis=0, dtype=np.float64).tolist())
        counts = tuple(np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1]).tolist())
        return len(x), sums, counts, self.session.get_session_options().intra_op_num_threads


@pytest.fixture(scope="module")
def model() -> bytes:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(COLUMNS))).astype(np.float32)
    y = (x[:, 0] - x[:, 1] + 0.5 * x[:, 2] * x[:, 3] > 0).astype(np.int64)
    fitted = LogisticRegression().fit(x, y)
    return to_onnx(fitted, x[:1], options={"zipmap": False}, target_opset=17).SerializeToString()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FILES Parquet files of FILE_ROWS float32 rows in row groups of GROUP_ROWS, and bad.parquet without 'd'."""
    folder = tmp_path_factory.mktemp("engine_data")
    rng = np.random.default_rng(1)
    for i in range(FILES):
        table = pa.table({c: rng.normal(size=FILE_ROWS).astype(np.float32) for c in COLUMNS})
        pq.write_table(table, folder / f"part-{i}.parquet", row_group_size=GROUP_ROWS)
    bad = pa.table({c: rng.normal(size=10).astype(np.float32) for c in COLUMNS[:-1]})
    pq.write_table(bad, folder / "bad.parquet")
    return folder


def map_pieces(pieces: list, make_job: Any, **options: Any) -> list[Any]:
    """Every result of `iter_pieces`, in order."""
    return list(iter_pieces(pieces, make_job, **options))


@pytest.fixture(scope="module")
def pieces(dataset: Path) -> list[Piece]:
    files = sorted(dataset.glob("part-*.parquet"))
    return [(str(f), g) for f in files for g in range(pq.ParquetFile(f).num_row_groups)]


def piece_rows(piece: Piece) -> int:
    path, group = piece
    return pq.ParquetFile(path).metadata.row_group(group).num_rows


def plain_loop(model: bytes, pieces: list[Piece]) -> list[Any]:
    job = MakeJob(model)(1)
    return [job(piece) for piece in pieces]


# ------------------------------------------------------------------------------------------------
# local
# ------------------------------------------------------------------------------------------------


def test_map_pieces_local_equals_a_plain_loop_in_piece_order(model: bytes, pieces: list[Piece]) -> None:
    told: list[int] = []
    results = map_pieces(pieces, MakeJob(model), rows=piece_rows, progress=told.append)
    assert len(pieces) == FILES * 4
    assert results == plain_loop(model, pieces)
    assert [r[0] for r in results] == [piece_rows(p) for p in pieces] == told  # progress in piece order
    assert sum(told) == FILES * FILE_ROWS
    assert {r[3] for r in results} == {1}  # one onnxruntime thread per job


def test_map_pieces_local_counts_pieces_without_rows(model: bytes, pieces: list[Piece]) -> None:
    told: list[int] = []
    map_pieces(pieces[:3], MakeJob(model), progress=told.append)
    assert told == [1, 1, 1]
    assert map_pieces([], MakeJob(model)) == []


def test_map_pieces_local_raises_the_jobs_error(model: bytes, pieces: list[Piece], dataset: Path) -> None:
    with pytest.raises(OnnxfuseError, match=r"^data bad.parquet: column 'd' is missing$"):
        map_pieces([*pieces, (str(dataset / "bad.parquet"), 0)], MakeJob(model))


def test_map_pieces_local_interrupt_propagates_and_drops_queued_pieces(model: bytes, pieces: list[Piece]) -> None:
    jobs: list[Job] = []
    make = MakeJob(model, delay=0.2)

    def make_job(threads: int) -> Job:
        jobs.append(make(threads))
        return jobs[-1]

    def interrupt(rows: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        map_pieces(pieces, make_job, rows=piece_rows, progress=interrupt)
    assert len(jobs[0].ran) <= 2 * (os.cpu_count() or 1) < len(pieces)  # the first pieces only, then none
    assert not any(t.name.startswith("ThreadPoolExecutor") for t in threading.enumerate())  # the pool is gone


def test_map_pieces_refuses_an_unknown_engine(model: bytes, pieces: list[Piece]) -> None:
    with pytest.raises(OnnxfuseError, match=r"--engine 'spark' is not one of local, ray"):
        map_pieces(pieces, MakeJob(model), engine="spark")
    assert ENGINES == ("local", "ray")


def test_map_pieces_ray_says_how_to_install_ray_when_missing(
    model: bytes, pieces: list[Piece], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # how Python marks a module as absent
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(OnnxfuseError, match=r"^--engine ray needs Ray: pip install 'onnxfuse\[ray\]'$"):
        map_pieces(pieces, MakeJob(model), engine="ray")


# ------------------------------------------------------------------------------------------------
# Ray (tox -e ray): a local Ray with 2 CPUs unless RAY_ADDRESS names a cluster
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _ray_module() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    # Ray's workers cannot import this test file (pytest put its folder on the path): send MakeJob and Job by
    # value, as onnxfuse's own jobs need not be (the workers import onnxfuse)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_running(_ray_module: Any) -> Any:
    """A Ray the test started (so map_pieces must leave it running)."""
    ray = _ray_module
    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS"),
            num_cpus=None if os.environ.get("RAY_ADDRESS") else 2,
            log_to_driver=False,
            include_dashboard=False,
            logging_level="ERROR",
        )
    return ray


@pytest.fixture
def ray_stopped(_ray_module: Any) -> Any:
    """No Ray running (so map_pieces starts its own and must stop it)."""
    if _ray_module.is_initialized():
        _ray_module.shutdown()
    return _ray_module


@pytest.mark.ray
def test_map_pieces_ray_starts_and_stops_its_own_ray(model: bytes, pieces: list[Piece], ray_stopped: Any) -> None:
    told: list[int] = []
    results = map_pieces(pieces, MakeJob(model), engine="ray", rows=piece_rows, progress=told.append)
    assert results == plain_loop(model, pieces)
    assert sorted(told) == sorted(piece_rows(p) for p in pieces)
    assert not ray_stopped.is_initialized()


@pytest.mark.ray
def test_map_pieces_ray_interrupt_propagates_and_stops_its_own_ray(
    model: bytes, pieces: list[Piece], ray_stopped: Any
) -> None:
    def interrupt(rows: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        map_pieces(pieces, MakeJob(model), engine="ray", rows=piece_rows, progress=interrupt)
    assert not ray_stopped.is_initialized()


@pytest.mark.ray
def test_map_pieces_ray_equals_local_bit_for_bit(model: bytes, pieces: list[Piece], ray_running: Any) -> None:
    told: list[int] = []
    results = map_pieces(pieces, MakeJob(model), engine="ray", rows=piece_rows, progress=told.append)
    local = map_pieces(pieces, MakeJob(model), engine="local")
    assert results == local  # float64 sums compared with ==: the same bits
    assert [r[1] for r in results] == [r[1] for r in local]
    assert sorted(told) == sorted(piece_rows(p) for p in pieces)
    assert sum(told) == FILES * FILE_ROWS
    assert ray_running.is_initialized()  # a Ray map_pieces did not start is left running


@pytest.mark.ray
def test_map_pieces_ray_raises_the_jobs_onnxfuse_error(
    model: bytes, pieces: list[Piece], dataset: Path, ray_running: Any
) -> None:
    with pytest.raises(OnnxfuseError) as caught:
        map_pieces([*pieces, (str(dataset / "bad.parquet"), 0)], MakeJob(model), engine="ray")
    assert type(caught.value) is OnnxfuseError
    assert str(caught.value) == "data bad.parquet: column 'd' is missing"  # the CLI's one `error:` line
    assert any("on Ray:" in note for note in caught.value.__notes__)  # the remote traceback, for ONNXFUSE_DEBUG


@pytest.mark.ray
def test_map_pieces_ray_jobs_build_their_session_from_bytes(
    model: bytes, pieces: list[Piece], ray_running: Any
) -> None:
    make = MakeJob(model)
    sent = pickle.dumps(make)
    assert len(sent) < len(model) + 1000  # the model's bytes and the columns, no session
    assert pickle.loads(sent) == make
    with pytest.raises(TypeError):
        pickle.dumps(make(1).session)  # a session cannot travel: each actor must build its own
    results = map_pieces(pieces, make, engine="ray")
    assert {r[3] for r in results} == {1}  # every actor's session: intra_op_num_threads=1, as asked


@pytest.mark.ray
def test_map_pieces_ray_raises_the_error_of_a_job_that_cannot_be_built(pieces: list[Piece], ray_running: Any) -> None:
    with pytest.raises(Exception) as local:
        map_pieces(pieces, MakeJob(b"not a model"))
    with pytest.raises(type(local.value)) as remote:  # onnxruntime's own error, raised in the actor's __init__
        map_pieces(pieces, MakeJob(b"not a model"), engine="ray")
    assert type(remote.value) is type(local.value)
    assert str(remote.value) == str(local.value)
