"""output.compression: the Parquet codec of the result and error files (zstd unless the spec says
otherwise); staging parts keep pyarrow's default."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.local import LocalRunner
from pipeline.output import STAGING_DIR, OutputDir
from pipeline.sinks import Finalizing, WriteParts, finalize_shard
from pipeline.sources import Shard
from pipeline.spec import spec_from_dict


def _codecs(path) -> set[str]:
    meta = pq.ParquetFile(path).metadata
    return {meta.row_group(g).column(c).compression for g in range(meta.num_row_groups) for c in range(meta.num_columns)}


@pytest.mark.parametrize("compression,codec", [("gzip", "GZIP"), ("none", "UNCOMPRESSED"), ("lz4", "LZ4")])
def test_write_table_uses_the_codec(tmp_path, compression, codec):
    out = OutputDir(str(tmp_path))
    out.write_table("a.parquet", pa.table({"x": list(range(100))}), compression=compression)
    assert _codecs(tmp_path / "a.parquet") == {codec}
    out.write_table("b.parquet", pa.table({"x": [1]}))
    assert _codecs(tmp_path / "b.parquet") == {"SNAPPY"}  # staging parts: as before


def _spec(model_dir, out, **output):
    return spec_from_dict({"input": {"path": "unused"}, "model": {"path": model_dir, "head": "token-classification",
                                                                  "max_length": 32},
                           "output": {"path": str(out), **output}})


@pytest.mark.parametrize("compression,codec", [(None, "ZSTD"), ("gzip", "GZIP")])
def test_result_and_error_files_are_written_with_output_compression(tmp_path, tiny_ner_dir, compression, codec):
    spec = _spec(tiny_ner_dir, tmp_path, **({"compression": compression} if compression else {}))
    assert spec.output.compression == (compression or "zstd")
    runner = LocalRunner(spec)
    rows = [{"id": 1, "text": "Alice works at Acme."}, {"id": 2, "text": None}, {"id": 3, "text": "Bob."}]
    table = runner.postprocess(runner.predict(runner.tokenize(runner.prepare(rows))))
    out = OutputDir(str(tmp_path))
    WriteParts(Finalizing(out, 1000), {0: Shard(0, "docs.jsonl", "jsonl", key="docs")})(table)
    assert all(_codecs(tmp_path / p) == {"SNAPPY"} for p in out.list(f"{STAGING_DIR}/docs", ".parquet"))
    kwargs = {"compression": spec.output.compression} if compression else {}
    marker = finalize_shard(Finalizing(out, 1000, file_metadata={"k": "v"}, **kwargs),
                            Shard(0, "docs.jsonl", "jsonl", key="docs"), 3)
    assert marker.files == ["docs-00000.parquet"] and marker.error_files == ["_errors/docs-00000.parquet"]
    for rel in marker.files + marker.error_files:
        assert _codecs(tmp_path / rel) == {codec}, rel
    assert pq.read_table(tmp_path / "docs-00000.parquet").column("id").to_pylist() == [1, 3]
