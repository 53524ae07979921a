"""The job's flow, and nothing else: checks -> the output's lease -> the resume plan -> (nothing to do:
done, without Ray) -> the head checked while Ray starts -> the pools placed -> read -> tokenize ->
predict -> postprocess -> parts -> each shard's final files and marker as soon as all its rows are in
-> the summary from the markers.

The rooms it walks through, each deciding its own things once: pipeline/preflight.py (every check
before work), pipeline/markers.py (what is done, what to redo, what to retire), pipeline/placement.py
(where the work runs and how big each pool is), pipeline/compose.py (the stages as Ray Data
operators), pipeline/sinks.py (parts, final files and shard completion), pipeline/summary.py (the
run's record). This module carries one run's state on a `Run`.
"""

from __future__ import annotations

import collections
import os
import posixpath
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline import columns as C
from pipeline import placement, preflight
from pipeline.compose import READ_CPUS, WRITE_CPUS, Stage, check_chain, column_sum, compose
from pipeline.errors import JobFailed, UserError
from pipeline.lease import Lease
from pipeline.ledger import ReadLedger
from pipeline.markers import (
    Request, ResumePlan, VanishedShards, fingerprint, keep_keys, plan_resume, read_markers, write_index,
)
from pipeline.meter import StageMeter
from pipeline.models import weights_bytes
from pipeline.output import (
    STAGING_DIR, SUCCESS, SUMMARY, OutputDir, StorageFailed, marker_file, root_cause, storage_failed,
)
from pipeline.progress import Display, ReadTotal, RowTotal
from pipeline.raycompat import in_blocks_of
from pipeline.sinks import Finalizing, ShardCompletion, WriteParts, finalize_shards
from pipeline.sources import (
    InputError, Piece, ShardReader, ShardUnreadable, count_rows, group_pieces, plan_pieces, probe_id_type,
)
from pipeline.sources import reader_columns
from pipeline.storage import protocol_of
from pipeline.summary import Progress, build_summary, error_verdict, totals, write_complete, write_progress

PROGRESS_SECONDS = 5.0
# Small shards share a read task up to about a batch's worth of input: rows_per_batch x this many bytes
# (a short document's: jobs/data/sample.jsonl's average is 350). A laptop run's 200-row sample (70 kB)
# then still streams in its 64-row batches, and its progress moves.
GROUP_BYTES_PER_ROW = 512


@dataclass(frozen=True)
class Asked:
    """What the command asked for besides the spec."""

    fresh: bool = False  # redo every shard
    limit: int | None = None  # only the first N rows (a dry run)
    retire: bool = False  # remove the results of shards no longer in the input


@dataclass
class Run:
    """One run's state, from the plan to the summary."""

    spec: object
    output: OutputDir
    lease: Lease
    shards: list  # the shards this run covers (keys kept from the markers; a --limit run's first ones)
    plan: ResumePlan
    fields: dict  # the settings that change results (the fingerprint's fields)
    record: dict  # what every record of this run says about it (run id, model, head, paths)
    display: Display
    started: float
    limit: int | None = None
    limits: dict[str, int] = field(default_factory=dict)  # shard key -> rows of a --limit run's cut shard
    # The listed versions of the done shards' markers, and how many markers were read from their files
    # (not from the index): pipeline.markers.write_index.
    marker_versions: dict[str, str] = field(default_factory=dict)
    markers_fetched: int = 0

    @property
    def nothing_to_do(self) -> bool:
        return not (self.plan.todo or self.plan.retired)


def run(spec, progress=None, fresh: bool = False, limit: int | None = None, verbose: bool = False,
        retire: bool = False) -> dict:
    """Run the job on the shards not done yet (all of them with `fresh`); returns the summary (also
    written to output.path/_SUMMARY.json). Raises JobFailed when it did not finish, a UserError
    (pipeline.errors) for a spec, input, output or model problem found before any work.

    `progress`: None shows a live progress display on stderr; a callable gets the job's messages
    instead (and no display). `limit`: run only the first N rows of the input (a dry run; see
    `_first_rows`). `verbose`: let Ray and the workers print their own logs. `retire`: remove the results
    of shards no longer in the input instead of refusing to run (pipeline.markers.plan_resume)."""
    display = Display(sys.stderr) if progress is None else Display(message=progress)
    started = time.time()
    checked = preflight.check_input(spec)
    output = checked.output
    made = _missing_folders(output)
    lease = _take_lease(output)
    refused = False
    try:
        job = _planned(spec, checked, lease, display, started, Asked(fresh, limit, retire))
        if job.nothing_to_do:
            return _nothing_to_do(job)
        try:
            outcome = _work(job, verbose)
        except JobFailed as e:  # Ray did not start: recorded like any run that stopped short
            return _finished(job, stopped=str(e))
        return _finished(job, *outcome)
    except UserError:
        refused = True
        raise
    except JobFailed:
        raise
    except Exception as e:  # noqa: BLE001 - storage failing between the stages: one sentence, and resumable
        raise JobFailed(f"the job stopped: {root_cause(e)}; finished shards are kept, rerun the same command to "
                        "resume") from e
    finally:
        lease.release()
        if refused:
            _remove_if_empty(made)  # exit 2 leaves no folder that was not there before


