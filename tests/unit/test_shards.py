"""The shard as the unit of completion, without Ray: parts -> final files exactly once, the resume plan
and what it may remove, and the lease."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import columns as C
from pipeline.markers import FingerprintMismatch, fingerprint, plan_resume
from pipeline.output import OutputDir
from pipeline.sinks import ShardIncomplete, WriteParts, finalize_shard
from pipeline.sources import Shard

FIELDS = {"model.head": "token-classification", "head.aggregation_strategy": "simple"}


def _batch(shard: int, rows: list[int], tokens_per_doc: int = 1, error_rows=()) -> pa.Table:
    """A postprocessed batch: `tokens_per_doc` output rows per document, stats on the first one."""
    data = {k: [] for k in ("id", "label", C.SHARD, C.ROW, C.ERROR, C.N_TOKENS, C.PADDED_SLOTS, C.TRUNCATED,
                            "_n_windows", "_documents")}
    for r in rows:
        for k in range(1 if r in error_rows else tokens_per_doc):
            first = k == 0
            data["id"].append(shard * 100 + r)
            data["label"].append(None if r in error_rows else f"t{k}")
            data[C.SHARD].append(shard)
            data[C.ROW].append(r)
            data[C.ERROR].append(f"line {r + 1}: text is empty" if r in error_rows and first else None)
            data[C.N_TOKENS].append(5 if first and r not in error_rows else 0)
            data[C.PADDED_SLOTS].append(1 if first and r not in error_rows else 0)
            data[C.TRUNCATED].append(False)
            data["_n_windows"].append(1 if first and r not in error_rows else 0)
            data["_documents"].append(1 if first else 0)
    types = {C.SHARD: pa.int32(), C.ROW: pa.int64(), C.N_TOKENS: pa.int64(), C.PADDED_SLOTS: pa.int64(),
             "_n_windows": pa.int64(), "_documents": pa.int64(), C.ERROR: pa.string(), "label": pa.string()}
    return pa.table({k: pa.array(v, type=types.get(k)) for k, v in data.items()})


def _finalize(out, key="a", rows=6, rows_per_file=4):
    return finalize_shard(out, key, rows, rows_per_file, {"bert_batch.head": "x"}, {"identity": {}})


def test_parts_become_final_files_in_input_order_each_row_once(tmp_path):
    out = OutputDir(str(tmp_path))
    write = WriteParts(out, {0: "a", 1: "b"})
    # Batches arrive out of order; shard b's rows share a batch with a's; a retried batch (rows 2, 3)
    # comes back cut differently (rows 1-3), so rows 2 and 3 are in two parts.
    stats = write(pa.concat_tables([_batch(0, [4, 5], tokens_per_doc=2), _batch(1, [0])]))
    assert stats.to_pydict() == {"shard": [0, 1], "documents": [2, 1], "rows_errored": [0, 0], "tokens": [10, 5]}
    write(_batch(0, [2, 3], tokens_per_doc=2, error_rows=(3,)))
    write(_batch(0, [1, 2, 3], tokens_per_doc=2, error_rows=(3,)))
    write(_batch(0, [2, 3], tokens_per_doc=2, error_rows=(3,)))  # the same batch again: same part name
    assert len(list((tmp_path / "_staging" / "a").glob("*.parquet"))) == 3
    with pytest.raises(ShardIncomplete, match="1 of 6 rows not written yet"):
        _finalize(out)
    write(_batch(0, [0], tokens_per_doc=2))

    marker = _finalize(out)
    assert marker["files"] == ["a-00000.parquet", "a-00001.parquet", "a-00002.parquet"]
    assert marker["error_files"] == ["_errors/a-00000.parquet"]
    assert (marker["rows"], marker["rows_written"], marker["rows_errored"], marker["output_rows"]) == (6, 5, 1, 10)
    assert marker["tokens"] == 25 and marker["top_errors"] == {"text is empty": 1}
    results = pa.concat_tables([pq.read_table(tmp_path / f) for f in marker["files"]])
    assert [pq.read_table(tmp_path / f).num_rows for f in marker["files"]] == [4, 4, 2]
    assert results.column_names == ["id", "label"]
    assert results.column("id").to_pylist() == [0, 0, 1, 1, 2, 2, 4, 4, 5, 5]
    assert results.column("label").to_pylist() == ["t0", "t1"] * 5
    assert pq.read_table(tmp_path / "a-00000.parquet").schema.metadata == {b"bert_batch.head": b"x"}
    errors = pq.read_table(tmp_path / "_errors" / "a-00000.parquet").to_pylist()
    assert errors == [{"id": 3, "error": "line 4: text is empty", "shard": "a", "row": 3}]
    assert json.loads((tmp_path / "_shards" / "a.json").read_text()) == marker
    assert not (tmp_path / "_staging" / "a").exists() and not (tmp_path / "_shards" / "a.pending.json").exists()
    assert (tmp_path / "_staging" / "b").is_dir()  # shard b is still in flight, untouched


def test_a_part_with_rows_beyond_the_shard_is_refused(tmp_path):
    out = OutputDir(str(tmp_path))
    WriteParts(out, {0: "a"})(_batch(0, [0, 1, 2]))
    with pytest.raises(ShardIncomplete, match="holds row 2, but the shard has 2 rows"):
        _finalize(out, rows=2)


def test_an_empty_shard_is_done_with_no_files(tmp_path):
    out = OutputDir(str(tmp_path))
    marker = _finalize(out, key="empty", rows=0)
    assert (marker["rows"], marker["files"], marker["error_files"]) == (0, [], [])
    assert json.loads((tmp_path / "_shards" / "empty.json").read_text()) == marker


def _shard(tmp_path, key, size=10):
    return Shard(0, str(tmp_path / f"{key}.jsonl"), "jsonl", key=key, identity={"size": size, "mtime": 1.0})


def _marker(out, key, fields=FIELDS, size=10, files=None):
    files = files if files is not None else [f"{key}-00000.parquet"]
    for f in files:
        out.write_bytes(f, b"x")
    out.write_json(f"_shards/{key}.json", {"key": key, "identity": {"size": size, "mtime": 1.0}, "files": files,
                                           "error_files": [], "fingerprint": fingerprint(fields), "spec": fields})


def test_resume_plan_skips_matching_shards_and_removes_only_the_jobs_own_files(tmp_path):
    out = OutputDir(str(tmp_path))
    _marker(out, "a")
    _marker(out, "b", size=99)  # its input changed since
    out.write_json("_shards/c.pending.json", {"files": ["c-00000.parquet", "mine.csv", "../escape.parquet"]})
    out.write_bytes("c-00000.parquet", b"half")
    out.write_bytes("_staging/c/r000000000000-abc.parquet", b"part")
    out.write_bytes("mine.csv", b"user")
    shards = [_shard(tmp_path, k) for k in "abc"]

    plan = plan_resume(out, shards, FIELDS)
    assert list(plan.done) == ["a"] and [s.key for s in plan.todo] == ["b", "c"]
    assert sorted(plan.remove) == sorted([
        "b-00000.parquet", "_shards/b.json", "c-00000.parquet", "_shards/c.pending.json",
        "_staging/c/r000000000000-abc.parquet", "_SUMMARY.json", "_REPORT.html", "_SUCCESS"])
    out.remove(plan.remove)
    assert (tmp_path / "mine.csv").read_bytes() == b"user" and (tmp_path / "a-00000.parquet").exists()

    fresh = plan_resume(out, shards, FIELDS, fresh=True)
    assert fresh.done == {} and "a-00000.parquet" in fresh.remove and "_shards/a.json" in fresh.remove


def test_a_marker_made_with_other_settings_refuses_naming_the_keys(tmp_path):
    out = OutputDir(str(tmp_path))
    _marker(out, "a", fields={**FIELDS, "head.aggregation_strategy": "max"})
    with pytest.raises(FingerprintMismatch, match=r"head\.aggregation_strategy \('max' there, 'simple' now\).*--fresh"):
        plan_resume(out, [_shard(tmp_path, "a")], FIELDS)
    assert plan_resume(out, [_shard(tmp_path, "a")], FIELDS, fresh=True).todo
