"""The head's stages on a Ray Dataset, composed by one loop over stage descriptions (the way Ray's
`ray.data.llm` processors are built): tokenize -> predict -> postprocess, each a plain callable over
`pyarrow.Table` batches (pipeline/stages.py, pipeline/predict.py) run in its own actor pool, or, on
a laptop's run, all three in the model actor (`ModelStages`).

Two users of the loop:
- `pipeline.apply(ds, spec)` (pipeline/api.py), for people who already have a `ray.data.Dataset`: adds
  the head's output columns and carries every other column through;
- the CLI job (pipeline/job.py): its shard reader and part writer are two more stage descriptions
  around the same three.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline import columns as C
from pipeline.spec import ActorRange, pool_bounds

# CPU reservations of the light stages; the model actors take resources.cpus_per_actor. The job's
# reader tasks take READ_CPUS, its writer tasks WRITE_CPUS.
READ_CPUS = 0.25
# The writer must always find room. At a quarter CPU, Ray Data's budget on a 2-core laptop gave the
# spare quarter to the reads: over 1,000 shards of 1,000 documents the writes waited until nearly every
# shard was read, no marker landed for minutes, and the model's outputs piled up in the driver (its RSS
# rising by 300 MiB in 4 minutes). A write is mostly encoding and I/O. Not much less: at 0.05 Ray ran
# twice as many writers at once over 4,096 small shards, each a new worker process (69.7 s against 48.7 s).
WRITE_CPUS = 0.1
TOKENIZE_CPUS = 0.5
POSTPROCESS_CPUS = 0.5


@dataclass(frozen=True)
class Stage:
    """One `map_batches` of the pipeline. `fn` is a class (constructed once per actor with the spec,
    then called on each batch) when `actors` is set, else a function run as Ray tasks."""

    name: str  # the StageMeter's name for it (pipeline/meter.py)
    fn: Any
    num_cpus: float
    actors: int | ActorRange | None = None
    num_gpus: float | None = None
    resources: dict[str, float] = field(default_factory=dict)
    batch_size: int | None = None
    batch_format: str = "pyarrow"


def model_stages(spec, fused: bool = False) -> list[Stage]:
    """The three stages every head runs, sized by `resources.*` and placed by its custom resources.
    `fused`: the three in the model actors instead (`ModelStages`), for a laptop's run on CPU."""
    from pipeline.predict import Predict
    from pipeline.stages import Postprocess, Tokenize

    # batch_size None: a batch is one block, which `in_blocks_of` cut to at most rows_per_batch documents
    # of one shard. Batches that Ray Data bundled across blocks would depend on which blocks arrived
    # together, and so would the micro-batches and the scores' last bits: a resumed run would not
    # give a full run's results bit for bit.
    res = spec.resources
    if fused:
        return [Stage("model", ModelStages, res.cpus_per_actor or 1.0, res.model_actors,
                      resources=res.model_resources)]
    cpu_nodes = res.cpu_stage_resources
    return [
        Stage("tokenize", Tokenize, TOKENIZE_CPUS, res.tokenize_actors, resources=cpu_nodes),
        Stage("predict", Predict, res.cpus_per_actor or 1.0, res.model_actors, num_gpus=res.gpus_per_actor or None,
              resources=res.model_resources),
        Stage("postprocess", Postprocess, POSTPROCESS_CPUS, res.postprocess_actors, resources=cpu_nodes),
    ]


def compose(ds, stages: list[Stage], spec, meter=None):
    """`ds` with each stage's map_batches added, in order. With a `meter` (a StageMeter actor), each
    class stage reports every batch it finishes."""
    from ray.data import ActorPoolStrategy

    for stage in stages:
        kwargs = {"batch_size": stage.batch_size, "batch_format": stage.batch_format, "num_cpus": stage.num_cpus,
                  "resources": stage.resources or None, "zero_copy_batch": True}
        if stage.actors is None:
            ds = ds.map_batches(stage.fn, **kwargs)
            continue
        low, high = pool_bounds(stage.actors)
        pool = ActorPoolStrategy(size=low) if low == high else ActorPoolStrategy(min_size=low, max_size=high)
        ds = ds.map_batches(_bound(stage.fn, stage.name, spec, meter), compute=pool, num_gpus=stage.num_gpus,
                            **kwargs)
    return ds


class ChainBroken(Exception):
    """A stage would not find a column it reads: a bug in how the stages are put together."""


def stage_columns(stage: Stage) -> C.StageColumns:
    """What a stage description's callable declares (`columns`, or ModelStages' three as one)."""
    fn = stage.fn
    if fn is ModelStages:
        return ModelStages.declared()
    return getattr(fn, "columns", C.StageColumns())


def check_chain(stages: list[Stage], start: C.StageColumns = C.READ) -> None:
    """Each stage finds the internal columns it reads in what the reader (`start`) and the stages
    before it add. Checked once, before any work: a break would otherwise show as a KeyError inside a
    Ray actor minutes into a run."""
    have = set(start.adds)
    for stage in stages:
        declared = stage_columns(stage)
        missing = [c for c in declared.reads if c not in have]
        if missing:
            raise ChainBroken(f"stage {stage.name!r} reads {', '.join(missing)}, which no stage before it adds")
        have = set(declared.adds) if declared.replaces else have | set(declared.adds)


class ModelStages:
    """tokenize -> predict -> postprocess in one actor, one batch after the other. On a laptop the model
    takes every core and the CPU stages take a few per cent of its time, while an actor of their own
    costs more than their work: a process that imports torch and transformers and loads the
    tokenizer (about 5 CPU seconds each on 2 cores), and every batch through the object store twice.
    `_bound` runs its `parts` in order, each reporting under its own name."""

    @classmethod
    def declared(cls) -> C.StageColumns:
        """What the three read and add, as one stage."""
        from pipeline.predict import Predict
        from pipeline.stages import Postprocess, Tokenize

        return Tokenize.columns.then(Predict.columns).then(Postprocess.columns)

    def __init__(self, spec):
        from pipeline.predict import head_stages

        self.parts = tuple(head_stages(spec).items())


def _bound(stage_class, stage: str, spec, meter):
    """`stage_class` as a Ray Data actor class built with `spec` and, with a meter, reporting each
    batch to it. The spec and the meter are bound to the class rather than passed as constructor
    arguments, which Ray would keep in the object store (and warn about, for actors it may restart)."""
    class Bound(stage_class):
        def __init__(self):
            super().__init__(spec)

        def __call__(self, batch: pa.Table) -> pa.Table:
            # A fused class reports each of its parts under the part's own name.
            for name, part in getattr(self, "parts", None) or ((stage, super().__call__),):
                t0 = time.perf_counter()
                batch = part(batch)
                if meter is not None:
                    rows = batch.num_rows if name != "postprocess" else column_sum(batch, C.DOCUMENTS)
                    meter.record.remote(name, time.time(), time.perf_counter() - t0, rows,
                                        column_sum(batch, C.N_TOKENS))
            return batch

    Bound.__name__ = Bound.__qualname__ = stage_class.__name__  # Ray names actors after the class
    return Bound


def column_sum(table: pa.Table, name: str) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(table.column(name)).as_py() or 0) if name in table.schema.names else 0
