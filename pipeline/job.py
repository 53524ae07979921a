"""The job: spec -> the shards still to do -> read -> tokenize -> predict -> postprocess -> parts ->
each shard's final files and marker as soon as all its rows are in -> summary from the markers.

The one module that knows Ray; every stage it composes is a plain callable (pipeline/stages.py,
pipeline/predict.py, pipeline/sinks.py). The input shard is the unit of work and of completion:
see pipeline/output.py for the files, pipeline/markers.py for resume, pipeline/lease.py for the
one-run-at-a-time lease.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import posixpath
import re
import sys
import time

import pyarrow as pa

from pipeline.compose import Stage, column_sum, compose, in_blocks_of, model_stages
from pipeline.heads import head_entry
from pipeline.lease import Lease
from pipeline.ledger import ReadLedger
from pipeline.markers import (
    FingerprintMismatch, MarkerInvalid, VanishedShards, fingerprint, keep_keys, plan_resume, read_markers,
)
from pipeline.meter import StageMeter
from pipeline.models import weights_bytes
from pipeline.output import STAGING_DIR, SUCCESS, OutputDir, StorageFailed
from pipeline.progress import Display, RowTotal, Snapshot
from pipeline.sinks import ShardIncomplete, WriteParts, finalize_shard
from pipeline.sources import (
    InputError, Piece, ShardReader, ShardUnreadable, count_rows, list_shards, plan_pieces, probe_id_type,
    reader_columns, shard_columns,
)
from pipeline.spec import SpecError, pool_bounds
from pipeline.storage import normal_path, protocol_of, strip_protocol
from pipeline.summary import build_summary, error_verdict, totals, write_complete, write_progress

log = logging.getLogger(__name__)

# CPU reservation of the reader and writer tasks (the other stages': pipeline/apply.py).
READ_CPUS = 0.25
PROGRESS_SECONDS = 5.0
FINALIZE_IN_FLIGHT = 2  # shards being turned into final files at once, at least


def finalize_in_flight(spec) -> int:
    """Shards finalised at once: as many as the postprocess pool may have actors (at least
    FINALIZE_IN_FLIGHT). A finalisation reads a shard's parts back and writes them once more, about a
    writer's work; a fixed number would cap a large cluster at that many writers' rate."""
    return max(FINALIZE_IN_FLIGHT, pool_bounds(spec.resources.postprocess_actors)[1])


class JobFailed(RuntimeError):
    pass


def validate(spec, check_writable: bool = True) -> dict:
    """Everything `run` checks before it starts: paths apart, input reachable with the configured
    columns, output writable, model loadable with the head's weights. Returns facts for the CLI to
    print. Raises SpecError / InputError / ModelError."""
    shards = _check_input(spec)
    if check_writable:
        _check_writable(OutputDir(spec.output.path, spec.storage))
    return {"shards": shards, **_check_head(spec)}


def _check_input(spec) -> list:
    """The input's shards, after the quick checks: paths apart, input reachable, columns present."""
    _check_paths_apart(spec.input.path, spec.output.path)
    shards = list_shards(spec.input, spec.storage)
    _check_columns(spec, shards)
    return shards


def _check_head(spec) -> dict:
    """The slow checks (seconds: transformers, the tokenizer, the checkpoint's weights): the head loads
    and the model has its weights."""
    from pipeline.models import check_model, model_identity
    from pipeline.stages import load_head

    head = load_head(spec)
    if spec.output.granularity not in head.granularities:
        raise SpecError(f"output.granularity: {spec.model.head} supports {', '.join(head.granularities)}")
    model_dir = head.ctx.extra["model_dir"]
    check_model(model_dir, head, spec.model)
    return {"head": head, "model_dir": model_dir, "model": model_identity(spec.model.path, spec.storage)}


