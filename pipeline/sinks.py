"""Writing results, exactly once per input row.

Two steps. While a shard is in flight, the writer stage (`WriteParts`) writes each batch's rows of
that shard as one part under `_staging/<shard>/`, named by the rows it holds, so a task that Ray
retries rewrites its own part instead of adding one. Once every row of the shard has been read and
has arrived, `finalize_shard` reads the parts, keeps each input row once (a row that two parts hold,
after a retry that cut batches differently, is taken from the first), checks that rows 0..n-1 are
all there, and writes the shard's final files in input order, deterministically named, then its
marker. The counts in the marker come from those files, not from what tasks reported.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import columns as C
from pipeline.output import ERRORS_DIR, STAGING_DIR, OutputDir, marker_file, pending_file, result_file
from pipeline.stats import empty_stats, shard_stats

# Per-document statistics the postprocess stage puts on the first output row of each document.
DOCUMENTS = "_documents"
N_WINDOWS = "_n_windows"
# What the writer reports per shard and batch, for progress only (the markers are the record).
PROGRESS_COLUMNS = ("shard", "documents", "rows_errored", "tokens")


class ShardIncomplete(RuntimeError):
    """The parts of a shard do not hold every one of its rows (yet)."""


class WriteParts:
    """Writer stage: one part per shard in the batch; returns one row of counts per shard."""

    def __init__(self, output: OutputDir, shard_keys: dict[int, str]):
        self.output = output
        self.shard_keys = shard_keys

    def __call__(self, batch: pa.Table) -> pa.Table:
        shard_col = batch.column(C.SHARD).to_numpy()
        stats = {name: [] for name in PROGRESS_COLUMNS}
        for shard in np.unique(shard_col):
            part = batch.filter(pa.array(shard_col == shard)).drop_columns([C.SHARD])
            rows = np.unique(part.column(C.ROW).to_numpy())
            # Named by the rows it holds: the same batch retried gives the same name.
            digest = hashlib.sha1(rows.astype("<i8").tobytes()).hexdigest()[:12]
            key = self.shard_keys[int(shard)]
            self.output.write_table(f"{STAGING_DIR}/{key}/r{rows[0]:012d}-{digest}.parquet", part)
            stats["shard"].append(int(shard))
            stats["documents"].append(int(pc.sum(part.column(DOCUMENTS)).as_py() or 0))
            stats["rows_errored"].append(int(pc.sum(pc.is_valid(part.column(C.ERROR))).as_py() or 0))
            stats["tokens"].append(int(pc.sum(part.column(C.N_TOKENS)).as_py() or 0))
        return pa.table({k: pa.array(v, type=pa.int64()) for k, v in stats.items()})


def finalize_shard(output: OutputDir, key: str, rows_read: int, rows_per_file: int, file_metadata: dict[str, str],
                   marker: dict, compression: str = "zstd") -> dict:
    """Turn a shard's parts into its final files and marker; returns the marker. `compression`: the
    Parquet codec of the result and error files (output.compression).
    Raises ShardIncomplete when some of its `rows_read` rows are not in the parts."""
    table = _rows_once(output, key, rows_read)
    if table is None:  # an empty shard: done, with no files
        return _write_marker(output, key, {**marker, "rows": 0, "rows_written": 0, "rows_errored": 0,
                                           "output_rows": 0, "tokens": 0, "padded_token_slots": 0, "windows": 0,
                                           "documents_truncated": 0, "largest_document_tokens": 0,
                                           "duplicate_ids": 0, "top_errors": {}, "files": [], "error_files": [],
                                           **empty_stats()})
    order = pc.sort_indices(table, sort_keys=[(C.ROW, "ascending")])  # stable: tokens stay in order
    table = table.take(order)
    is_error = pc.is_valid(table.column(C.ERROR))
    good = table.filter(pc.invert(is_error))
    bad = table.filter(is_error)
    internal = [n for n in table.schema.names if n.startswith("_")]
    results = good.drop_columns(internal).replace_schema_metadata(file_metadata)
    errors = pa.table({
        "id": bad.column(C.ID),
        "error": bad.column(C.ERROR),
        "shard": pa.array([key] * bad.num_rows, type=pa.string()),
        "row": bad.column(C.ROW),
    }).replace_schema_metadata(file_metadata)
    files = _chunks(results, key, "", rows_per_file)
    error_files = _chunks(errors, key, ERRORS_DIR + "/", rows_per_file)

    # Record what is about to be written, so a crash in the middle leaves files a rerun can name.
    output.write_json(pending_file(key), {"files": list(files) + list(error_files)})
    for rel, chunk in {**files, **error_files}.items():
        output.write_table(rel, chunk, compression=compression)
    tokens = good.column(C.N_TOKENS)
    marker = {
        **marker,
        "rows": rows_read,
        "rows_written": int(pc.sum(good.column(DOCUMENTS)).as_py() or 0),
        "rows_errored": bad.num_rows,
        "output_rows": good.num_rows,
        "tokens": int(pc.sum(tokens).as_py() or 0),
        "padded_token_slots": int(pc.sum(good.column(C.PADDED_SLOTS)).as_py() or 0),
        "windows": int(pc.sum(good.column(N_WINDOWS)).as_py() or 0),
        "documents_truncated": int(pc.sum(pc.cast(good.column(C.TRUNCATED), pa.int64())).as_py() or 0),
        "largest_document_tokens": int(pc.max(tokens).as_py() or 0) if good.num_rows else 0,
        "duplicate_ids": duplicate_ids(table),
        "top_errors": top_reasons(bad.column(C.ERROR).to_pylist()),
        **shard_stats(good),
        "files": list(files),
        "error_files": list(error_files),
    }
    if marker["rows_written"] + marker["rows_errored"] != rows_read:  # a bug of ours, never silence
        raise ShardIncomplete(f"{key}: {marker['rows_written']} written + {marker['rows_errored']} errored "
                              f"!= {rows_read} read")
    return _write_marker(output, key, marker)


def duplicate_ids(table: pa.Table) -> int:
    """Input rows (documents: per-token output gives a document several rows, all with its `_row`) whose
    id is not null and was the id of an earlier row of the shard, result and error rows together.
    `table` is sorted by `_row`. Ids are compared in the job's id type: 7 and "7" are one string id."""
    rows = table.column(C.ROW).to_numpy()
    first = np.ones(rows.size, dtype=bool)  # each document's first output row
    first[1:] = rows[1:] != rows[:-1]
    ids = table.column(C.ID).filter(pa.array(first))
    return int(ids.length() - ids.null_count - pc.count_distinct(ids, mode="only_valid").as_py())


