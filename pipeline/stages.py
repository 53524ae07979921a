"""The CPU stages around the model: tokenize and postprocess. Plain callables over `pyarrow.Table`
batches; Ray only composes them (pipeline/job.py), so tests and benchmarks call them directly.

Error rows (`_error` set) pass through every stage untouched and are written to `_errors/`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import columns as C
from pipeline.heads import build_head
from pipeline.heads.base import COMMON_ENCODE_FIELDS, Context, Produced, column
from pipeline.models import check_architecture, load_config, load_tokenizer, resolve_model_dir
from pipeline.sources import carry_key, is_carry_key
from pipeline.spec import SpecError

def load_head(spec):
    """The tokenizer, config and head for a spec; loaded once per actor."""
    model_dir = resolve_model_dir(spec.model.path, spec.storage)
    tokenizer = load_tokenizer(model_dir, spec.model.trust_remote_code)
    config = load_config(model_dir, spec.model.trust_remote_code)
    check_architecture(config, spec.model.head, spec.model.allow_random_head)
    head = build_head(Context(spec=spec, tokenizer=tokenizer, config=config, extra={"model_dir": model_dir}))
    check_carried_columns(spec.output.columns, head.output_schema(pa.string()).names)
    return head


def check_carried_columns(carried: list[str], output_names: list[str]) -> None:
    """output.columns can sit beside the head's columns: no clash, no repeat, no internal name."""
    seen = set()
    for name in carried:
        if name in output_names:
            raise SpecError(f"output.columns: {name!r} is also an output column of this head "
                            f"({', '.join(output_names)}); rename it in the input or leave it out")
        if name.startswith("_"):
            raise SpecError(f"output.columns: {name!r} starts with '_', which names the job's internal columns; "
                            "rename it in the input or leave it out")
        if name in seen:
            raise SpecError(f"output.columns: {name!r} is listed twice")
        seen.add(name)


def _with_errors(batch: pa.Table, errors: list) -> pa.Table:
    idx = batch.schema.get_field_index(C.ERROR)
    return batch.set_column(idx, C.ERROR, pa.array(errors, type=pa.string()))


def _good_rows(batch: pa.Table, good: np.ndarray) -> pa.Table:
    """The rows `good` of the batch, without the carried input columns (output.columns), which no head
    reads. Usually every row is good: then nothing is copied."""
    batch = batch.select([n for n in batch.schema.names if not is_carry_key(n)])
    return batch if len(good) == batch.num_rows else batch.take(good)


class Tokenize:
    """CPU stage: text -> windows of token ids (never padded; padding happens per micro-batch)."""

    columns = C.StageColumns(reads=(C.ERROR,), adds=(C.INPUT_IDS, C.TOKEN_TYPE_IDS, C.N_TOKENS, C.TRUNCATED))

    def __init__(self, spec, head=None):
        self.head = head or load_head(spec)
        self.fields = COMMON_ENCODE_FIELDS + self.head.encode_schema()

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        good = np.flatnonzero(column(batch, C.ERROR).is_null().to_numpy(zero_copy_only=False))
        columns, failed = self.head.encode_table(_good_rows(batch, good)) if len(good) else ({}, {})
        # Each batch row's place among the encoded rows; null (-> null values) for error rows.
        place = np.full(n, -1, dtype=np.int64)
        place[good] = np.arange(len(good))
        if failed:
            errors = column(batch, C.ERROR).to_pylist()
            for i, reason in failed.items():
                errors[good[i]] = reason
                place[good[i]] = -1
            batch = _with_errors(batch, errors)
        identity = len(good) == n and not failed
        take = None if identity else pa.array(place, mask=place < 0)
        for f in self.fields:
            if not len(good):
                values = pa.nulls(n, f.type)
            else:
                values = columns[f.name].cast(f.type)
                values = values if identity else values.take(take)
            batch = batch.append_column(f, values)
        return batch


_INTERNAL_TYPES = {C.SHARD: pa.int32(), C.ROW: pa.int64(), C.ERROR: pa.string(), C.N_TOKENS: pa.int64(),
                   C.PADDED_SLOTS: pa.int64(), C.TRUNCATED: pa.bool_(), C.N_WINDOWS: pa.int64(), C.DOCUMENTS: pa.int64(),
                   C.SHARD_ROWS: pa.int64()}