def _checked_while_ray_starts(spec, verbose: bool, take_lease: bool = False) -> dict:
    """`validate(spec)`, and with `take_lease` the output's lease taken (facts["lease"]; the caller
    releases it); on a laptop run Ray starts meanwhile. The quick checks come first (input, columns,
    output writable), so that a wrong path or column is told at once; then threads load the tokenizer
    and check the checkpoint, and take the lease (half a second of it is a wait: pipeline/lease.py),
    while Ray's processes boot (about 2.5 and 4 s on 2 cores, one after the other before). ray.init
    stays in the main thread: started from another, its first task could not reach the GCS. When the
    model check fails, Ray is already up; the CLI stops it as it exits."""
    from concurrent.futures import ThreadPoolExecutor, wait

    shards = _check_input(spec)
    output = OutputDir(spec.output.path, spec.storage)
    _check_writable(output)  # one sentence naming output.path
    lease = Lease(output) if take_lease else None
    with ThreadPoolExecutor(2, thread_name_prefix="check") as pool:
        head = pool.submit(_check_head, spec)
        held = pool.submit(_acquire, lease) if lease is not None else None
        try:
            laptop = _is_laptop_run(spec)  # decided once: Ray is up after this
            if laptop:
                _init_ray(spec, _laptop_cpus_needed(spec), verbose)
            facts = {"shards": shards, "laptop": laptop, **head.result()}
            if held is not None:
                held.result()
        except BaseException:
            if held is not None:
                wait([held])
                lease.release()  # releases only a lease that is this run's
            raise
    return {**facts, "lease": lease} if lease is not None else facts


def _acquire(lease: Lease) -> None:
    try:
        lease.acquire()
    except (StorageFailed, OSError) as e:
        raise InputError(f"output.path: {e}") from None


def _check_paths_apart(input_path: str, output_path: str) -> None:
    """Refuses an output that is, lies inside or contains the input, compared as the paths they name
    (pipeline.storage.normal_path: `file://`, `~`, `..`, `//` and symlinks resolved), the input up to
    its first wildcard."""
    protocol, bare = protocol_of(input_path), strip_protocol(input_path)
    parts = bare.split("/")
    wild = next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts))
    fixed = "/".join(parts[:wild]) or ("/" if bare.startswith("/") else ".")
    fixed = normal_path(fixed if protocol == "file" else f"{protocol}://{fixed}").rstrip("/")
    out = normal_path(output_path).rstrip("/")
    if out == fixed or out.startswith(fixed + "/") or fixed.startswith(out + "/") or not out:
        raise SpecError(f"output.path: {output_path} is, lies inside or contains input.path {input_path}; "
                        "write the results somewhere else")


def _check_columns(spec, shards) -> None:
    """The configured columns exist in the first readable, non-empty shard (of the first three; an
    unreadable one fails later, alone)."""
    from pipeline.sources import is_carry_key

    columns, optional = reader_columns(spec)
    for shard in shards[:3]:
        try:
            # JSONL: the keys of the first objects, as a carried column may be missing from some rows.
            have = shard_columns(shard, spec.storage, objects=100)
        except ShardUnreadable:
            continue
        if not have:  # an empty shard tells nothing
            continue
        attr_of = head_entry(spec.model.head).input_columns
        for key, user in columns.items():
            if user not in have and key not in optional:
                field = "output.columns" if is_carry_key(key) else f"input.{attr_of.get(key, 'text_column')}"
                raise InputError(f"{field}: column {user!r} not in {shard.name} (it has: {', '.join(have)})")
        return


def _check_writable(output: OutputDir) -> None:
    """Locally: the folder, or the nearest one above it that exists, is a folder where a file can be
    made (a hidden probe file is made and removed there; no folder is made). os.access alone says yes
    to root on a read-only mount or /proc. Object storage: a probe object is written and removed."""
    try:
        if output.local:
            parent = output.root
            while not os.path.exists(parent):
                parent = os.path.dirname(parent)
            if not os.path.isdir(parent):
                raise InputError(f"output.path: cannot write to {output.path} ({parent} is a file, not a folder); "
                                 "choose another output.path")
            probe = os.path.join(parent, f".write-probe-{os.getpid()}-{os.urandom(4).hex()}")
            try:
                os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except OSError as e:
                raise InputError(f"output.path: cannot write to {output.path} ({parent} is not a writable folder: "
                                 f"{e.strerror or e}); choose another output.path or make it writable") from None
            os.remove(probe)
            return
        probe = f".write-probe-{os.getpid()}"
        output.write_bytes(probe, b"")
        output.remove([probe])
    except StorageFailed as e:
        raise InputError(f"output.path: {e}") from None
    except OSError as e:
        raise InputError(f"output.path: cannot write to {output.path} ({e})") from None


