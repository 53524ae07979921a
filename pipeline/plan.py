"""Sizing on paper: the CPU cores and model actors (GPUs) a corpus of N tokens needs to be done in H
hours, and which limit comes first as the cluster grows: the driver (its stats batches, and the shards
it finalises two at a time), the object store, S3's request rate, or the GPUs
(`python -m pipeline plan SPEC --tokens N --hours H [--from OUTPUT]`).

The arithmetic, with T = N / (H x 3600) tokens/s the target and r_s one worker's tokens per busy
second in stage s (a previous run's `_SUMMARY.json` `stages`, pipeline/meter.py, or the defaults
below):

    workers_s = ceil(T / r_s)              one worker is busy on one core (or one model actor)
    cores     = sum over the CPU stages of T / r_s, + the model actors' own CPUs, + 1 for the driver
    GPUs      = ceil(T / r_predict) x resources.gpus_per_actor

Each limit is a ceiling in tokens/s; the lowest is the one that comes first. The GPUs' ceiling is the
planned model actors' throughput (at least T); when another ceiling is below T, no number of GPUs
finishes in H hours until that limit is raised. Ray-free and torch-free: plain arithmetic.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

from pipeline.errors import UserError
from pipeline.heads import head_entry
from pipeline.placement import finalize_in_flight
from pipeline.meter import STAGES, TOKEN_STAGES
from pipeline.output import SUMMARY, OutputDir, StorageFailed
from pipeline.spec import pool_bounds
from pipeline.storage import protocol_of

# One worker's tokens per busy second when no summary is given. The CPU stages: the demo NER job
# (jobs/laptop.yaml: the MiniLM-L6 tagger, 200 documents of 82 tokens on average) on the 2-core
# development machine, its `_SUMMARY.json` `stages`, rounded down: read 72,000 rows/s (5.9 M
# tokens/s), tokenize 325,000, postprocess 167,000, write 10,400 rows/s (850,000 tokens/s).
DEFAULT_RATES = {"read": 2_000_000, "tokenize": 300_000, "postprocess": 150_000, "write": 800_000}
# The model stage on CPU: that run's model actor (2 torch threads, MiniLM-L6), 940 tokens/s.
DEFAULT_MODEL_RATE_CPU = 900
# On a GPU, an estimate, not a measurement: a BERT-base-sized encoder does 2 x 86 M matmul parameters
# = 0.17 GFLOP per token; at 20% of an H100's or H200's 989 bf16 TFLOPS, about 1.1 M tokens/s. Pass a
# short run of your own model on your GPUs with --from instead.
DEFAULT_MODEL_RATE_GPU = 1_000_000
# The data plane's steady state (read, tokenize, postprocess and write together, with a near-free model):
# tokens/s per core, `python -m tools.scale --steady` on the 2-core development machine (47,532 tokens/s
# on 2 cores, rounded down). The ceiling the CPU stages put on an accelerator: a GPU needs its rate /
# this many cores beside it.
DATA_PLANE_TOKENS_PER_CORE = 23_000
DEFAULT_TOKENS_PER_DOCUMENT = 82  # the demo NER job's
DEFAULT_DOCUMENTS_PER_SHARD = 100_000

# The driver reads one small stats batch per written part (pipeline.job._stream): an iter_batches
# step (0.56 ms) and a ReadLedger round trip (0.76 ms), measured with Ray 2.60 on the 2-core
# development machine; 2 ms leaves room for ray.wait and the bookkeeping.
DRIVER_SECONDS_PER_BATCH = 0.002

# Batches a worker holds in the object store: Ray Data queues 2 tasks per actor
# (RAY_DATA_ACTOR_DEFAULT_MAX_TASKS_IN_FLIGHT_TO_MAX_CONCURRENCY_FACTOR) and each keeps its output
# until the next stage takes it.
IN_FLIGHT_PER_WORKER = 3
# Ray gives the object store 30% of a node's memory; Ray Data's streaming executor keeps its blocks
# within half of that (DEFAULT_OBJECT_STORE_MEMORY_LIMIT_FRACTION).
RAY_OBJECT_STORE_SHARE = 0.3
RAY_DATA_OBJECT_STORE_FRACTION = 0.5
NODE_MEMORY_GIB = 64  # the default cluster: one node of this size per model actor (one GPU a pod)
# Bytes per token of what travels between the stages: the text (UTF-8; the demo corpus has 3.9
# characters per token), the encoding (int32 input ids per window token, and the document's token
# ids and character offsets), and the output rows (id, offsets, label, score per token row).
TEXT_BYTES_PER_TOKEN = 4
ENCODED_BYTES_PER_TOKEN = 16
ROW_BYTES_PER_TOKEN = {"document": 8, "token": 40}

# S3 answers at least this many requests per second per prefix (AWS, "Optimizing Amazon S3
# performance"): PUT, COPY, POST and DELETE together, and GET and HEAD.
S3_WRITES_PER_SECOND = 3_500
S3_READS_PER_SECOND = 5_500
S3_READ_BLOCK_BYTES = 50 * 2**20  # s3fs's block: one GET per block of an input file


class PlanError(UserError):
    """Plan inputs that cannot be used; the message names them and what to do."""


@dataclass(frozen=True)
class Rates:
    """What a run measured, or the defaults: one worker's tokens per busy second per stage."""

    per_stage: dict[str, float]
    sources: dict[str, str]  # stage -> "measured" or "default"
    tokens_per_document: float
    output_rows_per_document: float | None  # None: from the granularity
    documents_per_shard: float | None  # None: DEFAULT_DOCUMENTS_PER_SHARD
    origin: str  # where the rates come from, for the reader
    model_note: str = ""  # why the model's rate is not the summary's, when it is not


