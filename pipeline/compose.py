"""The head's stages on a Ray Dataset, composed by one loop over stage descriptions (the way Ray's
`ray.data.llm` processors are built): tokenize -> predict -> postprocess, each a plain callable over
`pyarrow.Table` batches (pipeline/stages.py, pipeline/predict.py) run in its own actor pool, or, on
a laptop's run, all three in the model actor (`ModelStages`).

Two users of the loop:
- `apply(ds, spec)`, for people who already have a `ray.data.Dataset`: adds the head's output columns
  and carries every other column through;
- the CLI job (pipeline/job.py): its shard reader and part writer are two more stage descriptions
  around the same three.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline import columns as C
from pipeline.spec import ActorRange, JobSpec, SpecError, load_spec, pool_bounds, spec_from_dict

# CPU reservations of the light stages; the model actors take resources.cpus_per_actor.
TOKENIZE_CPUS = 0.5
POSTPROCESS_CPUS = 0.5
ERROR_COLUMN = "error"  # apply's output: null, or why the row has no outputs


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


class ModelStages:
    """tokenize -> predict -> postprocess in one actor, one batch after the other. On a laptop the model
    takes every core and the CPU stages take a few per cent of its time, while an actor of their own
    costs more than their work: a process that imports torch and transformers and loads the
    tokenizer (about 5 CPU seconds each on 2 cores), and every batch through the object store twice.
    `_bound` runs its `parts` in order, each reporting under its own name."""

    def __init__(self, spec):
        from pipeline.predict import Predict
        from pipeline.stages import Postprocess, Tokenize, load_head

        head = load_head(spec)
        self.parts = (("tokenize", Tokenize(spec, head)), ("predict", Predict(spec, head)),
                      ("postprocess", Postprocess(spec, head)))


def in_blocks_of(ds, rows: int, num_cpus: float, resources: dict | None):
    """`ds.repartition(target_num_rows_per_block=rows)` fused into the map before it, whose Ray
    `num_cpus` and `resources` are given: a block that map yields whole (a shard's reader output, one
    block under Ray Data's 128 MiB buffer) goes on in blocks of `rows`, so the stages after it stream.
    Ray Data 2.60 fuses the cut only into a map with the same remote args, and `repartition` gives it
    none (one CPU a task): alone it waited for a CPU that the actor pools held, and a run on 2 CPUs
    stalled. So the same operator is built with the map's args (Ray Data's own logical operator)."""
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators import StreamingRepartition
    from ray.data.dataset import Dataset

    args = {"num_cpus": num_cpus, **({"resources": resources} if resources else {})}
    op = StreamingRepartition(target_num_rows_per_block=rows, input_dependencies=[ds._logical_plan.dag],
                              ray_remote_args=args)
    return Dataset._from_parent(ds, LogicalPlan(op, ds.context))


def _bound(stage_class, stage: str, spec, meter):
    """`stage_class` as a Ray Data actor class built with `spec` and, with a meter, reporting each
    batch to it. The spec and the meter are bound to the class rather than passed as constructor
    arguments, which Ray would keep in the object store (and warn about, for actors it may restart)."""
    from pipeline.sinks import DOCUMENTS

    class Bound(stage_class):
        def __init__(self):
            super().__init__(spec)

        def __call__(self, batch: pa.Table) -> pa.Table:
            # A fused class reports each of its parts under the part's own name.
            for name, part in getattr(self, "parts", None) or ((stage, super().__call__),):
                t0 = time.perf_counter()
                batch = part(batch)
                if meter is not None:
                    rows = batch.num_rows if name != "postprocess" else column_sum(batch, DOCUMENTS)
                    meter.record.remote(name, time.time(), time.perf_counter() - t0, rows,
                                        column_sum(batch, C.N_TOKENS))
            return batch

    Bound.__name__ = Bound.__qualname__ = stage_class.__name__  # Ray names actors after the class
    return Bound


def column_sum(table: pa.Table, name: str) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(table.column(name)).as_py() or 0) if name in table.schema.names else 0


# -- the public API --------------------------------------------------------------------------------

def apply(ds, spec: JobSpec | dict | str | Path):
    """The head of `spec` run over a Ray Dataset; returns a new (lazy) Dataset.

    `ds` has the columns the spec's `input.*_column` name (`text` by default; `question` and `context`
    for question-answering) and, optionally, `input.id_column`. The result has the id (when the input
    has one), every other input column carried through unchanged, the head's output columns, and
    `error`: null, or why that row has no outputs (an empty text, say) — no row is dropped. At
    `output.granularity: token` each document gives one row per token, its other columns repeated.

    `spec`: a JobSpec, a path to a spec YAML, or a dict of its sections; `input.path` and `output.path`
    are not used and may be left out. Only `model`, `head`, `input.*_column`, `output.granularity`,
    `resources` and `batching` matter here. Raises SpecError for a spec or columns that cannot run.
    """
    from pipeline.heads import head_entry
    from pipeline.sources import reader_columns
    from pipeline.stages import load_head

    spec = _as_spec(spec)
    spec = spec.model_copy(update={"output": spec.output.model_copy(update={"columns": []})})  # all are carried
    have = list(ds.columns())
    columns, optional = reader_columns(spec)
    for key, user in columns.items():
        if user not in have and key not in optional:
            attr = {**head_entry(spec.model.head).input_columns, C.TEXT_PAIR: "text_pair_column"}[key]
            raise SpecError(f"input.{attr}: column {user!r} not in the dataset (it has: {', '.join(have)})")
    used = {*columns.values(), spec.input.id_column}
    carried = [name for name in have if name not in used]
    spec = spec.model_copy(update={"output": spec.output.model_copy(update={"columns": carried})})
    head = load_head(spec)  # the tokenizer, config and architecture are checked here, before any work
    if spec.output.granularity not in head.granularities:
        raise SpecError(f"output.granularity: {spec.model.head} supports {', '.join(head.granularities)}")
    if ERROR_COLUMN in carried:
        raise SpecError(f"the dataset has a column {ERROR_COLUMN!r}, which apply's output uses for row errors; "
                        "rename it first (ds.rename_columns)")
    has_id = spec.input.id_column in have
    ds = ds.map_batches(_Prepare(spec, columns, optional, has_id), batch_format="pyarrow",
                        batch_size=spec.batching.rows_per_batch, zero_copy_batch=True,
                        num_cpus=TOKENIZE_CPUS, resources=spec.resources.cpu_stage_resources or None)
    # Blocks of one batch, as in the job, cut in _Prepare's tasks.
    ds = in_blocks_of(ds, spec.batching.rows_per_batch, TOKENIZE_CPUS, spec.resources.cpu_stage_resources)
    ds = compose(ds, model_stages(spec), spec)
    return ds.map_batches(_Finish(has_id, spec.input.id_column), batch_format="pyarrow", batch_size=None,
                          zero_copy_batch=True, num_cpus=POSTPROCESS_CPUS,
                          resources=spec.resources.cpu_stage_resources or None)


def _as_spec(spec) -> JobSpec:
    if isinstance(spec, JobSpec):
        return spec
    if isinstance(spec, (str, Path)):
        return load_spec(spec)
    if isinstance(spec, dict):
        data = {**spec}
        # A Dataset is already read and its results stay in memory: the paths are placeholders.
        data["input"] = {"path": "(dataset)", **(data.get("input") or {})}
        data["output"] = {"path": "(dataset)", **(data.get("output") or {})}
        return spec_from_dict(data, source="apply")
    raise SpecError(f"apply: spec must be a JobSpec, a path or a dict, not {type(spec).__name__}")


class _Prepare:
    """A batch of the user's rows -> the stages' internal columns (pipeline/columns.py): the head's
    inputs under their internal names, the other columns as carried columns, a row's problem (a null
    or empty text) in `_error`."""

    def __init__(self, spec, columns: dict[str, str], optional: tuple[str, ...], has_id: bool):
        self.columns = columns
        self.carried = list(spec.output.columns)
        self.optional = optional
        self.id_column = spec.input.id_column if has_id else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        from pipeline.sources import Shard, ShardReader, carry_key

        carry = {carry_key(name): name for name in self.carried}
        reader = ShardReader(self.columns | carry, self.id_column or C.ID, None, self.optional)
        present = {key: batch.column(user).to_pylist() for key, user in self.columns.items()
                   if user in batch.schema.names}
        rows = [{key: values[i] for key, values in present.items()} for i in range(batch.num_rows)]
        ids = batch.column(self.id_column).combine_chunks() if self.id_column else False
        carried = {key: batch.column(name).combine_chunks() for key, name in carry.items()}
        return reader._to_table(rows, Shard(0, "dataset", "parquet"), 0, ids, carried)


class _Finish:
    """The stages' output -> apply's: internal columns dropped, `_error` as `error`, and the made-up
    ids dropped when the input had none."""

    def __init__(self, has_id: bool, id_column: str):
        self.has_id, self.id_column = has_id, id_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        errors = batch.column(C.ERROR)
        keep = [n for n in batch.schema.names if not n.startswith("_") and (self.has_id or n != C.ID)]
        out = batch.select(keep)
        if self.has_id and self.id_column != C.ID:
            out = out.rename_columns([self.id_column if n == C.ID else n for n in out.schema.names])
        return out.append_column(ERROR_COLUMN, errors)

