"""Which rows are held out, and which the head is fitted on, decided per row from the seed.

Rules: a row's keys are a hash (splitmix64) of the seed, its file's name relative to the data's root and its
position in that file, so they depend neither on the batch a row is read in, nor on the order the files are
listed, nor on the engine that reads it. A row is held out when its first key, read as a number in [0, 1), is
below `--holdout`; the fit sample is the `--fit-rows` rows with the smallest second keys (bottom-k: a uniform
sample without replacement, drawn in one pass with at most twice that many rows in memory), kept in the dataset's
order.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from onnxfuse.data import Table
from onnxfuse.dataset import Dataset
from onnxfuse.errors import OnnxfuseError

HOLDOUT_STREAM, SAMPLE_STREAM = 1, 2
_UNIT = 2.0**-53


def mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic): neighbouring inputs give unrelated outputs."""
    x = values.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def row_keys(name: str, offset: int, rows: int, *, seed: int, stream: int) -> np.ndarray:
    """uint64 keys of rows `offset .. offset + rows` of the file named `name`."""
    return keys_at(name, np.arange(offset, offset + rows, dtype=np.uint64), seed=seed, stream=stream)


def keys_at(name: str, positions: np.ndarray, *, seed: int, stream: int) -> np.ndarray:
    """uint64 keys of the rows at `positions` (in the file named `name`): `row_keys` of a few rows only."""
    digest = hashlib.blake2b(f"{stream}:{seed}:{name}".encode(), digest_size=8).digest()
    base = mix(np.array([int.from_bytes(digest, "little")], dtype=np.uint64))[0]
    return mix(positions.astype(np.uint64) + base)


def held_out(name: str, offset: int, rows: int, *, seed: int, holdout: float) -> np.ndarray:
    """bool [rows]: which of these rows are hold-out rows."""
    keys = row_keys(name, offset, rows, seed=seed, stream=HOLDOUT_STREAM)
    return (keys >> np.uint64(11)).astype(np.float64) * _UNIT < holdout


@dataclasses.dataclass(frozen=True)
class Sample:
    """The fit sample: its rows' columns in the dataset's order, which of them are hold-out rows, and how many
    rows the data holds."""

    table: Table
    holdout: np.ndarray  # bool [n]
    rows: int  # rows in the whole dataset
    complete: bool  # every row of the data is in the sample


def draw_sample(dataset: Dataset, columns: Sequence[str], *, fit_rows: int, seed: int, holdout: float,
                progress=None) -> Sample:  # fmt: skip
    """The bottom-`fit_rows` rows by their sample key, read in one pass over `columns`."""
    kept = _Bottom(fit_rows)
    total = 0
    for piece, table in dataset.tables(columns):
        keys = row_keys(piece.name, piece.offset, piece.rows, seed=seed, stream=SAMPLE_STREAM)
        flags = held_out(piece.name, piece.offset, piece.rows, seed=seed, holdout=holdout)
        order = np.full(piece.rows, piece.index, dtype=np.int64), np.arange(piece.offset, piece.offset + piece.rows)
        kept.add(keys, {**table, "\0piece": order[0], "\0row": order[1], "\0holdout": flags})
        total += piece.rows
        if progress is not None:
            progress(piece.rows)
    if not total:
        raise OnnxfuseError(f"data {dataset.label}: holds no rows")
    table = kept.rows()
    order = np.lexsort((table.pop("\0row"), table.pop("\0piece")))
    flags = table.pop("\0holdout")[order]
    return Sample({name: values[order] for name, values in table.items()}, flags, total, len(flags) == total)


class _Bottom:
    """The rows with the `k` smallest keys seen so far; pruned when twice that many are held."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.keys: list[np.ndarray] = []
        self.tables: list[Table] = []
        self.held = 0
        self.threshold = np.iinfo(np.uint64).max

    def add(self, keys: np.ndarray, table: Table) -> None:
        chosen = np.flatnonzero(keys <= self.threshold)
        if not len(chosen):
            return
        self.keys.append(keys[chosen])
        self.tables.append({name: values[chosen] for name, values in table.items()})
        self.held += len(chosen)
        if self.held >= 2 * self.k:
            self._prune()

    def rows(self) -> Table:
        self._prune()
        return self.tables[0] if self.tables else {}

    def _prune(self) -> None:
        keys = np.concatenate(self.keys)
        table = _concatenated(self.tables)
        if len(keys) > self.k:
            chosen = np.argpartition(keys, self.k - 1)[: self.k]
            keys, table = keys[chosen], {name: values[chosen] for name, values in table.items()}
            self.threshold = keys.max()
        self.keys, self.tables, self.held = [keys], [table], len(keys)


def _concatenated(tables: Iterable[Table]) -> Table:
    tables = list(tables)
    return {name: np.concatenate([t[name] for t in tables]) for name in tables[0]}


@dataclasses.dataclass(frozen=True)
class Streamed:
    """What the pipeline decides before the head is fitted: where the rows are and how they are read."""

    dataset: Dataset
    columns: tuple[str, ...]  # the columns the merge reads: bound features, string and shared inputs, the target
    target: str
    engine: str
    seed: int
    holdout: float
    sample_rows: int  # rows of the fit sample
    data_rows: int  # rows of the whole data