def _first_only(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """A per-document statistic on the first output row of each document, 0 on the others."""
    return np.where(first, values, np.zeros_like(values))


class Postprocess:
    """CPU stage: per-window model outputs -> output rows (one per document, or one per token)."""

    columns = C.StageColumns(
        reads=(C.ID, C.SHARD, C.ROW, C.ERROR, C.INPUT_IDS, C.N_TOKENS, C.PADDED_SLOTS, C.TRUNCATED),
        adds=(C.ID, C.SHARD, C.ROW, C.ERROR, C.N_TOKENS, C.PADDED_SLOTS, C.TRUNCATED, C.N_WINDOWS, C.DOCUMENTS),
        replaces=True)

    def __init__(self, spec, head=None):
        self.head = head or load_head(spec)
        self.carried = list(spec.output.columns)
        if head is not None:  # load_head checked its own
            check_carried_columns(self.carried, head.output_schema(pa.string()).names)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Returns the output rows plus the internal columns the writer needs: `_error` (null for
        output rows; for an error row, the reason and no outputs), `_shard`, `_row` and the per-document
        statistics, which are set on the first output row of each document only (so sums stay right).
        The carried input columns (output.columns) follow the id, taken whole from the batch."""
        id_type = batch.schema.field(C.ID).type
        schema = self.head.output_schema(id_type)
        errors = column(batch, C.ERROR).to_pylist()
        good = np.asarray([d for d, e in enumerate(errors) if e is None], dtype=np.int64)
        if len(good):
            produced = self.head.postprocess_table(_good_rows(batch, good))
        else:
            produced = Produced(np.zeros(0, np.int64), {f.name: pa.nulls(0, f.type) for f in schema if f.name != C.ID})
        document = good[produced.document]
        for d, reason in produced.errors.items():
            errors[good[d]] = reason
        has_rows = np.zeros(batch.num_rows, dtype=bool)
        has_rows[document] = True
        for d in good[~has_rows[good]]:
            if errors[d] is None:
                errors[d] = "the text has no tokens for this tokenizer"
        is_failed = np.fromiter((e is not None for e in errors), dtype=bool, count=len(errors))
        failed = np.flatnonzero(is_failed)
        # A document that failed keeps one row, its id and reason only; the head's rows of it go.
        if is_failed[document].any():
            keep = np.flatnonzero(~is_failed[document])
            document = document[keep]
            produced.columns = {k: v.take(pa.array(keep)) for k, v in produced.columns.items()}
        # Error rows go between the others, at their documents' places.
        order = np.argsort(np.concatenate([document, failed]), kind="stable") if len(failed) else None
        document = np.concatenate([document, failed])[order] if len(failed) else document
        rows = pa.array(document)
        arrays = []
        for f in schema:
            if f.name == C.ID:
                arrays.append(column(batch, C.ID).take(rows))
            elif order is None:
                arrays.append(produced.columns[f.name].cast(f.type))
            else:
                values = pa.concat_arrays([produced.columns[f.name].cast(f.type), pa.nulls(len(failed), f.type)])
                arrays.append(values.take(pa.array(order)))
        table = pa.Table.from_arrays(arrays, schema=schema)
        if self.carried:
            for i, name in enumerate(self.carried):
                col = batch.column(carry_key(name)).take(rows)
                table = table.add_column(1 + i, pa.field(name, col.type), col)
        first = np.ones(len(document), dtype=bool)
        first[1:] = document[1:] != document[:-1]
        windows = column(batch, C.INPUT_IDS)
        n_windows = np.where(windows.is_valid().to_numpy(zero_copy_only=False), np.diff(windows.offsets.to_numpy()), 0)
        first_arr = pa.array(first)
        internal = {
            C.SHARD: column(batch, C.SHARD).take(rows),
            C.ROW: column(batch, C.ROW).take(rows),
            C.ERROR: pc.if_else(first_arr, pa.array(errors, pa.string()).take(rows), pa.scalar(None, pa.string())),
            C.N_TOKENS: _first_only(self._stat(batch, C.N_TOKENS)[document], first),
            C.PADDED_SLOTS: _first_only(self._stat(batch, C.PADDED_SLOTS)[document], first),
            C.TRUNCATED: _first_only(self._stat(batch, C.TRUNCATED).astype(bool)[document], first),
            C.N_WINDOWS: _first_only(n_windows.astype(np.int64)[document], first),
            C.DOCUMENTS: first.astype(np.int64),
        }
        if C.SHARD_ROWS in batch.schema.names:  # a grouped read's: carried to the writer
            internal[C.SHARD_ROWS] = column(batch, C.SHARD_ROWS).take(rows)
        for name, values in internal.items():
            t = _INTERNAL_TYPES[name]
            table = table.append_column(pa.field(name, t), values.cast(t) if isinstance(values, pa.Array) else pa.array(values, t))
        return table

    @staticmethod
    def _stat(batch: pa.Table, name: str) -> np.ndarray:
        """A per-document statistic column, 0 where it is missing or null (error rows)."""
        if name not in batch.schema.names:
            return np.zeros(batch.num_rows, dtype=np.int64)
        col = column(batch, name)
        return col.fill_null(False if pa.types.is_boolean(col.type) else 0).to_numpy(zero_copy_only=False)