def default_rates(spec) -> Rates:
    model = DEFAULT_MODEL_RATE_GPU if spec.resources.gpus_per_actor else DEFAULT_MODEL_RATE_CPU
    return Rates({**DEFAULT_RATES, "predict": model}, {s: "default" for s in STAGES}, DEFAULT_TOKENS_PER_DOCUMENT,
                 None, None, "defaults (pipeline/plan.py)")


def rates_from_summary(summary: dict, spec, origin: str) -> Rates:
    """One worker's rates from a summary's `stages` (rows, tokens, busy seconds of this run's workers);
    a stage it did not measure gets the default. The reader's and writer's rows are documents."""
    stages = summary.get("stages") or {}
    tokenize = stages.get("tokenize") or {}
    if tokenize.get("rows") and tokenize.get("tokens"):
        per_doc = tokenize["tokens"] / tokenize["rows"]
    elif summary.get("rows_written") and summary.get("tokens"):
        per_doc = summary["tokens"] / summary["rows_written"]
    else:
        per_doc = DEFAULT_TOKENS_PER_DOCUMENT
    defaults = default_rates(spec).per_stage
    per_stage, sources = {}, {}
    for stage in STAGES:
        measured = stages.get(stage) or {}
        if stage in TOKEN_STAGES:
            rate = measured.get("tokens_per_second")
        else:
            rate = measured.get("rows_per_second") and measured["rows_per_second"] * per_doc
        per_stage[stage], sources[stage] = (rate, "measured") if rate else (defaults[stage], "default")
    out_rows = summary["output_rows"] / summary["rows_written"] if summary.get("rows_written") else None
    per_shard = summary["rows_read"] / summary["shards"] if summary.get("shards") and summary.get("rows_read") else None
    note = ""
    if spec.resources.gpus_per_actor and not (summary.get("model_pool") or {}).get("gpus_per_actor"):
        # A CPU's model rate would ask for tens of GPUs where one does: a GPU's is the default instead.
        per_stage["predict"], sources["predict"] = defaults["predict"], "default"
        note = "the default GPU rate: the summary's model ran on CPU"
    return Rates(per_stage, sources, per_doc, out_rows, per_shard, origin, note)


def load_summary(path: str, storage=None) -> tuple[dict, str]:
    """A `_SUMMARY.json`, given as its file or the output folder holding it, local or object storage.
    Returns it with the path it was read from."""
    folder, name = (os.path.dirname(path.rstrip("/")), os.path.basename(path)) if path.endswith(".json") \
        else (path, SUMMARY)
    where = f"{folder.rstrip('/')}/{name}" if folder else name
    try:
        summary = OutputDir(folder or ".", storage).read_json(name)
    except StorageFailed as e:  # OutputDir's reads say every failure so, a file that is not JSON too
        bad = e.__cause__
        if isinstance(bad, json.JSONDecodeError):
            raise PlanError(f"--from: {where} is not JSON ({bad.msg} at line {bad.lineno}); give a run's "
                            "_SUMMARY.json") from None
        raise PlanError(f"--from: {e}") from None
    if summary is None:
        raise PlanError(f"--from: no {where} (a run writes its _SUMMARY.json once complete); give a complete run's "
                        "output folder or summary file")
    if not isinstance(summary, dict) or "stages" not in summary:
        raise PlanError(f"--from: {where} has no `stages` (not a summary of this job); give a run's _SUMMARY.json")
    return summary, where


