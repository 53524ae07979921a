"""Reading input shards into rows: Parquet and JSONL (.gz too), local or `s3://`.

Shards are listed on the driver (so `validate` can say the input is unreachable before anything
runs), then each shard is read by one task. Reading per shard keeps each row's place in its shard,
which gives stable ids when the input has none, and lets a bad JSON line become one error row
instead of failing the whole file (pyarrow's JSON reader fails a file on one mistyped value).
Rows that cannot be processed (null id, null / empty / non-string text) are marked here with a
reason and travel on as error rows; nothing is dropped.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import columns as C
from pipeline.storage import filesystem_for, protocol_of, with_protocol

READ_BATCH_ROWS = 4096


class InputError(ValueError):
    """The input cannot be read at all; the message names the path and what to do."""


@dataclass(frozen=True)
class Shard:
    index: int
    path: str  # with protocol for remote files
    format: str  # "parquet" | "jsonl"

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


def infer_format(path: str) -> str | None:
    p = path.lower()
    if p.endswith(".parquet") or p.endswith(".pq"):
        return "parquet"
    for ext in (".jsonl", ".json", ".ndjson"):
        if p.endswith(ext) or p.endswith(ext + ".gz"):
            return "jsonl"
    return None


def list_shards(input_spec, storage=None) -> list[Shard]:
    path = input_spec.path
    fs = filesystem_for(path, storage)
    bare = path.split("://", 1)[1] if "://" in path else path
    try:
        if any(ch in bare for ch in "*?["):
            found = sorted(fs.glob(bare))
        elif fs.isdir(bare):
            found = sorted(f for f in fs.find(bare) if not _hidden(f[len(bare.rstrip('/')) :]))
        elif fs.exists(bare):
            found = [bare]
        else:
            found = []
    except (OSError, PermissionError) as e:
        raise InputError(f"input.path: cannot list {path} ({e})") from None
    except Exception as e:  # noqa: BLE001 - botocore errors are not OSErrors
        raise InputError(f"input.path: cannot list {path} ({type(e).__name__}: {e})") from None
    shards = []
    for f in found:
        fmt = input_spec.format or infer_format(f)
        if fmt is None:
            if input_spec.format is None and fs.isdir(bare):
                continue  # a directory may hold other files (a README, _SUCCESS); skip what is not data
            raise InputError(f"input.format: cannot tell the format of {f}; set input.format to parquet or jsonl")
        shards.append(Shard(len(shards), with_protocol(f, path), fmt))
    if not shards:
        raise InputError(f"input.path: no input files match {path}")
    return shards


def _hidden(rel: str) -> bool:
    return any(part.startswith(("_", ".")) for part in rel.split("/") if part)


def row_problem(row: dict, text_columns: list[str]) -> str | None:
    """Why a row cannot be processed, or None."""
    if row.get(C.ID) is None:
        return "id is null"
    for col in text_columns:
        value = row.get(col)
        if value is None:
            return f"{col} is null"
        if not isinstance(value, str):
            return f"{col} is not a string (got {type(value).__name__})"
        if not value.strip():
            return f"{col} is empty"
    return None


class ShardReader:
    """Reads one shard into batches of rows with the internal column names (plain Python; no Ray).

    `columns` maps internal names (pipeline.columns) to the user's column names; the id column is
    separate so that a missing one can be made up from the shard and row index.
    """

    def __init__(self, columns: dict[str, str], id_column: str, storage=None, optional: tuple[str, ...] = (),
                 id_type: pa.DataType | None = None):
        self.columns = columns
        self.id_column = id_column
        self.storage = storage
        self.optional = set(optional)
        # One id type for the whole job (Ray cannot concatenate blocks whose id types differ);
        # None keeps each batch's own type (in-process use).
        self.id_type = id_type

    def read(self, shard: Shard) -> Iterator[pa.Table]:
        fs = filesystem_for(shard.path, self.storage)
        bare = shard.path.split("://", 1)[1] if "://" in shard.path else shard.path
        if shard.format == "parquet":
            yield from self._read_parquet(fs, bare, shard)
        else:
            yield from self._read_jsonl(fs, bare, shard)

    # -- parquet ---------------------------------------------------------------------------------
    def _read_parquet(self, fs, bare: str, shard: Shard) -> Iterator[pa.Table]:
        with fs.open(bare, "rb") as f:
            try:
                pf = pq.ParquetFile(f)
            except Exception as e:  # noqa: BLE001
                yield self._whole_shard_error(shard, f"not a readable Parquet file ({e})")
                return
            names = set(pf.schema_arrow.names)
            missing = [user for key, user in self.columns.items() if user not in names and key not in self.optional]
            has_id = self.id_column in names
            wanted = sorted({u for u in self.columns.values() if u in names} | ({self.id_column} if has_id else set()))
            row0 = 0
            for batch in pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=wanted or None):
                present = batch.to_pydict()
                n = batch.num_rows
                rows = [
                    {key: present[user][i] if user in present else None for key, user in self.columns.items()}
                    for i in range(n)
                ]
                if missing:
                    # A file without the text column: every row becomes an error row, none is lost.
                    reason = f"column {missing[0]!r} not in {shard.name} (it has: {', '.join(sorted(names))})"
                    for r in rows:
                        r[C.ERROR] = reason
                ids = batch.column(self.id_column) if has_id else False
                yield self._to_table(rows, shard, row0, ids)
                row0 += n

    # -- jsonl -----------------------------------------------------------------------------------
    def _read_jsonl(self, fs, bare: str, shard: Shard) -> Iterator[pa.Table]:
        compression = "gzip" if bare.endswith(".gz") else None
        rows: list[dict] = []
        row0 = 0
        has_id: bool | None = None
        with fs.open(bare, "rb", compression=compression) as raw:
            for line_no, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8", errors="replace")):
                if not line.strip():
                    continue  # blank lines are not rows
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
                    row = {key: obj.get(user) for key, user in self.columns.items()}
                    if has_id is None:
                        has_id = self.id_column in obj
                    row[C.ID] = obj.get(self.id_column)
                except ValueError as e:
                    row = {key: None for key in self.columns}
                    row[C.ERROR] = f"line {line_no + 1}: invalid JSON ({e})"
                rows.append(row)
                if len(rows) >= READ_BATCH_ROWS:
                    yield self._to_table(rows, shard, row0, None if has_id else False)
                    row0 += len(rows)
                    rows = []
        if rows or row0 == 0:
            yield self._to_table(rows, shard, row0, None if has_id else False)

    # -- common ----------------------------------------------------------------------------------
    def _to_table(self, rows: list[dict], shard: Shard, row0: int, ids) -> pa.Table:
        """Rows use internal keys. `ids`: an Arrow array of the input's ids (kept with their type),
        None to take `row[C.ID]`, or False when the input has no id column (stable ids are made)."""
        text_cols = [k for k in self.columns if k not in self.optional]
        if ids is False:
            ids = pa.array([f"{shard.name}:{row0 + i}" for i in range(len(rows))], type=pa.string())
        elif ids is None:
            ids = _id_array([r.get(C.ID) for r in rows])
        errors: list[str | None] = [None] * len(rows)
        if self.id_type is not None and ids.type != self.id_type:
            ids, errors = _cast_ids(ids, self.id_type)
        id_values = ids.to_pylist()
        values = {key: [] for key in self.columns}
        for i, (r, ident) in enumerate(zip(rows, id_values)):
            prepared = {**r, C.ID: ident}
            error = r.get(C.ERROR) or errors[i] or row_problem(prepared, text_cols)
            for col in self.optional:
                v = r.get(col)
                if error is None and v is not None and not isinstance(v, str):
                    error = f"{col} is not a string (got {type(v).__name__})"
            errors[i] = error
            for key in self.columns:
                v = r.get(key)
                # Non-string values only occur in error rows; keep the column a string column.
                values[key].append(v if isinstance(v, str) or v is None else str(v))
        data = {C.ID: ids}
        for key in self.columns:
            data[key] = pa.array(values[key], type=pa.string())
        data[C.SHARD] = pa.array([shard.index] * len(rows), type=pa.int32())
        data[C.ROW] = pa.array(range(row0, row0 + len(rows)), type=pa.int64())
        data[C.ERROR] = pa.array(errors, type=pa.string())
        return pa.table(data)

    def _whole_shard_error(self, shard: Shard, reason: str) -> pa.Table:
        # One error row stands for a file that cannot be opened at all (its row count is unknown).
        row = {key: None for key in self.columns}
        row[C.ERROR] = f"{shard.name}: {reason}"
        return self._to_table([row], shard, 0, pa.array([f"{shard.name}:*"], type=pa.string()))


def _cast_ids(ids: pa.Array, id_type: pa.DataType) -> tuple[pa.Array, list[str | None]]:
    """Ids cast to the job's id type; an id that does not fit becomes null with a reason."""
    try:
        return ids.cast(id_type), [None] * len(ids)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    values, errors = [], []
    for v in ids.to_pylist():
        try:
            values.append(None if v is None else pa.scalar(v).cast(id_type).as_py())
            errors.append(None)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            values.append(None)
            errors.append(f"id {v!r} is not of the job's id type ({id_type}, taken from the first shard)")
    return pa.array(values, type=id_type), errors