def _write_marker(output: OutputDir, key: str, marker: dict) -> dict:
    marker = {**marker, "key": key, "finished_at": time.time()}
    output.write_json(marker_file(key), marker)
    output.remove([pending_file(key), *output.list(f"{STAGING_DIR}/{key}", ".parquet")])
    output.prune(f"{STAGING_DIR}/{key}")
    return marker


def _rows_once(output: OutputDir, key: str, rows_read: int) -> pa.Table | None:
    """Every row of the shard's parts, each input row from one part only (None for an empty shard)."""
    seen = np.zeros(rows_read, dtype=bool)
    kept = []
    for rel in output.list(f"{STAGING_DIR}/{key}", ".parquet"):
        part = output.read_table(rel)
        rows = part.column(C.ROW).to_numpy()
        if rows.size and rows.max() >= rows_read:
            raise ShardIncomplete(f"{key}: a part holds row {rows.max()}, but the shard has {rows_read} rows")
        fresh = ~seen[rows]  # a document's several token rows share one row index and stay together
        kept.append(part.filter(pa.array(fresh)))
        seen[rows] = True
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise ShardIncomplete(f"{key}: {missing.size} of {rows_read} rows not written yet (first: row {missing[0]})")
    return pa.concat_tables(kept, promote_options="default") if kept else None


def _chunks(table: pa.Table, key: str, prefix: str, rows_per_file: int) -> dict[str, pa.Table]:
    return {prefix + result_file(key, i): table.slice(start, rows_per_file)
            for i, start in enumerate(range(0, table.num_rows, rows_per_file))}


_LINE_PREFIX = re.compile(r"^line \d+: ")


def top_reasons(errors: list[str], n: int = 5) -> dict[str, int]:
    """The most common error reasons, with the line number that makes each unique taken off."""
    return dict(Counter(_LINE_PREFIX.sub("", e) for e in errors).most_common(n))
