"""Where the work runs, decided once: start a local Ray or join a cluster, the laptop decision, the
size of each pool against what the cluster has, and how many shards are finalised at once. The job
(pipeline/job.py) and `apply` (pipeline/compose.py) take a `Placement`; nothing else sizes pools.

A laptop run is one where the job starts its own Ray on CPU and the spec sizes no pool: the three
head stages then run fused in the model actors (compose.ModelStages), which share the machine's cores.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from pipeline import raycompat
from pipeline.compose import READ_CPUS, TOKENIZE_CPUS, Stage, model_stages
from pipeline.errors import JobFailed
from pipeline.spec import SpecError, pool_bounds

FINALIZE_IN_FLIGHT = 2  # shards being turned into final files at once, at least
# A model actor on CPU holds about 1 GiB besides its weights (Python, torch and transformers, a batch's
# activations), and its weights up to twice over (a half-precision checkpoint loads as float32).
ACTOR_BASE_BYTES = 1 << 30
# Input a laptop run's model actor must have to pay back its start (torch and transformers imported,
# the model loaded: about 4 CPU s): jobs/laptop.yaml's 70 kB ran in 20 s with one actor of two threads
# and in 23-26 s with two of one; 3,000 documents (890 kB) ran faster with two.
INPUT_BYTES_PER_ACTOR = 256_000
# A laptop run's batches when the spec sets none: small enough that the sample's 200 documents are
# several batches, so the progress display moves during a run of seconds instead of jumping from 0 to
# all. It costs little: the model runs token-budget micro-batches within a batch either way, and the
# model actor does its own tokenizing and postprocessing (no hand-over between pools per batch).
LAPTOP_ROWS_PER_BATCH = 64


@dataclass(frozen=True)
class Cluster:
    """The Ray this process runs on, as `start` found or made it."""

    laptop: bool  # this job started its own Ray on CPU, and the spec sizes no pool: stages fused
    local: bool  # one node (a Ray this process started, or a one-node cluster)
    started: bool  # this job started it (its CPUs are the machine's cores, to share out)


@dataclass(frozen=True)
class Placement:
    """The pools as they will run."""

    spec: object  # the JobSpec with resources.cpus_per_actor and, on a laptop, model_actors filled in
    cluster: Cluster
    stages: tuple[Stage, ...]  # the head's stages, sized (one fused stage on a laptop)
    finalize_in_flight: int  # shards finalised at once

    @property
    def pool_line(self) -> str:
        """What the run starts, for the display: 'model: 2 actor(s), 1 CPU each; each tokenizes ...'."""
        res = self.spec.resources
        low, high = pool_bounds(res.model_actors)
        each = f"{res.gpus_per_actor:g} GPU and {res.cpus_per_actor:g} CPU" if res.gpus_per_actor else \
            f"{res.cpus_per_actor:g} CPU"
        stages = "each tokenizes and postprocesses its own batches" if self.cluster.laptop else \
            "tokenize and postprocess in pools of their own"
        return f"model: {low if low == high else f'{low} to {high}'} actor(s), {each} each; {stages}"

    @property
    def model_pool(self) -> dict:
        """What ran, for the summary: the pool as sized here (the spec's, or the laptop defaults)."""
        res = self.spec.resources
        actors = res.model_actors if isinstance(res.model_actors, int) else res.model_actors.model_dump()
        return {"actors": actors, "cpus_per_actor": res.cpus_per_actor, "gpus_per_actor": res.gpus_per_actor,
                "fused": self.cluster.laptop}


def start(spec, verbose: bool = False) -> Cluster:
    """Join the cluster this process runs in, or start a local Ray with CPUs for the pools at their
    largest (on a laptop, before the checkpoint's size is known: one CPU per core in all)."""
    import ray

    address = None if ray.is_initialized() else cluster_address(spec)
    starts_local = not (ray.is_initialized() or address)
    laptop = starts_local and not spec_sizes_pools(spec)  # is_laptop, from the address found once
    if laptop and "model_actors" not in spec.resources.model_fields_set:
        cpus = READ_CPUS + (os.cpu_count() or 1)  # laptop_model_actors shares the cores out
    else:
        cpus = _cpus_needed(model_stages(size_pools(spec, laptop, starts_local), fused=laptop))
    local = _init_ray(spec, cpus, verbose, address)
    return Cluster(laptop=laptop, local=local, started=starts_local)


def place(spec, cluster: Cluster, model_bytes: int = 0, input_bytes: int | None = None) -> Placement:
    """The pools sized for `cluster` (after `start`), the GPUs they start with asked for."""
    spec = size_pools(spec, cluster.laptop, cluster.started, model_bytes, input_bytes)
    if cluster.laptop and "rows_per_batch" not in spec.batching.model_fields_set:
        batching = spec.batching.model_copy(update={"rows_per_batch": min(LAPTOP_ROWS_PER_BATCH,
                                                                          spec.batching.rows_per_batch)})
        spec = spec.model_copy(update={"batching": batching})
    if spec.resources.gpus_per_actor:
        _ask_for_gpus(spec.resources, cluster.local)
    return Placement(spec, cluster, tuple(model_stages(spec, fused=cluster.laptop)), finalize_in_flight(spec))


def finalize_in_flight(spec) -> int:
    """Shards finalised at once: as many as the postprocess pool may have actors (at least
    FINALIZE_IN_FLIGHT). A finalisation reads a shard's parts back and writes them once more, about a
    writer's work; a fixed number would cap a large cluster at that many writers' rate."""
    return max(FINALIZE_IN_FLIGHT, pool_bounds(spec.resources.postprocess_actors)[1])


def fit(spec, cpus: float) -> Placement:
    """For `apply` on a Ray someone else started with `cpus` CPUs: the pools the spec asks for when they
    start beside a task of apply's own (TOKENIZE_CPUS); when the spec sizes no pool and they do not,
    the stages fused into model actors of one CPU each, leaving a CPU for Ray Data's read tasks (one
    CPU each); else SpecError, naming the pools and the CPUs found, before any work (Ray Data would
    wait for ever)."""
    sized = spec_sizes_pools(spec)
    spec = size_pools(spec, laptop=False, starts_local=False)
    stages = model_stages(spec)
    # A pool starts with its smallest size; an autoscaling one grows only into CPUs that are free.
    needed = sum(s.num_cpus * pool_bounds(s.actors)[0] for s in stages) + TOKENIZE_CPUS
    if needed <= cpus:
        return Placement(spec, Cluster(laptop=False, local=True, started=False), tuple(stages), FINALIZE_IN_FLIGHT)
    if not sized:
        actors = max(1, min(pool_bounds(spec.resources.model_actors)[1], int(cpus - 1)))
        fused = spec.model_copy(update={"resources": spec.resources.model_copy(
            update={"model_actors": actors, "cpus_per_actor": 1.0 if cpus >= 2 else 0.5})})
        return Placement(fused, Cluster(laptop=True, local=True, started=False),
                         tuple(model_stages(fused, fused=True)), FINALIZE_IN_FLIGHT)
    pools = ", ".join(f"{s.name} {pool_bounds(s.actors)[0]} x {s.num_cpus:g}" for s in stages)
    raise SpecError(f"resources: the pools ask for {needed:g} CPUs ({pools}, and {TOKENIZE_CPUS:g} for a task) "
                    f"but this Ray has {cpus:g}; give fewer actors or CPUs per actor, or start Ray with more")


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


def cluster_address(spec) -> str | None:
    """The Ray cluster to attach to: the spec's, RAY_ADDRESS, or the one `ray start` ran on this node."""
    address = spec.resources.ray_address or os.environ.get("RAY_ADDRESS")
    if not address:
        # A node where `ray start` ran (a cluster head) records its address; `ray stop` clears it.
        address = raycompat.recorded_address()
    return address


def is_laptop(spec) -> bool:
    """The job will start its own local Ray on CPU and the spec sizes no pool and no model CPUs: the
    stages then run fused in the model actors (compose.ModelStages), which get every core."""
    import ray

    return not (spec_sizes_pools(spec) or ray.is_initialized() or cluster_address(spec))


def spec_sizes_pools(spec) -> bool:
    """The spec sizes the CPU stages' pools or the model actors' CPUs or GPUs (sizing only the number of
    model actors keeps a laptop run fused)."""
    res = spec.resources
    return bool({"cpus_per_actor", "tokenize_actors", "postprocess_actors"} & res.model_fields_set
                or res.gpus_per_actor)


def size_pools(spec, laptop: bool, starts_local: bool, model_bytes: int = 0, input_bytes: int | None = None):
    """The spec with resources.cpus_per_actor filled in, and on a laptop run that leaves `model_actors`
    unset, the pool's size too (`laptop_model_actors`). When this job starts its own local Ray and
    runs on CPU, the machine's cores are shared out among the model actors (the model is the heavy
    stage, and one torch thread would leave the other cores idle); otherwise 1 CPU (a cluster's
    nodes, or a Ray someone else sized)."""
    res = spec.resources
    if res.cpus_per_actor is not None:
        return spec
    update = {"cpus_per_actor": 1.0}
    if starts_local and not res.gpus_per_actor:
        cores = os.cpu_count() or 1
        actors = res.model_actors
        if "model_actors" not in res.model_fields_set and laptop:
            actors = laptop_model_actors(cores, model_bytes, _physical_memory(), input_bytes)
        update = {"model_actors": actors, "cpus_per_actor": float(max(1, cores // pool_bounds(actors)[1]))}
    return spec.model_copy(update={"resources": res.model_copy(update=update)})


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # a platform without these names
        return None


def _cpus_needed(stages) -> float:
    """Ray CPUs the model stages' pools at their largest and a read task take."""
    return READ_CPUS + sum(s.num_cpus * pool_bounds(s.actors)[1] for s in stages)


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


def _init_ray(spec, cpus_needed: float, verbose: bool, address: str | None) -> bool:
    """Attach to the cluster at `address` (cluster_address's, None for none) or the one this process
    already runs in, or start a local Ray. True when local.
    Quiet unless `verbose`: workers' own output stays in Ray's logs (/tmp/ray/session_latest/logs), and
    Ray Data's start-up notices are off; the job's errors carry their causes anyway. JobFailed (one
    sentence: what failed, what to try) when Ray does not start or its cluster cannot be reached."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not verbose:
        import ray.data  # noqa: F401 - it configures its loggers on import: quietened after that, not before

        logging.getLogger("ray.data").setLevel(logging.ERROR)
    if ray.is_initialized():
        return len(ray.nodes()) == 1

    def cause(e: Exception) -> str:  # Ray's reason in a few words: its first sentence, at most 200 characters
        if isinstance(e, OSError) and e.strerror:
            return f"{e.strerror}: {e.filename}"[:200] if e.filename else e.strerror
        return (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0].rstrip(".")[:200]

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
