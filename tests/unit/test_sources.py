"""The reader: bad rows become error rows with reasons, ids keep one type per job, made-up ids are stable."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import columns as C
from pipeline.sources import ShardReader, count_rows, list_shards, probe_id_type
from pipeline.spec import InputSpec

COLUMNS = {C.TEXT: "body"}


def _jsonl(path, lines):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt") as f:
        for line in lines:
            f.write(line if isinstance(line, str) else json.dumps(line))
            f.write("\n")
    return path


def _read(reader, shard):
    return pa.concat_tables(list(reader.read(shard)))


def test_bad_jsonl_rows_become_error_rows_and_good_rows_survive(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl.gz", [
        {"doc": 1, "body": "fine"}, {"doc": 2, "body": None}, {"doc": 3, "body": ""}, {"doc": 4, "body": 42},
        "{not json", {"doc": None, "body": "no id"}, "", {"doc": 7, "body": "  "}, "[1, 2]", {"doc": 9, "body": "ok"},
    ])
    (shard,) = list_shards(InputSpec(path=str(path)))
    assert shard.format == "jsonl"
    table = _read(ShardReader(COLUMNS, "doc"), shard)
    rows = table.to_pylist()
    assert table.num_rows == count_rows(shard) == 9  # the blank line is not a row
    errors = {r[C.ROW]: r[C.ERROR] for r in rows}
    assert errors[0] is None and errors[8] is None
    assert errors[1] == "text is null" and errors[2] == "text is empty" and errors[6] == "text is empty"
    assert errors[3] == "text is not a string (got int)"
    assert errors[4].startswith("line 5: invalid JSON")
    assert errors[5] == "id is null"
    assert errors[7].startswith("line 9: invalid JSON (expected a JSON object")
    assert table.schema.field(C.ID).type == pa.int64()


def test_ids_take_the_jobs_type_and_misfits_are_errors(tmp_path):
    first = _jsonl(tmp_path / "1.jsonl", [{"id": 1, "text": "a"}])
    second = _jsonl(tmp_path / "2.jsonl", [{"id": "x-7", "text": "b"}, {"id": "8", "text": "c"}])
    shards = list_shards(InputSpec(path=str(tmp_path / "*.jsonl")))
    id_type = probe_id_type(shards, "id")
    assert id_type == pa.int64()
    reader = ShardReader({C.TEXT: "text"}, "id", id_type=id_type)
    table = _read(reader, shards[1])
    assert table.schema.field(C.ID).type == pa.int64()
    assert table.column(C.ID).to_pylist() == [None, 8]
    assert "not of the job's id type" in table.column(C.ERROR)[0].as_py()
    assert table.column(C.ERROR)[1].as_py() is None


def test_parquet_without_id_column_gets_stable_ids_and_keeps_its_types(tmp_path):
    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"body": ["x", None, "y"]}), path, row_group_size=2)
    (shard,) = list_shards(InputSpec(path=str(tmp_path)))
    table = _read(ShardReader(COLUMNS, "id"), shard)
    assert table.column(C.ID).to_pylist() == ["part-0.parquet:0", "part-0.parquet:1", "part-0.parquet:2"]
    assert table.column(C.ERROR).to_pylist() == [None, "text is null", None]

    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"id": pa.array([5, 6], pa.int32()), "body": ["a", "b"]}), typed)
    (shard,) = list_shards(InputSpec(path=str(typed)))
    assert _read(ShardReader(COLUMNS, "id"), shard).schema.field(C.ID).type == pa.int32()


def test_a_parquet_file_without_the_text_column_errors_every_row(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": [1, 2], "content": ["a", "b"]}), path)
    (shard,) = list_shards(InputSpec(path=str(path)))
    table = _read(ShardReader(COLUMNS, "id"), shard)
    assert table.num_rows == 2
    assert all("column 'body' not in p.parquet" in e for e in table.column(C.ERROR).to_pylist())