def model_config(spec) -> dict:
    """The checkpoint's config.json (hidden size, labels), {} when it cannot be read: then the sizes of
    BERT-base are assumed (pipeline.heads). Through the impatient client: a plan must not wait a minute
    for a store it only hopes to read a width from."""
    try:
        config = OutputDir(spec.model.path, spec.storage, patient=False).read_json("config.json")
    except Exception:  # noqa: BLE001 - sizing goes on with the defaults
        return {}
    return config if isinstance(config, dict) else {}


def _is_object_store(path: str) -> bool:
    return protocol_of(path) != "file"


@dataclass(frozen=True)
class Workload:
    """What the plan is for: `tokens` in `hours`, in `shards` input shards (None: the summary's
    documents per shard, else DEFAULT_DOCUMENTS_PER_SHARD)."""

    tokens: float
    hours: float
    shards: int | None = None

    @property
    def target(self) -> float:
        """Tokens per second."""
        return self.tokens / (self.hours * 3600)


def plan(spec, work: Workload, rates: Rates, *, config: dict | None = None,
         object_store_gib: float | None = None) -> dict:
    """The plan as a dict (the `--json` output). `object_store_gib`: the cluster's object store
    (default: RAY_OBJECT_STORE_SHARE of a NODE_MEMORY_GIB node per model actor)."""
    tokens, target = work.tokens, work.target
    per_doc = rates.tokens_per_document
    r = rates.per_stage
    res, granularity = spec.resources, spec.output.granularity

    # Finalisation (pipeline.sinks.finalize_shard) reads a shard's parts back and writes them once
    # more; it is not metered, so it is taken to cost what the write stage does.
    costs = {**{s: (r[s], rates.sources[s]) for s in STAGES}, "finalize": (r["write"], "= write")}
    stages = {}
    for stage, (rate, source) in costs.items():
        busy = target / rate
        stages[stage] = {"tokens_per_second": round(rate, 1), "source": source, "workers": max(1, math.ceil(busy)),
                         "cores": round(busy, 2)}
    model_actors = stages["predict"]["workers"]
    model_cpus = model_actors * (res.cpus_per_actor or 1)  # a cluster's default: pipeline.placement.size_pools
    cpu_stage_cores = sum(s["cores"] for name, s in stages.items() if name != "predict")
    del stages["predict"]["cores"]  # the model actors' cores are model_cpus
    cores = math.ceil(cpu_stage_cores + model_cpus + 1)  # + 1: the driver
    gpus = model_actors * res.gpus_per_actor

    limits = [_driver(spec, per_doc), _object_store(spec, stages, rates, config or {}, target, object_store_gib)]
    # The driver finalises as many shards at once as the postprocess pool may have actors (at least 2).
    at_once = finalize_in_flight(spec)
    limits.append({"limit": "shard finalisation", "ceiling_tokens_per_second": round(at_once * r["write"], 1),
                   "detail": f"{at_once} shards at once (resources.postprocess_actors' max, at least 2) x "
                             f"{r['write']:,.0f} tokens/s"})
    limits += _s3(spec, rates, work)
    model_name = "GPUs" if res.gpus_per_actor else "model actors (CPU)"
    limits.append({"limit": model_name, "ceiling_tokens_per_second": round(model_actors * r["predict"], 1),
                   "detail": f"{model_actors} model actor(s) x {r['predict']:,.0f} tokens/s"
                             + (f" ({rates.model_note})" if rates.model_note else "")})
    for limit in limits:
        limit["hours"] = round(tokens / limit["ceiling_tokens_per_second"] / 3600, 3)
    first = min(limits, key=lambda lim: lim["ceiling_tokens_per_second"])
    return {
        "tokens": int(tokens) if float(tokens).is_integer() else tokens, "hours": work.hours,
        "target_tokens_per_second": round(target, 1),
        "rates_from": rates.origin, "tokens_per_document": round(per_doc, 1),
        "stages": stages, "cpu_cores": cores, "cpu_stage_cores": round(cpu_stage_cores, 2),
        "model_actors": model_actors, "model_actor_cpus": model_cpus, "gpus": gpus, "model_note": rates.model_note,
        "cores_per_gpu": math.ceil(r["predict"] / DATA_PLANE_TOKENS_PER_CORE) if res.gpus_per_actor else None,
        "limits": limits, "first_limit": first["limit"], "pools_too_small": _pools_too_small(spec, stages),
        "meets_target": first["ceiling_tokens_per_second"] >= target,
        "granularity": granularity, "head": spec.model.head,
    }