def _init_ray(spec, cpus_needed: float, verbose: bool = False) -> bool:
    """Attach to the cluster this process runs in, or start a local Ray. True when local.
    Quiet unless `verbose`: workers' own output stays in Ray's logs (/tmp/ray/session_latest/logs), and
    Ray Data's start-up notices are off; the job's errors carry their causes anyway. JobFailed (one
    sentence: what failed, what to try) when Ray does not start or its cluster cannot be reached."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    if ray.is_initialized():
        return _is_local()
    import socket

    def cause(e: Exception) -> str:  # Ray's reason in a few words: its first sentence, at most 200 characters
        if isinstance(e, OSError) and e.strerror:
            return f"{e.strerror}: {e.filename}"[:200] if e.filename else e.strerror
        return (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0].rstrip(".")[:200]

    address = _cluster_address(spec)
    if address:
        source = ("resources.ray_address" if spec.resources.ray_address else
                  "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "the address `ray start` left in /tmp/ray")
        fix = ("start that cluster, or correct or unset resources.ray_address / RAY_ADDRESS (unset, the job starts "
               "its own Ray here); `ray stop --force` clears an address left by a cluster that is gone")
        # Ray retries an address where nothing listens for many minutes: one TCP connection first.
        host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
        if host and port.isdigit():
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
            except OSError as e:
                raise JobFailed(f"Ray did not start: nothing answers at the Ray cluster address {address} (from "
                                f"{source}: {e.strerror or type(e).__name__}); {fix}") from None
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=verbose)
        except Exception as e:  # noqa: BLE001 - Ray raises RuntimeError, ConnectionError, ValueError, ...
            raise JobFailed(f"Ray did not start: cannot join the Ray cluster at {address} (from {source}: "
                            f"{cause(e)}); {fix}") from e
        return False
    # Local Ray: logical CPUs are a scheduling budget, not cores; torch threads are set per actor.
    cpus = max(os.cpu_count() or 1, int(cpus_needed + 1.5))
    try:
        ray.init(num_cpus=cpus, logging_level=logging.WARNING, include_dashboard=False, log_to_driver=verbose)
    except Exception as e:  # noqa: BLE001 - "The current node timed out during startup", a full disk, ...
        try:
            ray.shutdown()  # whatever of it did start
        except Exception:  # noqa: BLE001, S110
            pass
        raise JobFailed(
            f"Ray did not start on this machine ({cause(e)}); run `ray stop --force` to end Ray processes an "
            "earlier run left behind, check that /tmp/ray (or RAY_TMPDIR) has free disk space, or set RAY_ADDRESS "
            "to a running Ray cluster, then rerun"
        ) from e
    return True


# A model actor on CPU holds about 1 GiB besides its weights (Python, torch and transformers, a batch's
# activations), and its weights up to twice over (a half-precision checkpoint loads as float32).
ACTOR_BASE_BYTES = 1 << 30
# Input a laptop run's model actor must have to pay back its start (torch and transformers imported,
# the model loaded: about 4 CPU s): jobs/laptop.yaml's 70 kB ran in 20 s with one actor of two threads
# and in 23-26 s with two of one; 3,000 documents (890 kB) ran faster with two.
INPUT_BYTES_PER_ACTOR = 256_000


def laptop_model_actors(cores: int, model_bytes: int, memory_bytes: int | None, input_bytes: int | None = None) -> int:
    """Model actors for a laptop run: one per core, each with one torch thread, as many as half the
    memory holds and one per INPUT_BYTES_PER_ACTOR of input (at least one; `None`: not known, no
    limit). On 2 cores two single-threaded actors ran the model about 7% faster than one actor with
    two threads, whose threads wait for each other at every operation and both stall whenever one of
    Ray's own processes takes a core."""
    actors = max(1, cores)
    if memory_bytes:
        actors = min(actors, int(memory_bytes // 2 // (ACTOR_BASE_BYTES + 2 * model_bytes)))
    if input_bytes is not None:
        actors = min(actors, input_bytes // INPUT_BYTES_PER_ACTOR)
    return max(1, actors)


def _input_bytes(shards) -> int | None:
    """Bytes of the shards to run, None when a listing did not say."""
    sizes = [s.identity.get("size") for s in shards]
    return None if any(not isinstance(n, int) for n in sizes) else sum(sizes)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # a platform without these names
        return None


def _with_model_cpus(spec, model_bytes: int = 0, laptop: bool | None = None, input_bytes: int | None = None):
    """The spec with resources.cpus_per_actor filled in, and on a laptop run (`_is_laptop_run`, or
    `laptop` as decided before this job started its Ray) that leaves `model_actors` unset, the pool's
    size too (`laptop_model_actors`). When this job starts its own local Ray and runs on CPU, the
    machine's cores are shared out among the model actors (the model is the heavy stage, and one torch
    thread would leave the other cores idle); otherwise 1 CPU (a cluster's nodes, or a Ray someone
    else sized)."""
    import ray

    res = spec.resources
    if res.cpus_per_actor is not None:
        return spec
    laptop = _is_laptop_run(spec) if laptop is None else laptop
    starts_local_ray = laptop or not (ray.is_initialized() or _cluster_address(spec))
    update = {"cpus_per_actor": 1.0}
    if starts_local_ray and not res.gpus_per_actor:
        cores = os.cpu_count() or 1
        actors = res.model_actors
        if "model_actors" not in res.model_fields_set and laptop:
            actors = laptop_model_actors(cores, model_bytes, _physical_memory(), input_bytes)
        update = {"model_actors": actors, "cpus_per_actor": float(max(1, cores // pool_bounds(actors)[1]))}
    return spec.model_copy(update={"resources": res.model_copy(update=update)})


def _is_laptop_run(spec) -> bool:
    """The job will start its own local Ray on CPU and the spec sizes no pool and no model CPUs: the
    stages then run fused in the model actors (compose.ModelStages), which get every core."""
    import ray

    res = spec.resources
    sized = {"cpus_per_actor", "tokenize_actors", "postprocess_actors"} & res.model_fields_set
    return not (sized or res.gpus_per_actor or ray.is_initialized() or _cluster_address(spec))


def _cpus_needed(stages) -> float:
    """Ray CPUs the model stages' pools at their largest and a read task take."""
    return READ_CPUS + sum(s.num_cpus * pool_bounds(s.actors)[1] for s in stages)


def _laptop_cpus_needed(spec) -> float:
    """`_cpus_needed` of a laptop run before the checkpoint's size is known: at most one CPU per core
    in all when the spec leaves model_actors to the job (`laptop_model_actors` shares the cores out),
    else what the spec's pool takes."""
    if "model_actors" not in spec.resources.model_fields_set:
        return READ_CPUS + (os.cpu_count() or 1)
    return _cpus_needed(model_stages(_with_model_cpus(spec, laptop=True), fused=True))


def _cluster_address(spec) -> str | None:
    """The Ray cluster to attach to: the spec's, RAY_ADDRESS, or the one `ray start` ran on this node."""
    address = spec.resources.ray_address or os.environ.get("RAY_ADDRESS")
    if not address:
        # A node where `ray start` ran (a cluster head) records its address; `ray stop` clears it.
        from ray._private.utils import read_ray_address

        address = read_ray_address()
    return address


def _is_local() -> bool:
    import ray

    return len(ray.nodes()) == 1


def run(spec, progress=None, fresh: bool = False, limit: int | None = None, verbose: bool = False,
        retire: bool = False) -> dict:
    """Run the job on the shards not done yet (all of them with `fresh`); returns the summary (also
    written to output.path/_SUMMARY.json). Raises JobFailed when it did not finish.

    `progress`: None shows a live progress display on stderr; a callable gets the job's messages
    instead (and no display). `limit`: run only the first N rows of the input (a dry run; see
    `_first_rows`). `verbose`: let Ray and the workers print their own logs. `retire`: remove the results
    of shards no longer in the input instead of refusing to run (pipeline.markers.plan_resume)."""
    display = Display(sys.stderr) if progress is None else Display(message=progress)
    started = time.time()
    facts = _checked_while_ray_starts(spec, verbose, take_lease=True)
    lease = facts["lease"]
    output = lease.output
    try:
        recorded = read_markers(output)
        shards = keep_keys(facts["shards"], recorded.markers)
        listed = {s.key for s in shards}
        limits: dict[str, int] = {}
        if limit is not None:
            chosen, limits = _first_rows(shards, limit, spec.storage)
            if len(chosen) == len(shards) and not limits:
                limit = None  # the limit holds the whole input: a full run
            shards = chosen
        fields = {**spec.result_fields(), "model.revision": facts["model"]["revision"]}
        try:
            plan = plan_resume(output, shards, fields, recorded, listed=listed, fresh=fresh, limits=limits,
                               retire=retire)
        except VanishedShards:
            output.remove([SUCCESS])  # the output no longer is the input's results
            raise
        return _run_leased(spec, shards, limit, limits, facts, output, fields, lease, plan, display, started,
                           verbose)
    except (JobFailed, SpecError, InputError, FingerprintMismatch, MarkerInvalid, VanishedShards):
        raise
    except Exception as e:  # noqa: BLE001 - storage failing between the stages: one sentence, and resumable
        raise JobFailed(f"the job stopped: {_root_cause(e)}; finished shards are kept, rerun the same command to "
                        "resume") from e
    finally:
        lease.release()


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


def _run_leased(spec, shards, limit, limits, facts, output, fields, lease, plan, display, started, verbose) -> dict:
    """`run` once the lease is held and the resume plan made: the work, then the summary or a progress
    record."""
    removed = output.remove(plan.remove)
    for folder in sorted({posixpath.dirname(rel) for rel in plan.remove if rel.startswith(STAGING_DIR + "/")}):
        output.prune(folder)
    if plan.retired:
        display.message(f"retired {len(plan.retired)} shard(s) no longer in the input: "
                        f"{', '.join(sorted(plan.retired)[:5])}{' ...' if len(plan.retired) > 5 else ''}")
    if plan.done or removed:
        display.message(f"{len(plan.done)} of {len(shards)} shard(s) done by an earlier run; "
                        f"removed {removed} file(s) of unfinished, retired or interrupted work")
    record = {
        "run_id": lease.run_id, "fingerprint": fingerprint(fields), "model": spec.model.path,
        "model_revision": facts["model"]["revision"], "head": spec.model.head,
        "granularity": spec.output.granularity, "input": spec.input.path, "output": spec.output.path,
    }
    markers = dict(plan.done)
    failed: dict[str, str] = {}
    error: str | None = None
    measured: dict = {}
    if plan.todo:
        try:
            measured = _process(spec, shards, plan.todo, limits, output, fields, record, lease, markers, failed,
                                display, started, verbose, facts)
        except JobFailed as e:
            error = str(e)
    t = totals([markers[s.key] for s in shards if s.key in markers])
    run_info = {**record, "shards": len(shards), "shards_resumed": len(plan.done),
                "shards_run": len(markers) - len(plan.done), "shards_retired": sorted(plan.retired)}
    if error is None and failed:
        first = next(iter(failed.values()))
        error = (f"{len(failed)} of {len(shards)} shard(s) did not finish ({first}); the other shards are done: "
                 "rerun the same command to retry the failed ones")
    if error is None:
        error = error_verdict(t, spec.output.max_error_fraction)
        status = "failed" if error else "complete"
    else:
        status = "incomplete"
    if error:
        if write_progress(output.impatient(), status, run=run_info, shards_total=len(shards), done=list(markers),
                          failed=failed, reason=error, t=t):
            error += f" (see {output.path}/_PROGRESS.json)"
        raise JobFailed(error)
    tokens_this_run = sum(m["tokens"] for k, m in markers.items() if k not in plan.done)
    if limit is not None:
        run_info["limit"] = limit
    summary = build_summary(t, run=run_info, wall=time.time() - started, tokens_this_run=tokens_this_run,
                            measured=measured, limited=limit is not None)
    if limit is not None and not (plan.todo or plan.retired):
        return summary  # a dry run over rows already done: the output's own records stay as they are
    write_complete(output, summary)
    return summary


def _read_shards(batch: dict, *, shards, pieces, columns, optional, id_column, id_type, storage, ledger, meter,
                 limits):
    import ray

    reader = ShardReader(columns, id_column, storage, optional, id_type)
    for index in batch["piece"]:
        piece = pieces[int(index)]
        shard = shards[piece.shard]
        cap = limits.get(shard.key)  # a limited shard is one piece
        rows = 0
        try:
            tables = reader.read(shard, piece)
            while cap is None or rows < cap:
                t0 = time.perf_counter()
                table = next(tables, None)
                if table is None:
                    break
                if cap is not None and rows + table.num_rows > cap:
                    table = table.slice(0, cap - rows)
                meter.record.remote("read", time.time(), time.perf_counter() - t0, table.num_rows)
                rows += table.num_rows
                yield table
            tables.close()
        except ShardUnreadable as e:
            ray.get(ledger.unreadable.remote(shard.index, str(e)))
        else:
            ray.get(ledger.read.remote(shard.index, rows, piece.part))


def _write_parts(batch: pa.Table, *, writer: WriteParts, meter) -> pa.Table:
    t0 = time.perf_counter()
    stats = writer(batch)
    meter.record.remote("write", time.time(), time.perf_counter() - t0, column_sum(stats, "documents"))
    return stats


def _ask_for_gpus(res, local: bool) -> None:
    """A local Ray must have the GPUs the model pool starts with; a cluster's autoscaler is asked for
    them (GPU workers may be scaled to zero), and the pool waits. An autoscaling pool asks for more
    itself as work queues up."""
    import ray

    first = pool_bounds(res.model_actors)[0]
    if local:
        have = ray.cluster_resources().get("GPU", 0)
        if res.gpus_per_actor * first > have:
            raise SpecError(f"resources.gpus_per_actor: {first} actor(s) x {res.gpus_per_actor} GPU need "
                            f"{res.gpus_per_actor * first:g} GPUs, this machine has {have:g}")
        return
    from ray.autoscaler.sdk import request_resources

    bundle = {"GPU": res.gpus_per_actor, "CPU": res.cpus_per_actor, **res.model_resources}
    request_resources(bundles=[bundle] * first)


def _process(spec, shards, todo, limits, output, fields, record, lease, markers, failed, display, started,
             verbose, facts: dict) -> dict:
    """Run the stages over the shards in `todo`; each shard's marker lands in `markers` as soon as it
    is complete, each unreadable shard in `failed`. Returns what the stages measured (StageMeter).
    Raises JobFailed when the run cannot go on."""
    import ray
    from ray.data import DataContext

    laptop = facts["laptop"]  # decided before this job started its Ray
    spec = _with_model_cpus(spec, weights_bytes(facts["model_dir"]), laptop, _input_bytes(todo))
    res = spec.resources
    stages = model_stages(spec, fused=laptop)
    local = _init_ray(spec, _cpus_needed(stages), verbose)
    if res.gpus_per_actor:
        _ask_for_gpus(res, local)

    # Our own progress display and summary replace Ray Data's bars and execution-plan logs.
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False

    split = int(spec.input.split_mb * 1e6) if spec.input.split_mb else None
    pieces = plan_pieces(todo, spec.storage, split, frozenset(limits)) if split else [Piece(s.index, 0) for s in todo]
    per_shard = collections.Counter(p.shard for p in pieces)
    # The job's bookkeeping lives with the driver: Ray would place an actor that needs no resources on
    # any node, and one lost with a worker node would fail a run that Ray otherwise recovers.
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    with_driver = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    ledger = ray.remote(num_cpus=0, scheduling_strategy=with_driver)(ReadLedger).remote(dict(per_shard))
    meter = ray.remote(num_cpus=0, scheduling_strategy=with_driver)(StageMeter).remote(started_at=time.time())
    columns, optional = reader_columns(spec)
    read = functools.partial(_read_shards, shards={s.index: s for s in shards}, pieces=pieces, columns=columns,
                             optional=optional,
                             id_column=spec.input.id_column, storage=spec.storage, ledger=ledger, meter=meter,
                             limits=limits, id_type=probe_id_type(shards, spec.input.id_column, spec.storage))
    write = functools.partial(_write_parts, writer=WriteParts(output, {s.index: s.key for s in todo}), meter=meter)
    cpu_nodes = res.cpu_stage_resources
    # One loop over the stage descriptions: read -> the head's stages (as pipeline.apply) -> write.
    ds = ray.data.from_items([{"piece": i} for i in range(len(pieces))], override_num_blocks=len(pieces))
    ds = compose(ds, [Stage("read", read, READ_CPUS, resources=cpu_nodes, batch_size=1, batch_format="numpy")],
                 spec, meter)
    # A shard would leave its reader as one block (Ray Data's 128 MiB output buffer) and go from stage
    # to stage whole; cut into blocks of a batch, it streams (the model starts on the first batch; the
    # display and the markers move during a one-file run). The cut runs in the read tasks.
    ds = in_blocks_of(ds, spec.batching.rows_per_batch, READ_CPUS, cpu_nodes)
    ds = compose(ds, [*stages, Stage("write", write, READ_CPUS, resources=cpu_nodes)], spec, meter)

    completion = ShardCompletion(spec, shards, todo, output, fields, record, markers, failed,
                                 ledger=ledger, finalize=ray.remote(num_cpus=0)(finalize_shard), limits=limits)
    display.message(_pool_line(res, laptop))
    display.start(completion.snapshot, RowTotal(todo, spec.storage, limits), started)
    last_record = 0.0
    try:
        for stats in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            now = time.time()
            completion.add(stats)
            if lease.lost:
                raise JobFailed(lease.lost)
            completion.step(final=False)
            if now - last_record > PROGRESS_SECONDS:
                last_record = now
                write_progress(output.impatient(), "running", run=record, shards_total=len(shards),
                               done=list(markers), failed=failed)
        if lease.lost:
            raise JobFailed(lease.lost)
        completion.finish()
    except JobFailed:
        raise
    except Exception as e:  # noqa: BLE001 - one sentence, the cause kept for --debug
        if _storage_failed(e):
            # Shards being finalised cannot land either; their errors, which Ray would print as
            # "unhandled" when it drops them, are this one.
            os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
        else:  # shards being finalised could still land
            completion.drain()
        raise JobFailed(f"the job failed while running: {_root_cause(e)}; finished shards are kept, rerun the "
                        "same command to resume") from e
    finally:
        display.stop()
    # What ran, for the summary: the pool as sized here (the spec's, or the laptop defaults).
    pool = {"actors": res.model_actors if isinstance(res.model_actors, int) else res.model_actors.model_dump(),
            "cpus_per_actor": res.cpus_per_actor, "gpus_per_actor": res.gpus_per_actor, "fused": laptop}
    return {**ray.get(meter.snapshot.remote()), "model_pool": pool}


def _pool_line(res, fused: bool) -> str:
    """What the run starts, for the display: 'model: 2 actor(s), 1 CPU each; each tokenizes ...'."""
    low, high = pool_bounds(res.model_actors)
    each = f"{res.gpus_per_actor:g} GPU and {res.cpus_per_actor:g} CPU" if res.gpus_per_actor else \
        f"{res.cpus_per_actor:g} CPU"
    stages = "each tokenizes and postprocesses its own batches" if fused else "tokenize and postprocess in pools of their own"
    return f"model: {low if low == high else f'{low} to {high}'} actor(s), {each} each; {stages}"


class ShardCompletion:
    """The driver's bookkeeping of shards in flight: the rows that arrived as parts, the rows each
    reader found (from the ledger), and the finalisations running. A shard whose parts hold all its
    rows is handed to `finalize_shard` (a Ray task); its marker lands in `markers`, and a shard that
    cannot be finished gets its reason in `failed`."""

    def __init__(self, spec, shards, todo, output, fields, record, markers, failed, *, ledger, finalize,
                 limits=None):
        self.spec, self.output, self.fields, self.record = spec, output, fields, record
        self.limits = limits or {}  # shard key -> rows read by a limited run
        self.markers, self.failed = markers, failed
        self.ledger, self.finalize = ledger, finalize
        self.by_index = {s.index: s for s in shards}
        self.max_in_flight = finalize_in_flight(spec)
        self.arrived = {s.index: 0 for s in todo}  # documents written as parts, per shard
        self.todo = todo
        self.rows_read: dict[int, int] = {}
        self.in_flight: dict = {}  # finalize task -> shard index
        self.tried_at: dict[int, int] = {}  # shard index -> rows arrived when last handed to finalisation
        self.errored = self.tokens = 0
        self.file_metadata = {
            "bert_batch.model": spec.model.path, "bert_batch.model_revision": str(record["model_revision"]),
            "bert_batch.head": spec.model.head, "bert_batch.fingerprint": record["fingerprint"],
        }

    def add(self, stats: pa.Table) -> None:
        """One writer task's counts (pipeline.sinks.PROGRESS_COLUMNS)."""
        for shard, docs, errs, toks in zip(*(stats.column(c).to_pylist() for c in stats.column_names)):
            self.arrived[shard] += docs
            self.errored += errs
            self.tokens += toks

    def step(self, final: bool) -> None:
        """Hand complete shards to finalisation; collect the finished ones. `final`: every part is
        written (the stream ended), so try every shard and wait for the finalisations."""
        import ray

        got_rows, got_failed = ray.get(self.ledger.snapshot.remote())
        self.rows_read.update(got_rows)
        for index, reason in got_failed.items():
            self.failed.setdefault(self.by_index[index].key, reason)
        for index, n in self.rows_read.items():
            if len(self.in_flight) >= self.max_in_flight:
                break
            if self._settled(index) or index in self.in_flight.values():
                continue
            if not final and (self.arrived[index] < n or self.tried_at.get(index) == self.arrived[index]):
                continue  # not all rows yet, or tried with these rows already: wait for more
            self.tried_at[index] = self.arrived[index]
            self.in_flight[self._submit(self.by_index[index], n)] = index
        if self.in_flight:
            ready, _ = ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=None if final else 0)
            for ref in ready:
                self._collect(ref, final)

    def finish(self) -> None:
        """After the stream: finalise every shard that can be, and name the ones that cannot."""
        self.step(final=True)  # also when no batch came back at all (only empty or unreadable shards)
        while self.in_flight or any(not self._settled(i) for i in self.rows_read):
            self.step(final=True)
        for s in self.todo:  # a shard whose reader never reported (a bug of ours): not done
            if not self._settled(s.index):
                self.failed[s.key] = f"{s.name}: the reader did not report its row count"

    def drain(self) -> None:
        """Wait for the shards already being finalised, so their markers count for the rerun."""
        for ref in list(self.in_flight):
            self._collect(ref, final=False)

    def snapshot(self) -> Snapshot:
        """For the progress display (read from its thread; plain ints, so no lock)."""
        return Snapshot(rows_done=sum(self.arrived.values()), rows_errored=self.errored, tokens=self.tokens,
                        shards_done=len(self.markers), shards_total=len(self.by_index),
                        shards_failed=len(self.failed))

    def _settled(self, index: int) -> bool:
        key = self.by_index[index].key
        return key in self.markers or key in self.failed

    def _submit(self, shard, rows: int):
        marker = {"shard": shard.path, "identity": shard.identity, "fingerprint": self.record["fingerprint"],
                  "spec": self.fields, "run_id": self.record["run_id"]}
        if shard.key in self.limits:
            marker["limit"] = self.limits[shard.key]
        return self.finalize.remote(self.output, shard.key, rows, self.spec.output.rows_per_file,
                                    {**self.file_metadata, "bert_batch.shard": shard.path}, marker,
                                    compression=self.spec.output.compression)

    def _collect(self, ref, final: bool) -> None:
        import ray

        shard = self.by_index[self.in_flight.pop(ref)]
        try:
            self.markers[shard.key] = ray.get(ref)
        except ShardIncomplete as e:
            if final:  # otherwise more rows may still come
                self.failed[shard.key] = f"{shard.name}: {e}"
        except Exception as e:  # noqa: BLE001 - storage failing while writing: the shard is not done
            self.failed[shard.key] = f"{shard.name}: cannot write its results ({_root_cause(e)})"


# The line of a worker's traceback that names an exception: `module.Class: message`.
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*): (.+)$")
_STORAGE_FAILED = "pipeline.output.StorageFailed"


def _worker_exception_lines(e: BaseException) -> list[tuple[str, str]]:
    """(class, message) of each exception named in a RayTaskError's text. Ray re-raises a worker's
    error as a RayTaskError whose text holds the worker's traceback; the wrapped exception objects lose
    their own chain on the way, so that text is where the cause is."""
    from ray.exceptions import RayTaskError

    seen: BaseException | None = e
    while seen is not None and not isinstance(seen, RayTaskError):
        seen = getattr(seen, "cause", None) or seen.__cause__
    if seen is None:
        return []
    lines = [line.strip() for line in str(seen).splitlines()]
    return [m.groups() for m in map(_EXCEPTION_LINE.match, lines) if m and not m.group(1).startswith("ray::")]


def _storage_failed(e: BaseException) -> bool:
    chain = [e, getattr(e, "cause", None), e.__cause__]
    return any(isinstance(x, StorageFailed) for x in chain) or any(
        name == _STORAGE_FAILED for name, _ in _worker_exception_lines(e))


def _root_cause(e: BaseException) -> str:
    """What went wrong, in one line: our own StorageFailed says it all in its message; otherwise the
    first exception a worker's traceback names (the deepest cause: chained tracebacks print it first)."""
    for x in (e, getattr(e, "cause", None), e.__cause__):
        if isinstance(x, StorageFailed):
            return str(x)
    named = _worker_exception_lines(e)
    for name, message in named:
        if name == _STORAGE_FAILED:
            return message
    if named:
        name, message = named[0]
        return f"{name.rsplit('.', 1)[-1]}: {message}"
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"
