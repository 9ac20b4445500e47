"""`--data` as a dataset: one file, a folder (hive-style partitions included), a glob or a list of files, read in
pieces (a Parquet row group, a whole CSV file) and only for the columns a merge needs.

Rules: the files are listed in sorted order of their names relative to the data's root, so how a folder or glob
lists them does not matter; every needed column must be in every file, with one type (integers and floats
together are read as float64); an empty dataset is refused. A piece is named by its file's relative name and the
position of its first row in the file: `sampling` hashes those positions.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxfuse.data import Table, columns_found, to_numpy
from onnxfuse.errors import OnnxfuseError, reason

PARQUET = (".parquet", ".pq")
TEXT = (".csv", ".tsv")
GLOB_CHARS = "*?["
READ_ROWS = 65_536  # rows per record batch of a CSV piece (read at each call, so a test can change it)


@dataclasses.dataclass(frozen=True)
class Piece:
    """A unit of reading: a Parquet row group or a whole CSV file. `fragment` is pyarrow's (picklable, so a Ray
    worker reads it itself)."""

    index: int  # the piece's place in the dataset's order
    name: str  # the file's name relative to the data's root: the row hash uses it
    path: str  # the file as the user's --data names it, for messages
    fragment: Any  # pyarrow.dataset.Fragment
    offset: int  # the position in its file of the piece's first row
    rows: int | None  # None for CSV: unknown until read


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Where the rows are: the pieces in order, the columns, and their types."""

    label: Path  # how messages name the data as a whole
    files: tuple[Path, ...]
    root: Path
    schema: Any  # pyarrow.Schema of every column: the needed ones unified across files
    pieces: tuple[Piece, ...]

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    @property
    def rows(self) -> int | None:
        """The number of rows, when the files say it without being read (Parquet)."""
        counts = [piece.rows for piece in self.pieces]
        return None if any(count is None for count in counts) else sum(counts)

    def read(self, columns: Sequence[str]) -> Table:
        """Every row of `columns`, in the dataset's order."""
        chunks = [table for _, table in self.tables(columns)]
        if not chunks:
            raise OnnxfuseError(f"data {self.label}: holds no rows")
        return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in columns}

    def head(self, columns: Sequence[str], rows: int) -> Table:
        """The first `rows` rows of `columns` (fewer when the data holds fewer), reading no further."""
        chunks, count = [], 0
        for _, table in self.tables(columns):
            chunks.append(table)
            count += len(table[columns[0]]) if columns else 0
            if count >= rows or not columns:
                break
        if not chunks:
            raise OnnxfuseError(f"data {self.label}: holds no rows")
        return {name: np.concatenate([chunk[name] for chunk in chunks])[:rows] for name in columns}

    def tables(self, columns: Sequence[str]) -> Iterator[tuple[Piece, Table]]:
        """Each piece's rows of `columns` (a CSV piece in record batches: one batch of rows at a time)."""
        for piece in self.pieces:
            for offset, table in piece_tables(piece, columns, self.schema):
                yield dataclasses.replace(piece, offset=offset, rows=len(next(iter(table.values())))), table


def piece_tables(piece: Piece, columns: Sequence[str], schema) -> Iterator[tuple[int, Table]]:
    """The piece's rows of `columns` as numpy columns, with each batch's position in its file."""
    for offset, batch in piece_batches(piece, columns, schema):
        yield offset, {name: to_numpy(column) for name, column in zip(batch.schema.names, batch.columns)}


def piece_batches(piece: Piece, columns: Sequence[str], schema) -> Iterator[tuple[int, Any]]:
    """The piece's rows of `columns` as pyarrow record batches, with each one's position in its file; a file that
    cannot be read is named."""
    import pyarrow as pa

    offset = piece.offset
    try:
        for batch in piece.fragment.to_batches(columns=list(columns), schema=schema, batch_size=READ_ROWS):
            if batch.num_rows:
                yield offset, batch
                offset += batch.num_rows
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise OnnxfuseError(f"data {piece.path}: cannot read it ({reason(exc, 200)})") from exc