def _planned(spec, checked, lease, display, started, asked: Asked) -> Run:
    """The resume plan over the input as it is now, with the output's own files checked first."""
    output = checked.output
    recorded = read_markers(output)
    shards = keep_keys(checked.shards, recorded.markers)
    listed = {s.key for s in shards}
    limits: dict[str, int] = {}
    limit = asked.limit
    if limit is not None:
        chosen, limits = _first_rows(shards, limit, spec.storage)
        if len(chosen) == len(shards) and not limits:
            limit = None  # the limit holds the whole input: a full run
        shards = chosen
    fields = {**spec.result_fields(), "model.revision": checked.model["revision"]}
    try:
        plan = plan_resume(output, shards, fields, recorded, Request(asked.fresh, asked.retire, limits), listed)
    except VanishedShards:
        output.remove([SUCCESS])  # the output no longer is the input's results
        raise
    record = {
        "run_id": lease.run_id, "fingerprint": fingerprint(fields), "model": spec.model.path,
        "model_revision": checked.model["revision"], "head": spec.model.head,
        "granularity": spec.output.granularity, "input": spec.input.path, "output": spec.output.path,
    }
    versions = {marker_file(k): recorded.versions[marker_file(k)] for k in plan.done
                if marker_file(k) in recorded.versions}
    job = Run(spec, output, lease, shards, plan, fields, record, display, started, limit, limits, versions,
              recorded.fetched)
    _clear(job, asked.fresh)
    return job


def _clear(job: Run, fresh: bool) -> None:
    """Remove what the plan names (files of shards to redo or retire, leftovers of dead runs), and say so."""
    plan = job.plan
    removed = job.output.remove(plan.remove)
    for folder in sorted({posixpath.dirname(rel) for rel in plan.remove if rel.startswith(STAGING_DIR + "/")}):
        job.output.prune(folder)
    if plan.retired:
        job.display.message(f"retired {len(plan.retired)} shard(s) no longer in the input: "
                            f"{', '.join(sorted(plan.retired)[:5])}{' ...' if len(plan.retired) > 5 else ''}")
    if fresh:
        job.display.message(f"--fresh: removed {removed} file(s) this job wrote in {job.output.path}")
    elif plan.done or removed:
        job.display.message(f"{len(plan.done)} of {len(job.shards)} shard(s) done by an earlier run; "
                            f"removed {removed} file(s) of unfinished, retired or interrupted work")


def _nothing_to_do(job: Run) -> dict:
    """Every shard is done and none retired: no Ray, no model. The last run's summary and report stay
    as they are (read back and returned) when they are there; otherwise they are made from the markers."""
    done = [job.plan.done[s.key] for s in job.shards]
    job.display.message(f"nothing to do: all {len(done)} shard(s) are done ({job.output.path})")
    try:
        kept = job.output.read_json(SUMMARY) if job.limit is None and job.output.exists(SUCCESS) else None
    except StorageFailed:  # not JSON: made again below
        kept = None
    if (isinstance(kept, dict) and kept.get("status") == "complete" and kept.get("shards") == len(done)
            and kept.get("rows_read") == totals(done)["rows_read"]):
        # The files stay the last real run's; what this run did is said in what it prints.
        if job.markers_fetched:
            _index_markers(job, dict(job.plan.done))
        return {**kept, "shards_resumed": len(done), "shards_run": 0, "shards_retired": [],
                "checked_at": round(time.time(), 3)}
    return _finished(job)


def _work(job: Run, verbose: bool) -> tuple:
    """Check the head, start Ray, place the pools, run the stages: `_process`'s outcome.

    The head is checked before Ray starts, not beside it: a checkpoint that fails its check (the
    commonest mistake after a path) is told in the seconds the check takes, with no Ray to start and
    stop, at the cost of the ~1.2 s the overlap saved a run on 2 cores."""
    job.display.message("loading the tokenizer and checking the checkpoint")
    checked = preflight.check_head(job.spec)
    job.display.message("starting Ray")
    cluster = placement.start(job.spec, verbose)
    placed = placement.place(job.spec, cluster, weights_bytes(checked.model_dir), _input_bytes(job.plan.todo))
    return _process(job, placed)


