"""The job: spec -> read shards -> tokenize -> predict -> postprocess -> write -> summary.
The one module that knows Ray; every stage it composes is a plain callable (pipeline/stages.py,
pipeline/predict.py, pipeline/sinks.py)."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time

import pyarrow as pa

from pipeline import columns as C
from pipeline.heads import head_class
from pipeline.sinks import STATS_COLUMNS, WriteResults, clear_output, write_summary
from pipeline.sources import ShardReader, list_shards, probe_id_type

log = logging.getLogger(__name__)

# CPU reservations for the light stages; the model actors take resources.cpus_per_actor.
READ_CPUS = 0.25
TOKENIZE_CPUS = 0.5
POSTPROCESS_CPUS = 0.5


class JobFailed(RuntimeError):
    pass


def reader_columns(spec) -> tuple[dict[str, str], tuple[str, ...]]:
    cls = head_class(spec.model.head)
    cols = {key: getattr(spec.input, attr) for key, attr in cls.input_columns.items()}
    optional = ()
    if spec.input.text_pair_column:
        cols[C.TEXT_PAIR] = spec.input.text_pair_column
        optional = (C.TEXT_PAIR,)
    return cols, optional


def _read_shard(batch: dict, *, shards, columns, optional, id_column, id_type, storage):
    reader = ShardReader(columns, id_column, storage, optional, id_type)
    for index in batch["shard"]:
        yield from reader.read(shards[int(index)])


def validate(spec) -> dict:
    """Everything `run` checks before it starts: input reachable, model loadable with the head's
    weights. Returns facts for the CLI to print. Raises SpecError / InputError / ModelError."""
    from pipeline.models import load_model
    from pipeline.stages import load_head

    shards = list_shards(spec.input, spec.storage)
    head = load_head(spec)
    if spec.output.granularity not in head.granularities:
        from pipeline.spec import SpecError

        raise SpecError(f"output.granularity: {spec.model.head} supports {', '.join(head.granularities)}")
    model_dir = head.ctx.extra["model_dir"]
    load_model(model_dir, head, spec.model, device="cpu")
    return {"shards": shards, "head": head, "model_dir": model_dir}


def _init_ray(spec, cpus_needed: float) -> bool:
    """Attach to the cluster this process runs in, or start a local Ray. True when local."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return _is_local()
    address = spec.resources.ray_address or os.environ.get("RAY_ADDRESS")
    if not address:
        # A node where `ray start` ran (a cluster head) records its address; `ray stop` clears it.
        from ray._private.utils import read_ray_address

        address = read_ray_address()
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        return False
    # Local Ray: logical CPUs are a scheduling budget, not cores; torch threads are set per actor.
    cpus = max(os.cpu_count() or 1, int(cpus_needed + 1.5))
    ray.init(num_cpus=cpus, logging_level=logging.WARNING, include_dashboard=False)
    return True


def _is_local() -> bool:
    import ray

    return len(ray.nodes()) == 1


