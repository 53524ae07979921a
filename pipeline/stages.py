"""The CPU stages around the model: tokenize and postprocess. Plain callables over `pyarrow.Table`
batches; Ray only composes them (pipeline/job.py), so tests and benchmarks call them directly.

Error rows (`_error` set) pass through every stage untouched and are written to `_errors/`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline import columns as C
from pipeline.heads import build_head
from pipeline.heads.base import Context, RowError
from pipeline.models import check_architecture, load_config, load_tokenizer, resolve_model_dir
from pipeline.sources import carry_key, is_carry_key
from pipeline.spec import SpecError

_COMMON_ENCODE_FIELDS = [
    pa.field(C.INPUT_IDS, pa.list_(pa.list_(pa.int32()))),
    pa.field(C.TOKEN_TYPE_IDS, pa.list_(pa.list_(pa.int32()))),
    pa.field(C.N_TOKENS, pa.int64()),
    pa.field(C.TRUNCATED, pa.bool_()),
]


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


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _list_views(col: pa.ListArray) -> list:
    """One NumPy view per list (None for a null), without a Python object per element."""
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy(zero_copy_only=False)
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    return [values[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(col))]


def rows_with_array_views(batch: pa.Table) -> list[dict]:
    """Rows as dicts, numeric list columns as NumPy arrays (list<list<...>> as lists of arrays): a
    megabyte document's per-token columns would otherwise become millions of Python objects."""
    columns = {}
    for name in batch.schema.names:
        col = batch.column(name).combine_chunks()
        t = col.type
        if pa.types.is_list(t) and _is_number(t.value_type):
            columns[name] = _list_views(col)
        elif pa.types.is_list(t) and pa.types.is_list(t.value_type) and _is_number(t.value_type.value_type):
            inner = _list_views(col.values)
            offsets = col.offsets.to_numpy()
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            columns[name] = [inner[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(col))]
        else:
            columns[name] = col.to_pylist()
    return [{name: values[i] for name, values in columns.items()} for i in range(batch.num_rows)]


class Tokenize:
    """CPU stage: text -> windows of token ids (never padded; padding happens per micro-batch)."""

    def __init__(self, spec, head=None):
        self.head = head or load_head(spec)
        self.fields = _COMMON_ENCODE_FIELDS + self.head.encode_schema()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select([n for n in batch.schema.names if not is_carry_key(n)]).to_pylist()
        errors = [r[C.ERROR] for r in rows]
        good = [i for i, e in enumerate(errors) if e is None]
        encoded: list[dict | None] = [None] * len(rows)
        if good:
            results = self.head.encode_batch([rows[i] for i in good])
            for i, res in zip(good, results):
                if isinstance(res, RowError):
                    errors[i] = str(res)
                else:
                    encoded[i] = res
        batch = _with_errors(batch, errors)
        for f in self.fields:
            values = [None if e is None else e[f.name] for e in encoded]
            batch = batch.append_column(f, pa.array(values, type=f.type))
        return batch


def _output_array(values: list, type: pa.DataType) -> pa.Array:
    """One output column. Vectors (fixed_size_list of floats) are stacked into one flat NumPy array
    first, not converted value by value; None (error rows) stays null."""
    if not (pa.types.is_fixed_size_list(type) and pa.types.is_floating(type.value_type)):
        return pa.array(values, type=type)
    size = type.list_size
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    flat = np.zeros((len(values), size), dtype=type.value_type.to_pandas_dtype())
    if valid.any():
        flat[valid] = np.stack([np.asarray(v).reshape(size) for v in values if v is not None])
    mask = None if valid.all() else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), size, mask=mask)


class Postprocess:
    """CPU stage: per-window model outputs -> output rows (one per document, or one per token)."""

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
        out_cols: dict[str, list] = {name: [] for name in schema.names}
        internal: dict[str, list] = {C.SHARD: [], C.ROW: [], C.ERROR: [], C.N_TOKENS: [], C.PADDED_SLOTS: [],
                                     C.TRUNCATED: [], "_n_windows": [], "_documents": []}
        stat_cols = [c for c in (C.N_TOKENS, C.PADDED_SLOTS, C.TRUNCATED) if c in batch.schema.names]
        document: list[int] = []  # per output row, its document's row in the batch
        head_columns = batch.select([n for n in batch.schema.names if not is_carry_key(n)])
        for d, row in enumerate(rows_with_array_views(head_columns)):
            error = row[C.ERROR]
            produced: list[dict] = []
            if error is None:
                try:
                    produced = self.head.postprocess(row)
                except RowError as e:
                    error = str(e)
                if error is None and not produced:
                    error = "the text has no tokens for this tokenizer"
            if error is not None:
                produced = [{C.ID: row[C.ID]}]
            n_windows = len(row.get(C.INPUT_IDS) or [])
            document.extend([d] * len(produced))
            for k, out_row in enumerate(produced):
                for name in schema.names:
                    out_cols[name].append(out_row.get(name))
                first = k == 0
                internal[C.SHARD].append(row[C.SHARD])
                internal[C.ROW].append(row[C.ROW])
                internal[C.ERROR].append(error if first else None)
                internal["_documents"].append(1 if first else 0)
                internal["_n_windows"].append(n_windows if first else 0)
                for c in (C.N_TOKENS, C.PADDED_SLOTS):
                    internal[c].append((row.get(c) or 0) if first and c in stat_cols else 0)
                internal[C.TRUNCATED].append(bool(row.get(C.TRUNCATED)) if first else False)
        arrays = [_output_array(out_cols[f.name], f.type) for f in schema]
        table = pa.Table.from_arrays(arrays, schema=schema)
        if self.carried:
            take = pa.array(document, type=pa.int64())
            for i, name in enumerate(self.carried):
                col = batch.column(carry_key(name)).take(take)
                table = table.add_column(1 + i, pa.field(name, col.type), col)
        types = {C.SHARD: pa.int32(), C.ROW: pa.int64(), C.ERROR: pa.string(), C.N_TOKENS: pa.int64(),
                 C.PADDED_SLOTS: pa.int64(), C.TRUNCATED: pa.bool_(), "_n_windows": pa.int64(), "_documents": pa.int64()}
        for name, values in internal.items():
            table = table.append_column(pa.field(name, types[name]), pa.array(values, type=types[name]))
        return table