def probe_id_type(shards: list[Shard], id_column: str, storage=None) -> pa.DataType:
    """The job's id type, from the first shard: its Parquet column type, or int64 / string from the
    first JSONL object that has the id; string when the input has no id column (made-up ids)."""
    shard = shards[0]
    fs = filesystem_for(shard.path, storage)
    bare = shard.path.split("://", 1)[1] if "://" in shard.path else shard.path
    try:
        if shard.format == "parquet":
            with fs.open(bare, "rb") as f:
                schema = pq.ParquetFile(f).schema_arrow
            return schema.field(id_column).type if id_column in schema.names else pa.string()
        with fs.open(bare, "rb", compression="gzip" if bare.endswith(".gz") else None) as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    if id_column not in obj:
                        return pa.string()
                    value = obj[id_column]
                    if value is None:
                        continue
                    return pa.int64() if isinstance(value, int) and not isinstance(value, bool) else pa.string()
    except Exception:  # noqa: BLE001 - an unreadable first shard is reported by the reader
        pass
    return pa.string()


def _id_array(ids: list) -> pa.Array:
    """Keep the id's input type. Mixed types in one batch (JSONL allows it) become strings."""
    kinds = {type(i) for i in ids if i is not None}
    if kinds <= {int} or kinds <= {bool, int} and bool not in kinds:
        return pa.array(ids, type=pa.int64())
    if kinds <= {str}:
        return pa.array(ids, type=pa.string())
    try:
        return pa.array(ids)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if i is None else str(i) for i in ids], type=pa.string())


def count_rows(shard: Shard, storage=None) -> int:
    """Rows a shard holds, as the reader will see them: Parquet footer counts; JSONL non-blank lines.
    An unreadable file counts as the one error row the reader makes for it."""
    fs = filesystem_for(shard.path, storage)
    bare = shard.path.split("://", 1)[1] if "://" in shard.path else shard.path
    try:
        if shard.format == "parquet":
            with fs.open(bare, "rb") as f:
                return pq.ParquetFile(f).metadata.num_rows
        n = 0
        with fs.open(bare, "rb", compression="gzip" if bare.endswith(".gz") else None) as f:
            for line in f:
                if line.strip():
                    n += 1
        return n
    except Exception:  # noqa: BLE001 - mirrors ShardReader._whole_shard_error
        return 1
