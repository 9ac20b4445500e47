"""Run a per-piece job (read a piece of the data, score it in onnxruntime) over every piece: threads or Ray Data."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import pickle
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from onnxfuse.errors import OnnxfuseError, reason

ENGINES = ("local", "ray")
RAY_MISSING = "--engine ray needs Ray: pip install 'onnxfuse[ray]'"

P = TypeVar("P")
R = TypeVar("R")


class PieceJob(Protocol):
    """Built once per worker (a thread pool shares one; each Ray actor builds its own): holds an onnxruntime
    session made from model bytes or a path — never a pickled session."""

    def __call__(self, piece: Any) -> Any: ...  # piece -> partial result (picklable)


def iter_pieces(
    pieces: Sequence[P],
    make_job: Callable[[int], PieceJob],
    *,
    engine: str = "local",
    rows: Callable[[P], int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[R]:
    """Results of make_job(threads)(piece) for every piece, yielded in the pieces' order as soon as each and those
    before it are done, so a caller that folds them holds a few at a time, not one per piece.

    Rules: `make_job` is picklable (Ray sends it to its actors) and takes the onnxruntime intra-op threads its
    session may use; every job runs on one thread on both engines, because onnxruntime's tree ensembles sum in
    an order that depends on the thread count, so both engines give the same bits. `progress` is told
    `rows(piece)` (1 without `rows`) once per finished piece: in piece order locally, in completion order on
    Ray. A job's exception is raised as itself (an OnnxfuseError stays one `error:` line); Ctrl-C propagates.
    """
    if engine not in ENGINES:
        raise OnnxfuseError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
    if not pieces:
        return
    run = _map_local if engine == "local" else _map_ray
    yield from run(pieces, make_job, rows, progress)


def _map_local(
    pieces: Sequence[P], make_job: Callable[[int], PieceJob], rows: Callable[[P], int] | None, progress: Any
) -> Iterator[R]:
    """One job shared by one thread per core (onnxruntime's `run` is thread-safe and releases the GIL)."""
    job = make_job(1)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    try:
        futures = [pool.submit(job, piece) for piece in pieces]
        for index, piece in enumerate(pieces):  # in piece order, so progress is too
            result = futures[index].result()
            futures[index] = None  # the future no longer holds the result once the caller has it
            _tell(progress, rows, piece)
            yield result
    finally:  # on an error or Ctrl-C the queued pieces are dropped; the running ones (one per core) finish
        pool.shutdown(wait=True, cancel_futures=True)


def _map_ray(
    pieces: Sequence[P], make_job: Callable[[int], PieceJob], rows: Callable[[P], int] | None, progress: Any
) -> Iterator[R]:
    """The pieces as a Ray dataset of (index, pickled piece), one block each, through a pool of `_Actor`s.

    One actor per available CPU, one onnxruntime thread each: the same thread count as the local engine
    (identical bits), no oversubscription, and an actor per core keeps every core busy when pieces vary in size.
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise OnnxfuseError(RAY_MISSING) from None
    started = not ray.is_initialized()
    with _quiet_ray(ray):
        if started:
            address = os.environ.get("RAY_ADDRESS")
            try:
                ray.init(
                    address=address,
                    num_cpus=(os.cpu_count() or 1) if address is None else None,  # only a Ray we start
                    log_to_driver=False,  # the jobs' own prints and warnings stay in Ray's log files
                    include_dashboard=False,
                    logging_level=logging.ERROR,  # no "Started a local Ray instance" or token-auth banners
                )
            except ConnectionError as exc:
                raise OnnxfuseError(
                    f"RAY_ADDRESS {address}: cannot connect to a Ray cluster there ({reason(exc, 160)}); fix it, or "
                    "unset it to start a local Ray"
                ) from exc
        try:
            yield from _run_dataset(ray, pieces, make_job, rows, progress)
        finally:
            if started:
                ray.shutdown()


def _run_dataset(ray: Any, pieces: Sequence[P], make_job: Any, rows: Any, progress: Any) -> Iterator[R]:
    """Stream the actors' rows as they finish; the results put back in piece order (those that finish ahead of
    an earlier piece wait)."""
    actors = max(1, min(int(ray.available_resources().get("CPU", 1)), len(pieces)))
    items = [{"index": i, "piece": pickle.dumps(piece)} for i, piece in enumerate(pieces)]
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    with warnings.catch_warnings():  # max_restarts: see below; Ray 2.60 calls extra remote args deprecated
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        dataset = dataset.map_batches(
            _Actor,
            fn_constructor_kwargs={"make_job": make_job, "threads": 1},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors),  # `concurrency=` is deprecated since Ray 2.51
            num_cpus=1,
            # a job is pure, so a lost actor is a failed merge to rerun; Ray's default of restarting it
            # prints a C++ warning on stderr (ray-project/ray#53727) for every run
            max_restarts=0,
        )
    waiting: dict[int, Any] = {}
    following = 0  # the index of the next result to yield
    stream = iter(dataset.iter_rows())
    try:
        for row in stream:
            index = int(row["index"])
            if row["error"]:
                raise pickle.loads(row["error"])
            waiting[index] = pickle.loads(row["result"])
            _tell(progress, rows, pieces[index])
            while following in waiting:
                yield waiting.pop(following)
                following += 1
    except ray.exceptions.RayTaskError as exc:  # a failure outside the job itself (the job's own are rows)
        cause = _original(ray, exc)
        if cause is None:
            raise
        raise cause from exc
    finally:
        if hasattr(stream, "close"):
            stream.close()  # stops the execution when we stop early (an error, Ctrl-C)


class _Actor:
    """A Ray Data callable class: builds the job once per actor, then runs it on each piece of its batches.

    The job's exception comes back as a row (pickled, with its traceback as a note) rather than through Ray,
    which wraps it in RayTaskError(UserCodeException) and drops the original.
    """

    def __init__(self, make_job: Callable[[int], PieceJob], threads: int) -> None:
        self.job: PieceJob | None = None
        self.error: bytes = b""
        try:
            self.job = make_job(threads)
        except Exception as exc:
            self.error = _pickle_error(exc)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"index": [], "result": [], "error": []}
        for index, piece in zip(batch["index"], batch["piece"]):
            result, error = b"", self.error
            if self.job is not None:
                try:
                    result = pickle.dumps(self.job(pickle.loads(piece)))
                except Exception as exc:
                    error = _pickle_error(exc)
            out["index"].append(int(index))
            out["result"].append(result)
            out["error"].append(error)
        return out


def _pickle_error(exc: Exception) -> bytes:
    """The exception as bytes with its remote traceback as a note; a RuntimeError naming it if it cannot be
    pickled and read back (e.g. an __init__ that takes other arguments than its args)."""
    exc.add_note("on Ray:\n" + "".join(traceback.format_exception(exc)).rstrip())
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
    except Exception:
        data = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
    return data


def _original(ray: Any, exc: BaseException) -> BaseException | None:
    """The first exception in a Ray error's chain that is not Ray's own, if Ray kept one."""
    seen: BaseException | None = exc
    while seen is not None:
        if not isinstance(seen, ray.exceptions.RayError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


@contextlib.contextmanager
def _quiet_ray(ray: Any) -> Iterator[None]:
    """Ray Data's progress bars and log lines ("Starting execution of Dataset ...") off for the block: its
    failures reach the caller as exceptions."""
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.print_on_execution_start
    context.enable_progress_bars, context.print_on_execution_start = False, False
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
        context.enable_progress_bars, context.print_on_execution_start = saved


def _tell(progress: Callable[[int], None] | None, rows: Callable[[Any], int] | None, piece: Any) -> None:
    """Tell `progress` the piece's rows (or 1, counting pieces, without `rows`)."""
    if progress is not None:
        progress(1 if rows is None else rows(piece))
