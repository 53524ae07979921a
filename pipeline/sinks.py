"""Writing results, error rows and the summary.

The writer is a stage like the others: it takes a postprocessed batch, writes its output rows and its
error rows as Parquet files, and returns one row of counts. The driver sums those rows into
`_SUMMARY.json`, which is written last, so a job is finished exactly when its summary exists.

File names derive from the input shard and the first input row of the batch
(`<shard>-r<row>.parquet`), and a run first clears the previous run's files, so re-running a job
overwrites instead of duplicating.
"""

from __future__ import annotations

import json
import re
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import columns as C
from pipeline.storage import filesystem_for, join, strip_protocol

ERRORS_DIR = "_errors"
SUMMARY = "_SUMMARY.json"
STATS_COLUMNS = ("documents", "rows_written", "rows_errored", "output_rows", "tokens", "padded_slots", "windows",
                 "truncated", "largest_document_tokens")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class WriteResults:
    """Writes one postprocessed batch; returns a one-row table of counts (STATS_COLUMNS)."""

    def __init__(self, output_path: str, shard_names: list[str], storage=None, rows_per_file: int = 100_000):
        self.output_path = output_path.rstrip("/")
        self.shard_names = [_safe(n.rsplit(".", 2)[0] if n.endswith(".gz") else n.rsplit(".", 1)[0]) for n in shard_names]
        self.storage = storage
        self.rows_per_file = rows_per_file
        self.fs = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.fs is None:
            self.fs = filesystem_for(self.output_path, self.storage)
        internal = [n for n in batch.schema.names if n.startswith("_")]
        errors = batch.column(C.ERROR)
        is_error = pc.is_valid(errors)
        good = batch.filter(pc.invert(is_error))
        bad = batch.filter(is_error)
        documents = pc.sum(batch.column("_documents")).as_py() or 0
        errored = bad.num_rows
        if good.num_rows:
            self._write(good.drop_columns(internal), good, "")
        if errored:
            err_table = pa.table(
                {
                    "id": bad.column(C.ID),
                    "error": bad.column(C.ERROR),
                    "shard": pa.array([self.shard_names[s] for s in bad.column(C.SHARD).to_pylist()], type=pa.string()),
                    "row": bad.column(C.ROW),
                }
            )
            self._write(err_table, bad, ERRORS_DIR)
        ok_docs = good.column("_documents")
        tokens = good.column(C.N_TOKENS)
        stats = {
            "documents": documents,
            "rows_written": pc.sum(ok_docs).as_py() or 0,
            "rows_errored": errored,
            "output_rows": good.num_rows,
            "tokens": pc.sum(tokens).as_py() or 0,
            "padded_slots": pc.sum(good.column(C.PADDED_SLOTS)).as_py() or 0,
            "windows": pc.sum(good.column("_n_windows")).as_py() or 0,
            "truncated": pc.sum(pc.cast(good.column(C.TRUNCATED), pa.int64())).as_py() or 0,
            "largest_document_tokens": pc.max(tokens).as_py() or 0 if good.num_rows else 0,
        }
        return pa.table({k: pa.array([int(v)], type=pa.int64()) for k, v in stats.items()})

    def _write(self, table: pa.Table, with_place: pa.Table, subdir: str) -> None:
        shard = with_place.column(C.SHARD)[0].as_py()
        first_row = pc.min(with_place.column(C.ROW)).as_py()
        # A batch may span shards; it is named after its first. The suffix keeps two batches that
        # start at the same place (one per granularity split) from clashing.
        name = f"{self.shard_names[shard]}-r{first_row:010d}-{uuid.uuid4().hex[:6]}.parquet"
        directory = join(self.output_path, subdir) if subdir else self.output_path
        path = strip_protocol(join(directory, name)) if "://" in directory else join(directory, name)
        self.fs.makedirs(strip_protocol(directory) if "://" in directory else directory, exist_ok=True)
        with self.fs.open(path, "wb") as f:
            pq.write_table(table, f, row_group_size=self.rows_per_file)


def clear_output(output_path: str, storage=None) -> int:
    """Remove a previous run's result files, errors and summary under output_path; returns files removed.
    Only files this job writes are touched (Parquet files, `_errors/`, `_SUMMARY.json`)."""
    fs = filesystem_for(output_path, storage)
    root = strip_protocol(output_path).rstrip("/")
    if not fs.exists(root):
        return 0
    removed = 0
    for f in fs.find(root):
        rel = f[len(root):].lstrip("/")
        if rel == SUMMARY or (rel.endswith(".parquet") and ("/" not in rel or rel.startswith(ERRORS_DIR + "/"))):
            fs.rm(f)
            removed += 1
    return removed


def write_summary(output_path: str, summary: dict, storage=None) -> str:
    fs = filesystem_for(output_path, storage)
    root = strip_protocol(output_path).rstrip("/")
    fs.makedirs(root, exist_ok=True)
    path = f"{root}/{SUMMARY}"
    with fs.open(path, "w") as f:
        json.dump(summary, f, indent=2, sort_keys=False)
        f.write("\n")
    return path