def _process(job: Run, placed: placement.Placement) -> tuple[ShardCompletion, dict, str | None]:
    """Run the stages over the shards to do; each shard's marker lands as soon as it is complete.
    Returns the completion's bookkeeping, what the stages measured, and why the run stopped short (one
    sentence), if it did."""
    import ray
    from ray.data import DataContext
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    spec, todo = placed.spec, job.plan.todo
    # Our own progress display and summary replace Ray Data's bars and execution-plan logs.
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False

    split = int(spec.input.split_mb * 1e6) if spec.input.split_mb else None
    pieces = plan_pieces(todo, spec.storage, split, frozenset(job.limits)) if split else [Piece(s.index, 0) for s in todo]
    # Carried input columns (output.columns) may have another type in each shard, and one block holds
    # one schema: then every shard goes alone.
    group_bytes = 0 if spec.output.columns else spec.batching.rows_per_batch * GROUP_BYTES_PER_ROW
    streamed, grouped = group_pieces(pieces, {s.index: s for s in todo}, group_bytes)
    # The job's bookkeeping lives with the driver: Ray would place an actor that needs no resources on
    # any node, and one lost with a worker node would fail a run that Ray otherwise recovers.
    with_driver = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    ledger = ray.remote(num_cpus=0, scheduling_strategy=with_driver)(ReadLedger).remote(
        dict(collections.Counter(p.shard for p in pieces)))
    meter = ray.remote(num_cpus=0, scheduling_strategy=with_driver)(StageMeter).remote(started_at=job.started)
    columns, optional = reader_columns(spec)
    reader = ShardReader(columns, spec.input.id_column, spec.storage, optional,
                         probe_id_type(job.shards, spec.input.id_column, spec.storage))
    read = ReadShards(reader, {s.index: s for s in todo}, pieces, job.limits, ledger, meter)
    finalizing = _finalizing(job)
    write = WritePartsMetered(WriteParts(finalizing, {s.index: s for s in todo}), meter)
    cpu_nodes = spec.resources.cpu_stage_resources
    reading = Stage("read", read, READ_CPUS, resources=cpu_nodes, batch_size=1, batch_format="numpy")
    stages = [*placed.stages, Stage("write", write, WRITE_CPUS, resources=cpu_nodes)]
    check_chain([reading, *stages])
    ds = _dataset(spec, (streamed, grouped), reading, stages, meter)

    completion = ShardCompletion(todo, job.plan.done, finalizing, ledger, ray.remote(num_cpus=0)(finalize_shards),
                                 placed.finalize_in_flight)
    job.display.message(placed.pool_line)
    total = (RowTotal(todo, spec.storage, job.limits) if protocol_of(spec.input.path) == "file"
             else ReadTotal(completion, len(todo)))
    job.display.start(completion.snapshot, total, job.started)
    stopped = None
    try:
        _stream(job, ds, completion)
    except JobFailed as e:
        stopped = str(e)
    except Exception as e:  # noqa: BLE001 - one sentence, the cause kept for --debug
        if storage_failed(e):
            # Shards being finalised cannot land either; their errors, which Ray would print as
            # "unhandled" when it drops them, are this one.
            os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
        else:  # shards being finalised could still land
            completion.drain()
        stopped = (f"the job failed while running: {root_cause(e)}; finished shards are kept, rerun the same "
                   "command to resume")
    finally:
        job.display.stop()
    measured = {**ray.get(meter.snapshot.remote()), "model_pool": placed.model_pool}
    # Actors live while a handle does, and Ray Data keeps the stages' (and their handles) past the run: a
    # process that runs the job again and again (apply in a notebook, the tests) would keep two idle
    # actors of some 150 MiB each per run.
    for actor in (ledger, meter):
        ray.kill(actor)
    return completion, measured, stopped