# The spec's pools and the stage each one runs.
_POOLS = {"model_actors": "predict", "tokenize_actors": "tokenize", "postprocess_actors": "postprocess"}


def _pools_too_small(spec, stages: dict) -> dict[str, dict]:
    """resources.* pools whose largest size is below the workers the plan needs: key -> have, need."""
    out = {}
    for key, stage in _POOLS.items():
        most = pool_bounds(getattr(spec.resources, key))[1]
        if most < stages[stage]["workers"]:
            out[key] = {"max": most, "need": stages[stage]["workers"]}
    return out


def _driver(spec, per_doc: float) -> dict:
    tokens_per_batch = spec.batching.rows_per_batch * per_doc
    return {"limit": "driver", "ceiling_tokens_per_second": round(tokens_per_batch / DRIVER_SECONDS_PER_BATCH, 1),
            "detail": f"one stats batch of {spec.batching.rows_per_batch} documents ({tokens_per_batch:,.0f} tokens) "
                      f"per {DRIVER_SECONDS_PER_BATCH * 1000:g} ms"}


def _object_store(spec, stages: dict, rates: Rates, config: dict, target: float, object_store_gib: float | None) -> dict:
    """In-flight bytes: each worker holds IN_FLIGHT_PER_WORKER batches of its input; they grow with
    the workers, so with the target, and the ceiling is the throughput that fills Ray Data's budget."""
    granularity = spec.output.granularity
    window = min(rates.tokens_per_document, spec.model.max_length)
    forward = 4 * head_entry(spec.model.head).forward_values(config, granularity, window)
    encoded = TEXT_BYTES_PER_TOKEN + ENCODED_BYTES_PER_TOKEN
    bytes_in = {"tokenize": TEXT_BYTES_PER_TOKEN, "predict": encoded, "postprocess": encoded + forward,
                "write": ROW_BYTES_PER_TOKEN[granularity] + forward}  # an upper estimate of the rows
    tokens_per_batch = spec.batching.rows_per_batch * rates.tokens_per_document
    in_flight = sum(stages[s]["workers"] * IN_FLIGHT_PER_WORKER * b * tokens_per_batch for s, b in bytes_in.items())
    store = (object_store_gib if object_store_gib is not None
             else RAY_OBJECT_STORE_SHARE * NODE_MEMORY_GIB * stages["predict"]["workers"]) * 2**30
    budget = RAY_DATA_OBJECT_STORE_FRACTION * store
    return {"limit": "object store", "ceiling_tokens_per_second": round(target * budget / in_flight, 1),
            "detail": f"{in_flight / 2**30:,.2f} GiB in flight ({bytes_in['postprocess']:,.0f} bytes/token into "
                      f"postprocess{'' if config else ', BERT-base widths: config.json not read'}) of "
                      f"{budget / 2**30:,.1f} GiB for Ray Data"}


def _s3(spec, rates: Rates, work: Workload) -> list[dict]:
    """Requests per shard on the output prefix: a PUT per part (a batch's rows of a shard) and per
    final file, the pending record, the marker and one bulk DELETE; a GET per part and one LIST at
    finalisation (pipeline/sinks.py). A shard of one batch or less is finished by the writer: no part,
    no LIST, no GET. On the input prefix, a HEAD and a GET per s3fs block, twice (the id probe)."""
    per_doc, target = rates.tokens_per_document, work.target
    docs = (work.tokens / per_doc / work.shards if work.shards
            else rates.documents_per_shard or DEFAULT_DOCUMENTS_PER_SHARD)
    out_per_doc = rates.output_rows_per_document or (per_doc if spec.output.granularity == "token" else 1.0)
    parts = math.ceil(docs / spec.batching.rows_per_batch)
    files = math.ceil(docs * out_per_doc / spec.output.rows_per_file)
    shards_per_second = target / (per_doc * docs)
    limits = []
    what = f"{docs:,.0f} documents a shard: {parts} part(s), {files} file(s)"
    if _is_object_store(spec.output.path):
        staged = parts if parts > 1 else 0  # one batch or less: finished by the writer
        writes, reads = staged + files + 3, staged + (1 if staged else 0)
        limits.append(_request_limit("S3 writes, output prefix", writes, S3_WRITES_PER_SECOND, shards_per_second,
                                     target, what))
        if reads:
            limits.append(_request_limit("S3 reads, output prefix", reads, S3_READS_PER_SECOND, shards_per_second,
                                         target, what))
    if _is_object_store(spec.input.path):
        gets = 2 + 2 * math.ceil(docs * per_doc * TEXT_BYTES_PER_TOKEN / S3_READ_BLOCK_BYTES)
        limits.append(_request_limit("S3 reads, input prefix", gets, S3_READS_PER_SECOND, shards_per_second, target,
                                     f"{docs:,.0f} documents a shard"))
    return limits