def run(spec, progress=None) -> dict:
    """Run the job; returns the summary (also written to output.path/_SUMMARY.json)."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from pipeline.predict import Predict
    from pipeline.stages import Postprocess, Tokenize

    progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.time()
    shards = validate(spec)["shards"]
    res = spec.resources
    cpus_needed = (
        READ_CPUS + TOKENIZE_CPUS * res.tokenizer_actors + POSTPROCESS_CPUS * res.tokenizer_actors
        + res.model_actors * res.cpus_per_actor
    )
    local = _init_ray(spec, cpus_needed)
    gpus_needed = res.gpus_per_actor * res.model_actors
    if gpus_needed:
        if local and gpus_needed > ray.cluster_resources().get("GPU", 0):
            raise JobFailed(
                f"resources.gpus_per_actor: {res.model_actors} actor(s) x {res.gpus_per_actor} GPU need "
                f"{gpus_needed:g} GPUs, this machine has {ray.cluster_resources().get('GPU', 0):g}"
            )
        if not local:
            # GPU workers may be scaled to zero: ask the autoscaler for them; the actor pool waits.
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[{"GPU": res.gpus_per_actor, "CPU": res.cpus_per_actor}] * res.model_actors)
    removed = clear_output(spec.output.path, spec.storage)
    if removed:
        progress(f"cleared {removed} file(s) of a previous run under {spec.output.path}")

    # Our own progress lines and summary replace Ray Data's bars and execution-plan logs.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False

    columns, optional = reader_columns(spec)
    rows_per_batch = spec.batching.rows_per_batch
    id_type = probe_id_type(shards, spec.input.id_column, spec.storage)
    ds = ray.data.from_items([{"shard": s.index} for s in shards], override_num_blocks=len(shards))
    ds = ds.map_batches(
        functools.partial(_read_shard, shards=shards, columns=columns, optional=optional,
                          id_column=spec.input.id_column, id_type=id_type, storage=spec.storage),
        batch_size=1, batch_format="numpy", num_cpus=READ_CPUS,
    )
    common = dict(batch_format="pyarrow", batch_size=rows_per_batch, zero_copy_batch=True)
    ds = ds.map_batches(Tokenize, fn_constructor_kwargs={"spec": spec}, num_cpus=TOKENIZE_CPUS,
                        compute=ActorPoolStrategy(size=res.tokenizer_actors), **common)
    ds = ds.map_batches(Predict, fn_constructor_kwargs={"spec": spec}, num_cpus=res.cpus_per_actor,
                        num_gpus=res.gpus_per_actor or None, compute=ActorPoolStrategy(size=res.model_actors), **common)
    ds = ds.map_batches(Postprocess, fn_constructor_kwargs={"spec": spec}, num_cpus=POSTPROCESS_CPUS,
                        compute=ActorPoolStrategy(size=res.tokenizer_actors), **common)
    writer = WriteResults(spec.output.path, [s.name for s in shards], spec.storage, spec.output.rows_per_file)
    ds = ds.map_batches(writer, batch_format="pyarrow", batch_size=None, num_cpus=READ_CPUS)

    totals = {k: 0 for k in STATS_COLUMNS}
    last_report = 0.0
    try:
        for stats in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for k in STATS_COLUMNS:
                col = stats.column(k).to_pylist()
                totals[k] = max([totals[k], *col]) if k == "largest_document_tokens" else totals[k] + sum(col)
            now = time.time()
            if now - last_report > 5:
                last_report = now
                elapsed = now - started
                progress(
                    f"[{elapsed:7.1f}s] {totals['documents']:,} rows done ({totals['rows_errored']:,} errors), "
                    f"{totals['tokens']:,} tokens, {totals['tokens'] / max(elapsed, 1e-9):,.0f} tokens/s"
                )
    except Exception as e:  # noqa: BLE001 - one sentence, the cause kept for --debug
        raise JobFailed(f"the job failed while running: {_root_cause(e)}") from e

    rows_read = count_input_rows(shards, spec.storage)
    wall = time.time() - started
    summary = {
        "status": "complete",
        "rows_read": rows_read,
        "rows_written": totals["rows_written"],
        "rows_errored": totals["rows_errored"],
        "output_rows": totals["output_rows"],
        "tokens": totals["tokens"],
        "padded_token_slots": totals["padded_slots"],
        "padding_waste": round(totals["padded_slots"] / totals["tokens"], 4) if totals["tokens"] else 0.0,
        "windows": totals["windows"],
        "documents_truncated": totals["truncated"],
        "largest_document_tokens": totals["largest_document_tokens"],
        "wall_seconds": round(wall, 3),
        "tokens_per_second": round(totals["tokens"] / wall, 1) if wall else 0.0,
        "model": spec.model.path,
        "head": spec.model.head,
        "granularity": spec.output.granularity,
        "input": spec.input.path,
        "shards": len(shards),
        "output": spec.output.path,
    }
    if rows_read != totals["rows_written"] + totals["rows_errored"]:
        summary["status"] = "incomplete"
        write_summary(spec.output.path, summary, spec.storage)
        raise JobFailed(
            f"rows read ({rows_read}) != rows written ({totals['rows_written']}) + rows errored "
            f"({totals['rows_errored']}); see {spec.output.path}/_SUMMARY.json"
        )
    write_summary(spec.output.path, summary, spec.storage)
    return summary


def count_input_rows(shards, storage) -> int:
    """Rows in the input, counted apart from the job so the final check means something: Parquet
    from the file footers, JSONL by its non-blank lines (in Ray tasks, one per shard)."""
    import ray

    @ray.remote(num_cpus=READ_CPUS)
    def count(shard) -> int:
        from pipeline.sources import count_rows

        return count_rows(shard, storage)

    return sum(ray.get([count.remote(s) for s in shards]))


def _root_cause(e: BaseException) -> str:
    """The deepest exception with a message, in one line (Ray wraps worker errors several times)."""
    best = e
    seen: BaseException | None = e
    while seen is not None:
        if str(seen).strip():
            best = seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    lines = [line for line in str(best).strip().splitlines() if line.strip()]
    return f"{type(best).__name__}: {lines[-1].strip() if lines else ''}"