def _dataset(spec, tasks: tuple[list, list], reading: Stage, stages: list[Stage], meter):
    """One loop over the stage descriptions: read -> the head's stages (as pipeline.apply) -> write, over
    the read tasks (streamed, grouped) of pipeline.sources.group_pieces."""
    import ray

    streamed, grouped = tasks
    branches = []
    if streamed or not grouped:  # (no piece at all: one empty task, so the flow is the same)
        ds = ray.data.from_items([{"tasks": t, "whole": False} for t in streamed or [[]]],
                                 override_num_blocks=max(1, len(streamed)))
        # A shard would leave its reader as one block (Ray Data's 128 MiB output buffer) and go from stage
        # to stage whole; cut into blocks of a batch, it streams (the model starts on the first batch; the
        # display and the markers move during a one-file run). The cut runs in the read tasks.
        branches.append(in_blocks_of(compose(ds, [reading], spec, meter), spec.batching.rows_per_batch, READ_CPUS,
                                     spec.resources.cpu_stage_resources))
    if grouped:
        # A group of small shards leaves its read task as one block of whole shards, which the writer
        # finishes at once; a cut would split them between batches.
        ds = ray.data.from_items([{"tasks": t, "whole": True} for t in grouped], override_num_blocks=len(grouped))
        branches.append(compose(ds, [reading], spec, meter))
    return compose(branches[0].union(*branches[1:]) if len(branches) > 1 else branches[0], stages, spec, meter)


def _stream(job: Run, ds, completion: ShardCompletion) -> None:
    """The driver's loop: the writer's counts in, complete shards out to finalisation."""
    last_record = 0.0
    for stats in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        completion.add(stats)
        if job.lease.lost:
            raise JobFailed(job.lease.lost)
        completion.step(final=False)
        if time.time() - last_record > PROGRESS_SECONDS:
            last_record = time.time()
            write_progress(job.output.impatient(), Progress("running", job.record, len(job.shards),
                                                            list(completion.markers), completion.failed))
    if job.lease.lost:
        raise JobFailed(job.lease.lost)
    completion.finish()


def _finalizing(job: Run) -> Finalizing:
    spec, record = job.spec, job.record
    return Finalizing(
        output=job.output, rows_per_file=spec.output.rows_per_file, compression=spec.output.compression,
        file_metadata={"bert_batch.model": spec.model.path, "bert_batch.model_revision": str(record["model_revision"]),
                       "bert_batch.head": spec.model.head, "bert_batch.fingerprint": record["fingerprint"]},
        fingerprint=record["fingerprint"], spec=job.fields, run_id=record["run_id"], limits=job.limits)


def _finished(job: Run, completion: ShardCompletion | None = None, measured: dict | None = None,
              stopped: str | None = None) -> dict:
    """The run's record from the markers: `_SUMMARY.json`, `_REPORT.html` and `_SUCCESS` when every shard is
    done and the errors are within bounds; otherwise `_PROGRESS.json` and JobFailed carrying it.
    `stopped`: why the run itself stopped short, if it did."""
    markers = completion.markers if completion else dict(job.plan.done)
    failed = completion.failed if completion else {}
    if completion is not None or job.markers_fetched:
        _index_markers(job, markers)
    plan, output, shards = job.plan, job.output, job.shards
    t = totals([markers[s.key] for s in shards if s.key in markers])
    run_info = {**job.record, "shards": len(shards), "shards_resumed": len(plan.done),
                "shards_run": len(markers) - len(plan.done), "shards_retired": sorted(plan.retired)}
    error = stopped
    if error is None and failed:
        first = next(iter(failed.values()))
        error = (f"{len(failed)} of {len(shards)} shard(s) did not finish ({first}); the other shards are done: "
                 "rerun the same command to retry the failed ones")
    status = "incomplete" if error else "complete"
    if error is None:
        error = error_verdict(t, job.spec.output.max_error_fraction)
        status = "failed" if error else status
    if error:
        progress = Progress(status, run_info, len(shards), list(markers), failed, error, t)
        if write_progress(output.impatient(), progress):
            error += f" (see {output.path}/_PROGRESS.json)"
        raise JobFailed(error, summary=progress.record())
    tokens_this_run = sum(m.tokens for k, m in markers.items() if k not in plan.done)
    if job.limit is not None:
        run_info["limit"] = job.limit
    summary = build_summary(t, run=run_info, wall=time.time() - job.started, tokens_this_run=tokens_this_run,
                            measured=measured or {}, limited=job.limit is not None)
    if job.limit is not None and job.nothing_to_do:
        return summary  # a dry run over rows already done: the output's own records stay as they are
    write_complete(output, summary)
    job.display.message(f"done: results in {output.path}, report {output.path}/_REPORT.html")
    return summary


def _index_markers(job: Run, markers: dict) -> None:
    """The marker index for the next run (not by a --limit run, which leaves the output's records).
    Best effort, through the impatient client: it is a cache, and with the store down a run that
    stops must say why at once, not after a minute of retries for it; the next run then reads the
    markers themselves."""
    if job.limit is None:
        try:
            write_index(job.output.impatient(), markers, job.marker_versions)
        except StorageFailed:
            pass


