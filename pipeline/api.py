"""`pipeline.apply(ds, spec)`: the head's stages on anyone's Ray Dataset, sized to the Ray it finds
(pipeline.placement.fit), through the same loop over stage descriptions as the job (pipeline/compose.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from pipeline import columns as C
from pipeline import placement
from pipeline.compose import POSTPROCESS_CPUS, TOKENIZE_CPUS, Stage, check_chain, compose
from pipeline.raycompat import in_blocks_of
from pipeline.spec import JobSpec, SpecError, load_spec, spec_from_dict

ERROR_COLUMN = "error"  # apply's output: null, or why the row has no outputs


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
    placed = placement.fit(spec, _ray_cpus())
    check_chain([*placed.stages, Stage("finish", _Finish, POSTPROCESS_CPUS)])
    ds = compose(ds, list(placed.stages), placed.spec)
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

    columns = C.READ  # what check_chain starts from

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
        return reader.to_table(rows, Shard(0, "dataset", "parquet"), 0, ids, carried)


class _Finish:
    """The stages' output -> apply's: internal columns dropped, `_error` as `error`, and the made-up
    ids dropped when the input had none."""

    columns = C.StageColumns(reads=(C.ID, C.ERROR))

    def __init__(self, has_id: bool, id_column: str):
        self.has_id, self.id_column = has_id, id_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        errors = batch.column(C.ERROR)
        keep = [n for n in batch.schema.names if not n.startswith("_") and (self.has_id or n != C.ID)]
        out = batch.select(keep)
        if self.has_id and self.id_column != C.ID:
            out = out.rename_columns([self.id_column if n == C.ID else n for n in out.schema.names])
        return out.append_column(ERROR_COLUMN, errors)


def _ray_cpus() -> float:
    """The CPUs of the Ray the Dataset will run on: the one this process joined, or the machine's
    cores, which Ray Data takes when it starts one itself."""
    import ray

    return ray.cluster_resources().get("CPU", 0) if ray.is_initialized() else float(os.cpu_count() or 1)
