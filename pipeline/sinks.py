"""Writing results, exactly once per input row.

Two steps. While a shard is in flight, the writer stage (`WriteParts`) writes each batch's rows of
that shard as one part under `_staging/<shard>/`, named by the rows it holds, so a task that Ray
retries rewrites its own part instead of adding one. Once every row of the shard has been read and
has arrived, `finalize_shard` reads the parts, keeps each input row once (a row that two parts hold,
after a retry that cut batches differently, is taken from the first), checks that rows 0..n-1 are
all there, and writes the shard's final files in input order, deterministically named, then its
marker. The counts in the marker come from those files, not from what tasks reported.

`ShardCompletion` is the driver's side: it knows when a shard's rows are all in and hands the shard
to `finalize_shard`, several shards to a task (`finalize_shards`) and a few tasks at a time.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import columns as C
from pipeline.markers import COUNTS, Marker
from pipeline.output import ERRORS_DIR, STAGING_DIR, OutputDir, marker_file, pending_file, result_file, root_cause
from pipeline.progress import Snapshot
from pipeline.sources import Shard
from pipeline.stats import empty_stats, shard_stats

# Shards finalised by one task at most: small shards share a task (its start costs more than their files).
FINALIZE_BATCH = 64
# What the writer reports per shard and batch, for progress (the markers are the record), besides the
# marker of a shard it finished itself.
PROGRESS_COLUMNS = ("shard", "documents", "rows_errored", "tokens")


class ShardIncomplete(RuntimeError):
    """The parts of a shard do not hold every one of its rows (yet)."""


class WriteParts:
    """Writer stage: returns one row of counts per shard in the batch. A shard whose every row is in the
    batch (a grouped read's: `_shard_rows`) is finished here and then, its final files and marker
    written at once (`marker`: the marker's JSON; its pending record is left to ShardCompletion, which
    removes those of a run in one request); of any other shard, the batch's rows are written as one
    part, which `finalize_shard` reads back once all its parts are in."""

    # What finalize_shard reads back from the parts besides the head's output columns.
    columns = C.StageColumns(reads=(C.ID, C.SHARD, C.ROW, C.ERROR, C.N_TOKENS, C.PADDED_SLOTS, C.TRUNCATED,
                                    C.N_WINDOWS, C.DOCUMENTS))

    def __init__(self, finalizing: Finalizing, shards: dict[int, Shard]):
        self.finalizing = finalizing
        self.shards = shards

    def __call__(self, batch: pa.Table) -> pa.Table:
        output = self.finalizing.output
        shard_col = batch.column(C.SHARD).to_numpy()
        stats = {name: [] for name in PROGRESS_COLUMNS}
        markers = []
        for shard in np.unique(shard_col):
            part = batch.filter(pa.array(shard_col == shard)).drop_columns([C.SHARD])
            rows = np.unique(part.column(C.ROW).to_numpy())
            whole = _whole(part, rows)
            if C.SHARD_ROWS in part.schema.names:
                part = part.drop_columns([C.SHARD_ROWS])
            marker = None
            if whole:
                marker = write_final(self.finalizing, self.shards[int(shard)], len(rows), part)
            else:
                # Named by the rows it holds: the same batch retried gives the same name.
                digest = hashlib.sha1(rows.astype("<i8").tobytes()).hexdigest()[:12]
                key = self.shards[int(shard)].key
                output.write_table(f"{STAGING_DIR}/{key}/r{rows[0]:012d}-{digest}.parquet", part)
            stats["shard"].append(int(shard))
            stats["documents"].append(int(pc.sum(part.column(C.DOCUMENTS)).as_py() or 0))
            stats["rows_errored"].append(int(pc.sum(pc.is_valid(part.column(C.ERROR))).as_py() or 0))
            stats["tokens"].append(int(pc.sum(part.column(C.N_TOKENS)).as_py() or 0))
            markers.append(json.dumps(marker.to_json()) if marker else None)
        return pa.table({**{k: pa.array(v, type=pa.int64()) for k, v in stats.items()},
                         "marker": pa.array(markers, pa.string())})


def _whole(part: pa.Table, rows: np.ndarray) -> bool:
    """Every row of the shard is in this part: a grouped read said how many it has, and they are here."""
    if C.SHARD_ROWS not in part.schema.names or not part.num_rows:
        return False
    n = part.column(C.SHARD_ROWS)[0].as_py()
    return n is not None and len(rows) == n and rows[0] == 0 and rows[-1] == n - 1


@dataclass(frozen=True)
class Finalizing:
    """What every shard's finalisation in a run needs besides the shard: where and how its files are
    written (`compression`: output.compression, the Parquet codec of result and error files), and what
    each marker says of the run (the fingerprint, its fields, the run id)."""

    output: OutputDir
    rows_per_file: int
    compression: str = "zstd"
    file_metadata: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""
    spec: dict = field(default_factory=dict)
    run_id: str = ""
    limits: dict[str, int] = field(default_factory=dict)  # shard key -> rows read by a limited run


def finalize_shard(finalizing: Finalizing, shard: Shard, rows_read: int) -> Marker:
    """Turn a shard's parts into its final files and marker; returns the marker. Raises
    ShardIncomplete when some of its `rows_read` rows are not in the parts."""
    f, key = finalizing, shard.key
    parts = f.output.list(f"{STAGING_DIR}/{key}", ".parquet")
    table = _rows_once(f.output, key, parts, rows_read)
    marker = write_final(f, shard, rows_read, table)
    f.output.remove([*([pending_file(key)] if marker.files or marker.error_files else []), *parts], known=True)
    f.output.prune(f"{STAGING_DIR}/{key}")
    return marker


def write_final(finalizing: Finalizing, shard: Shard, rows_read: int, table: pa.Table | None) -> Marker:
    """A shard's final files, in input order and deterministically named, then its marker, from `table`
    (every row of the shard once; None for an empty shard); returns the marker. Its pending record
    (written first, so a crash in the middle leaves files a rerun can name) is the caller's to remove.
    Raises ShardIncomplete when the rows are not `rows_read`."""
    f, key = finalizing, shard.key
    file_metadata = {**f.file_metadata, "bert_batch.shard": shard.path}
    files: dict[str, pa.Table] = {}
    error_files: dict[str, pa.Table] = {}
    counts = dict.fromkeys((c for c in COUNTS if c != "rows"), 0)  # an empty shard's
    stats, top_errors = empty_stats(), {}
    if table is not None:  # None: an empty shard, done with no files
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
        files = _chunks(results, key, "", f.rows_per_file)
        error_files = _chunks(errors, key, ERRORS_DIR + "/", f.rows_per_file)
        # Record what is about to be written, so a crash in the middle leaves files a rerun can name.
        f.output.write_json(pending_file(key), {"files": list(files) + list(error_files)})
        for rel, chunk in {**files, **error_files}.items():
            f.output.write_table(rel, chunk, compression=f.compression)
        tokens = good.column(C.N_TOKENS)
        counts = {
            "rows_written": int(pc.sum(good.column(C.DOCUMENTS)).as_py() or 0),
            "rows_errored": bad.num_rows,
            "output_rows": good.num_rows,
            "tokens": int(pc.sum(tokens).as_py() or 0),
            "padded_token_slots": int(pc.sum(good.column(C.PADDED_SLOTS)).as_py() or 0),
            "windows": int(pc.sum(good.column(C.N_WINDOWS)).as_py() or 0),
            "documents_truncated": int(pc.sum(pc.cast(good.column(C.TRUNCATED), pa.int64())).as_py() or 0),
            "largest_document_tokens": int(pc.max(tokens).as_py() or 0) if good.num_rows else 0,
            "duplicate_ids": duplicate_ids(table),
        }
        stats, top_errors = shard_stats(good), top_reasons(bad.column(C.ERROR).to_pylist())
    if counts["rows_written"] + counts["rows_errored"] != rows_read:  # a bug of ours, never silence
        raise ShardIncomplete(f"{key}: {counts['rows_written']} written + {counts['rows_errored']} errored "
                              f"!= {rows_read} read")
    marker = Marker(key=key, shard=shard.path, identity=shard.identity, fingerprint=f.fingerprint, files=list(files),
                    error_files=list(error_files), rows=rows_read, **counts, top_errors=top_errors, **stats,
                    spec=f.spec, run_id=f.run_id, limit=f.limits.get(key), finished_at=time.time())
    f.output.write_json(marker_file(key), marker.to_json())
    return marker


def finalize_shards(finalizing: Finalizing, shards: list[tuple[Shard, int]]) -> list[tuple[str, object]]:
    """`finalize_shard` for several shards in one task (small shards cost a task each otherwise): per
    shard, ("done", Marker), ("incomplete", why) or ("failed", why). Each shard stands alone: one that
    cannot be finished leaves the others' markers written."""
    out = []
    for shard, rows in shards:
        try:
            out.append(("done", finalize_shard(finalizing, shard, rows)))
        except ShardIncomplete as e:
            out.append(("incomplete", f"{shard.name}: {e}"))
        except Exception as e:  # noqa: BLE001 - storage failing while writing: this shard is not done
            out.append(("failed", f"{shard.name}: cannot write its results ({root_cause(e)})"))
    return out


def duplicate_ids(table: pa.Table) -> int:
    """Input rows (documents: per-token output gives a document several rows, all with its `_row`) whose
    id is not null and was the id of an earlier row of the shard, result and error rows together.
    `table` is sorted by `_row`. Ids are compared in the job's id type: 7 and "7" are one string id."""
    rows = table.column(C.ROW).to_numpy()
    first = np.ones(rows.size, dtype=bool)  # each document's first output row
    first[1:] = rows[1:] != rows[:-1]
    ids = table.column(C.ID).filter(pa.array(first))
    return int(ids.length() - ids.null_count - pc.count_distinct(ids, mode="only_valid").as_py())


def _rows_once(output: OutputDir, key: str, parts: list[str], rows_read: int) -> pa.Table | None:
    """Every row of the shard's `parts`, each input row from one part only (None for an empty shard)."""
    seen = np.zeros(rows_read, dtype=bool)
    kept = []
    for rel in parts:
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


class ShardCompletion:
    """The driver's bookkeeping of shards in flight: the rows that arrived as parts, the rows each
    reader found (from the ledger, pipeline/ledger.py), and the finalisations running. Shards whose
    parts hold all their rows are handed to `finalize` (`finalize_shards` as a Ray task), up to
    FINALIZE_BATCH in one task; their markers land in `markers`, and a shard that cannot be finished
    gets its reason in `failed`. At most `max_in_flight` tasks run at once (pipeline.placement). Each
    step costs what is new since the last, not the number of shards."""

    def __init__(self, todo: list, done: dict[str, Marker], finalizing: Finalizing, ledger, finalize,
                 max_in_flight: int):
        self.finalizing = finalizing
        self.markers = dict(done)  # shard key -> marker: the earlier runs' and this run's
        self.failed: dict[str, str] = {}  # shard key -> why it is not done
        self.ledger, self.finalize = ledger, finalize
        self.by_index = {s.index: s for s in todo}
        self.shards_total = len(todo) + len(done)
        self.max_in_flight = max_in_flight
        self.arrived = {s.index: 0 for s in todo}  # documents written as parts, per shard
        self.todo = todo
        self.rows_read: dict[int, int] = {}
        self.waiting: set[int] = set()  # read whole, not yet handed to finalisation (or handed back)
        self.fresh: set[int] = set()  # shards with rows arrived or read since the last step
        self.in_flight: dict = {}  # finalize task -> shard indices
        self.tried_at: dict[int, int] = {}  # shard index -> rows arrived when last handed to finalisation
        self.errored = self.tokens = 0
        self.pending: list[str] = []  # pending records of shards the writer finished, removed together

    def add(self, stats: pa.Table) -> None:
        """One writer task's counts (PROGRESS_COLUMNS), and the markers of the shards it finished."""
        columns = [stats.column(c).to_pylist() for c in (*PROGRESS_COLUMNS, "marker")]
        for shard, docs, errs, toks, marker in zip(*columns):
            self.arrived[shard] += docs
            self.errored += errs
            self.tokens += toks
            if marker is None:
                self.fresh.add(shard)
                continue
            key = self.by_index[shard].key
            self.markers[key] = Marker.from_json(marker_file(key), key, json.loads(marker))
            self.waiting.discard(shard)
            if self.markers[key].files or self.markers[key].error_files:
                self.pending.append(pending_file(key))

    def step(self, final: bool) -> None:
        """Hand complete shards to finalisation; collect the finished ones. `final`: every part is
        written (the stream ended), so try every shard and wait for the finalisations."""
        import ray

        got_rows, got_failed = ray.get(self.ledger.take.remote())
        self.rows_read.update(got_rows)
        self.waiting.update(i for i in got_rows if not self._settled(i))
        self.fresh.update(got_rows)
        for index, reason in got_failed.items():
            self.failed.setdefault(self.by_index[index].key, reason)
            self.waiting.discard(index)
        candidates, self.fresh = (self.waiting if final else self.fresh & self.waiting), set()
        ready = [i for i in sorted(candidates)
                 if final or (self.arrived[i] >= self.rows_read[i] and self.tried_at.get(i) != self.arrived[i])]
        while ready and len(self.in_flight) < self.max_in_flight:
            batch, ready = ready[:FINALIZE_BATCH], ready[FINALIZE_BATCH:]
            for index in batch:
                self.tried_at[index] = self.arrived[index]
                self.waiting.discard(index)
            self.in_flight[self._submit(batch)] = batch
        if self.in_flight:
            done, _ = ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=None if final else 0)
            for ref in done:
                self._collect(ref, final)

    def finish(self) -> None:
        """After the stream: finalise every shard that can be, and name the ones that cannot."""
        self.step(final=True)  # also when no batch came back at all (only empty or unreadable shards)
        while self.in_flight or self.waiting:
            self.step(final=True)
        for s in self.todo:  # a shard whose reader never reported (a bug of ours): not done
            if not self._settled(s.index):
                self.failed[s.key] = f"{s.name}: the reader did not report its row count"
        # Their markers are written: the records go, in one request a thousand (a run that dies first
        # leaves them to the next one's plan, which removes a record that outlived its marker).
        self.finalizing.output.remove(self.pending, known=True)
        self.pending = []

    def drain(self) -> None:
        """Wait for the shards already being finalised, so their markers count for the rerun."""
        for ref in list(self.in_flight):
            self._collect(ref, final=False)

    def snapshot(self) -> Snapshot:
        """For the progress display (read from its thread; plain ints, so no lock)."""
        return Snapshot(rows_done=sum(self.arrived.values()), rows_errored=self.errored, tokens=self.tokens,
                        shards_done=len(self.markers), shards_total=self.shards_total,
                        shards_failed=len(self.failed))

    def _settled(self, index: int) -> bool:
        key = self.by_index[index].key
        return key in self.markers or key in self.failed

    def _submit(self, indices: list[int]):
        return self.finalize.remote(self.finalizing, [(self.by_index[i], self.rows_read[i]) for i in indices])

    def _collect(self, ref, final: bool) -> None:
        import ray

        indices = self.in_flight.pop(ref)
        try:
            outcomes = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the task itself failed (Ray gave up on it): its shards are not done
            outcomes = [("failed", f"{self.by_index[i].name}: cannot write its results ({root_cause(e)})")
                        for i in indices]
        for index, (outcome, value) in zip(indices, outcomes):
            key = self.by_index[index].key
            if outcome == "done":
                self.markers[key] = value
            elif outcome == "failed" or final:
                self.failed[key] = value
            else:  # incomplete: more rows may still come; tried again when they do
                self.waiting.add(index)