def _first_rows(shards, limit: int, storage) -> tuple[list, dict[str, int]]:
    """The shards that hold the first `limit` rows of the input, in order, and the rows to read of the
    last one when it is cut. A cut shard's marker says so, and a later run without the same limit
    redoes it."""
    chosen, limits, left = [], {}, limit
    for shard in shards:
        if left <= 0:
            break
        try:
            n = count_rows(shard, storage)
        except ShardUnreadable:
            n = left  # the reader will report it, and the run will not be complete
        chosen.append(shard)
        if n > left:  # the shard is cut: its marker will say so
            limits[shard.key] = left
        left -= n
    return chosen, limits


def _input_bytes(shards) -> int | None:
    """Bytes of the shards to run, None when a listing did not say."""
    sizes = [s.identity.get("size") for s in shards]
    return None if any(not isinstance(n, int) for n in sizes) else sum(sizes)


def _take_lease(output: OutputDir) -> Lease:
    lease = Lease(output)
    try:
        return lease.acquire()
    except (StorageFailed, OSError) as e:
        raise InputError(f"output.path: {e}") from None


def _missing_folders(output: OutputDir) -> list[str]:
    """The local output folder and those above it that do not exist yet, deepest first."""
    missing, path = [], output.root
    while output.local and not os.path.exists(path) and path != os.path.dirname(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _remove_if_empty(folders: list[str]) -> None:
    for path in folders:
        try:
            os.rmdir(path)
        except OSError:  # not empty (or gone): it holds something now, leave it
            return


class ReadShards:
    """The read stage (Ray tasks): each item is a read task's pieces (pipeline.sources.group_pieces) and
    whether they are a group. A streamed piece's rows leave in tables as they are read; a group's shards
    (one or more) are read whole and leave as one table. Capped at a --limit run's rows; the rows of each piece (or why its shard
    could not be read) reported to the ledger in one call per task."""

    columns = C.READ

    def __init__(self, reader: ShardReader, shards: dict, pieces: list[Piece], limits: dict[str, int], ledger, meter):
        self.reader, self.shards, self.pieces, self.limits = reader, shards, pieces, limits
        self.ledger, self.meter = ledger, meter

    def __call__(self, batch: dict):
        import ray

        for task, whole in zip(batch["tasks"], batch["whole"]):
            reads, unreadable, kept = [], [], []
            for index in task:
                piece = self.pieces[int(index)]
                shard = self.shards[piece.shard]
                rows, tables = 0, []
                try:
                    for table in self._tables(shard, piece):
                        rows += table.num_rows
                        if whole:
                            tables.append(table)
                        else:
                            yield table
                except ShardUnreadable as e:
                    unreadable.append((shard.index, str(e)))
                else:
                    reads.append((shard.index, rows, piece.part))
                    # A shard that failed part-way leaves none of its rows; an empty one, no table (its
                    # ids' type is the fallback's, which need not be the job's). Each row says how many
                    # the shard has: all of them travel together, and the writer finishes the shard.
                    kept += [t.append_column(C.SHARD_ROWS, pa.array(np.full(t.num_rows, rows), pa.int64()))
                             for t in tables if t.num_rows]
            if kept:
                yield pa.concat_tables(kept, promote_options="default")
            ray.get(self.ledger.report.remote(reads, unreadable))

    def _tables(self, shard, piece):
        """The piece's rows in tables as the reader gives them, capped at the shard's --limit, each timed
        for the meter."""
        cap = self.limits.get(shard.key)  # a limited shard is one piece
        rows = 0
        tables = self.reader.read(shard, piece)
        try:
            while cap is None or rows < cap:
                t0 = time.perf_counter()
                table = next(tables, None)
                if table is None:
                    break
                if cap is not None and rows + table.num_rows > cap:
                    table = table.slice(0, cap - rows)
                self.meter.record.remote("read", time.time(), time.perf_counter() - t0, table.num_rows)
                rows += table.num_rows
                yield table
        finally:
            tables.close()


class WritePartsMetered:
    """The write stage (Ray tasks): WriteParts, timed for the StageMeter."""

    columns = WriteParts.columns

    def __init__(self, writer: WriteParts, meter):
        self.writer, self.meter = writer, meter

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        stats = self.writer(batch)
        self.meter.record.remote("write", time.time(), time.perf_counter() - t0, column_sum(stats, "documents"))
        return stats