def rows_at(batch: Any, positions: np.ndarray) -> Table:
    """The rows at `positions` of a record batch as `to_numpy` gives its columns: numbers converted, then taken;
    text taken in Arrow first, so only the rows kept become Python strings."""
    import pyarrow as pa

    indices = None
    table: Table = {}
    for name, column in zip(batch.schema.names, batch.columns):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            indices = pa.array(positions) if indices is None else indices
            table[name] = to_numpy(column.take(indices))
        else:
            table[name] = to_numpy(column).take(positions)
    return table


def is_dataset(data: Path | tuple[Path, ...]) -> bool:
    """Data read in pieces: a folder, a glob, a list, or a single CSV / Parquet file."""
    if isinstance(data, tuple):
        return True
    return data.is_dir() or is_glob(data) or data.suffix.lower() in (*PARQUET, *TEXT)


def open_dataset(data: Path | tuple[Path, ...]) -> Dataset:
    """The dataset `--data` names, its files listed and its schema read (no rows are read)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    label, root, files = _files(data)
    formats = {_format(path) for path in files}
    if len(formats) > 1:
        raise OnnxfuseError(f"data {label}: mixes file formats ({', '.join(sorted(formats))}); give one")
    kind = formats.pop()
    names = [_relative(path, root) for path in files]
    try:
        dataset = ds.dataset([str(f) for f in files], format=_file_format(kind), partitioning="hive",
                             partition_base_dir=str(root))  # fmt: skip
        fragments = list(dataset.get_fragments())
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise OnnxfuseError(f"data {label}: cannot read it ({reason(exc, 200)})") from exc
    paths = [str(path) for path in files]
    schemas = [_physical_schema(fragment, path) for fragment, path in zip(fragments, paths)]
    schema = _unified(dataset.schema, schemas, paths, label)
    pieces = _pieces(fragments, names, paths, kind)
    if not pieces or (all(p.rows is not None for p in pieces) and not sum(p.rows for p in pieces)):
        raise OnnxfuseError(f"data {label}: holds no rows")
    return Dataset(label, tuple(files), root, schema, tuple(pieces))


def check_columns(dataset: Dataset, columns: Sequence[str]) -> None:
    """Every needed column is in every file (a hive partition key counts as a column of each)."""
    for name in columns:
        if name not in dataset.schema.names:
            found = columns_found(dataset.columns, _one(dataset))
            raise OnnxfuseError(f"data {dataset.label}: no column '{name}'{found}")
    partition_keys = set(dataset.schema.names) - set(_file_columns(dataset))
    for piece in dataset.pieces:
        have = set(_physical_schema(piece.fragment, piece.path).names) | partition_keys
        missing = [name for name in columns if name not in have]
        if missing:
            raise OnnxfuseError(
                f"data {piece.path}: no column '{missing[0]}', which the other files of {dataset.label} have and "
                "the merge needs; write it in every file"
            )


def _one(dataset: Dataset) -> Path:
    """The file a column hint reads its delimiter from (a single CSV file's one-column reading)."""
    return dataset.files[0]


def _file_columns(dataset: Dataset) -> list[str]:
    return list(_physical_schema(dataset.pieces[0].fragment, dataset.pieces[0].path).names)


def _files(data: Path | tuple[Path, ...]) -> tuple[Path, Path, list[Path]]:
    """(label, root, files): the data's files in order of their names relative to the root."""
    if isinstance(data, tuple):
        label = Path(f"{data[0]} (+{len(data) - 1} more)") if len(data) > 1 else data[0]
        files = [_existing(path) for path in data]
        if len({p.resolve() for p in files}) != len(files):
            raise OnnxfuseError(f"data {label}: lists a file twice")
    elif data.is_dir():
        label = data
        files = [Path(p) for p in glob.glob(str(data / "**" / "*"), recursive=True) if Path(p).is_file()]
        files = [p for p in files if p.suffix.lower() in (*PARQUET, *TEXT) and not _hidden(p.relative_to(data))]
        if not files:
            raise OnnxfuseError(f"data {data}: the folder holds no .parquet, .csv or .tsv file")
    elif is_glob(data):
        label = data
        files = [Path(p) for p in glob.glob(str(data), recursive=True) if Path(p).is_file()]
        if not files:
            raise OnnxfuseError(f"data {data}: no file matches")
    else:
        label, files = data, [_existing(data)]
    root = data if not isinstance(data, tuple) and data.is_dir() else Path(os.path.commonpath(
        [str(p.resolve().parent) for p in files]))  # fmt: skip
    files.sort(key=lambda path: _relative(path, root))
    return label, root, files


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise OnnxfuseError(f"data {path}: no such file")
    return path


def _hidden(relative: Path) -> bool:
    """Files Spark and pyarrow leave beside the data (`_SUCCESS`, `_metadata`, `.crc`) are not data."""
    return any(part.startswith(("_", ".")) and "=" not in part for part in relative.parts)


def is_glob(path: Path) -> bool:
    """A pattern, not a file: a name with `*?[` that no file has."""
    return any(char in str(path) for char in GLOB_CHARS) and not path.exists()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in PARQUET:
        return "parquet"
    if suffix in TEXT:
        return suffix[1:]
    raise OnnxfuseError(f"data {path}: unknown format '{suffix}'; use .csv, .tsv or .parquet (or .npz alone)")


def _file_format(kind: str):
    import pyarrow.csv as pa_csv
    import pyarrow.dataset as ds

    if kind == "parquet":
        return ds.ParquetFileFormat()
    return ds.CsvFileFormat(parse_options=pa_csv.ParseOptions(delimiter="\t" if kind == "tsv" else ","))


def _physical_schema(fragment, name: str):
    import pyarrow as pa

    try:
        schema = fragment.physical_schema
        names = schema.names
    except UnicodeDecodeError as exc:
        raise OnnxfuseError(f"data {name}: a column name is not UTF-8 text; write the header in UTF-8") from exc
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise OnnxfuseError(f"data {name}: cannot read it ({reason(exc, 200)})") from exc
    seen: set[str] = set()
    for column in names:
        if column in seen:
            raise OnnxfuseError(f"data {name}: column '{column}' appears more than once")
        seen.add(column)
    return schema


def _unified(dataset_schema, schemas: list, names: list[str], label: Path):
    """One type per column: the files' own where they agree, float64 where integers and floats mix; files
    that disagree otherwise are refused, naming the two files and the column."""
    import pyarrow as pa

    fields = []
    for field in dataset_schema:
        types = [(schema.field(field.name).type, name) for schema, name in zip(schemas, names)
                 if field.name in schema.names]  # fmt: skip
        chosen = types[0][0] if types else field.type
        for other, name in types[1:]:
            if other == chosen:
                continue
            if _numeric(other) and _numeric(chosen):
                chosen = pa.float64()
            elif not (pa.types.is_null(other) or pa.types.is_null(chosen)):
                raise OnnxfuseError(
                    f"data {name}: column '{field.name}' is {other}, but {types[0][1]} has it as {types[0][0]}; "
                    f"the files of {label} must agree on each column's type"
                )
            elif pa.types.is_null(chosen):
                chosen = other
        fields.append(pa.field(field.name, chosen))
    return pa.schema(fields)


def _numeric(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _pieces(fragments: list, names: list[str], paths: list[str], kind: str) -> list[Piece]:
    """Parquet files by row group (their row counts known from the footer), CSV files whole."""
    pieces: list[Piece] = []
    for fragment, name, path in zip(fragments, names, paths):
        if kind != "parquet":
            pieces.append(Piece(len(pieces), name, path, fragment, 0, None))
            continue
        offset = 0
        for group in fragment.split_by_row_group():
            rows = group.row_groups[0].num_rows
            if rows:
                pieces.append(Piece(len(pieces), name, path, group, offset, rows))
            offset += rows
    return pieces