def _request_limit(name: str, per_shard: int, allowed: int, shards_per_second: float, target: float,
                   what: str) -> dict:
    rate = per_shard * shards_per_second
    return {"limit": name, "ceiling_tokens_per_second": round(target * allowed / rate, 1),
            "detail": f"{per_shard:,} requests a shard ({what}): {rate:,.1f}/s of {allowed:,}/s"}


def format_plan(p: dict) -> str:
    """The plan as a short table for people."""
    lines = [f"{p['tokens']:,.0f} tokens in {p['hours']:g} h: {p['target_tokens_per_second']:,.0f} tokens/s "
             f"({p['head']}, {p['granularity']} granularity, {p['tokens_per_document']:,.1f} tokens a document)",
             f"rates from {p['rates_from']}", ""]
    lines.append(f"{'stage':<12}{'tokens/s per worker':>20}  {'source':<9}{'workers':>8}{'cores':>8}")
    for name, s in p["stages"].items():
        cores = f"{s['cores']:>8,.2f}" if "cores" in s else f"{'':>8}"
        lines.append(f"{name:<12}{s['tokens_per_second']:>20,.0f}  {s['source']:<9}{s['workers']:>8,}{cores}")
    lines += ["", f"need: {p['cpu_cores']:,} CPU cores ({p['cpu_stage_cores']:,.2f} for read, tokenize, postprocess "
              f"and write, {p['model_actor_cpus']:,g} for the model actors, 1 for the driver), "
              f"{p['model_actors']:,} model actor(s), {p['gpus']:,g} GPU(s)"
              + (f" ({p['model_note']})" if p.get("model_note") else "")]
    if p.get("cores_per_gpu"):
        lines.append(f"each GPU ({p['stages']['predict']['tokens_per_second']:,.0f} tokens/s) needs {p['cores_per_gpu']:,} "
                     f"CPU cores of data plane beside it ({DATA_PLANE_TOKENS_PER_CORE:,} tokens/s per core, "
                     "tools/scale.py --steady)")
    lines.append("")
    lines.append(f"{'limit':<26}{'ceiling tokens/s':>17}{'hours':>9}  detail")
    for lim in sorted(p["limits"], key=lambda lim: lim["ceiling_tokens_per_second"]):
        lines.append(f"{lim['limit']:<26}{lim['ceiling_tokens_per_second']:>17,.0f}{lim['hours']:>9,.2f}  "
                     f"{lim['detail']}")
    first = next(lim for lim in p["limits"] if lim["limit"] == p["first_limit"])
    if p["meets_target"]:
        verdict = f"first limit: {p['first_limit']}; done in {p['hours']:g} h with the cores and model actors above"
    else:
        verdict = (f"first limit: {p['first_limit']}, below the target: at most {first['ceiling_tokens_per_second']:,.0f}"
                   f" tokens/s, {first['hours']:,.2f} h for these tokens; {_FIX[p['first_limit']]}")
    lines += ["", verdict]
    if p["pools_too_small"]:
        sets = " ".join(f"--set resources.{k}={v['need']}" for k, v in p["pools_too_small"].items())
        have = ", ".join(f"{k} {v['max']}" for k, v in p["pools_too_small"].items())
        lines.append(f"the spec's pools are smaller ({have} at most): {sets}")
    if p["stages"]["predict"]["source"] == "measured":
        lines.append("(the rates are the earlier run's, on its hardware and model: measure on the GPUs you plan for)")
    elif p["gpus"]:
        lines.append("(the model's rate is a default, an estimate for a BERT-base-sized encoder on an H100-class GPU: "
                     "measure yours with a short run and pass --from)")
    return "\n".join(lines)


_FIX = {
    "shard finalisation": "raise resources.postprocess_actors (as many shards are finalised at once)",
    "driver": "raise batching.rows_per_batch (fewer, larger stats batches)",
    "object store": "give the nodes more memory (--object-store-gib) or lower batching.rows_per_batch",
    "S3 writes, output prefix": "raise batching.rows_per_batch and output.rows_per_file (fewer, larger objects)",
    "S3 reads, output prefix": "raise batching.rows_per_batch (fewer parts to read back)",
    "S3 reads, input prefix": "spread the input over several prefixes, or run several jobs on parts of it",
}
