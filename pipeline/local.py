"""Run the stages in this process, without Ray, on rows given in memory: the same code path as the
job minus reading, writing and distribution. Tests and the GPU benchmark use it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import columns as C
from pipeline.sources import Shard, ShardReader, reader_columns


class LocalRunner:
    """Loads the head and model once; `run(rows)` returns (outputs, errors) as Arrow tables."""

    def __init__(self, spec, device: str | None = None):
        from pipeline.predict import head_stages

        self.spec = spec
        parts = head_stages(spec, device)
        self.tokenize, self.predict, self.postprocess = parts["tokenize"], parts["predict"], parts["postprocess"]
        self.columns, self.optional = reader_columns(spec)

    def prepare(self, rows: list[dict]) -> pa.Table:
        """Rows with the user's column names -> the reader's internal table (validation included)."""
        reader = ShardReader(self.columns, self.spec.input.id_column, None, self.optional)
        internal = [{key: r.get(user) for key, user in self.columns.items()} | {C.ID: r.get(self.spec.input.id_column)}
                    for r in rows]
        has_id = any(self.spec.input.id_column in r for r in rows)
        return reader.to_table(internal, Shard(0, "memory", "jsonl"), 0, None if has_id else False)

    def run(self, rows: list[dict]) -> tuple[pa.Table, pa.Table]:
        out = self.postprocess(self.predict(self.tokenize(self.prepare(rows))))
        is_error = pc.is_valid(out.column(C.ERROR))
        internal = [n for n in out.schema.names if n.startswith("_")]
        results = out.filter(pc.invert(is_error)).drop_columns(internal)
        errors = out.filter(is_error).select([C.ID, C.ERROR])
        return results, errors
