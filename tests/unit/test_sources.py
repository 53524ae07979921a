"""The reader: bad rows become error rows with reasons, unreadable shards raise, ids keep one type per
job (strings win), made-up ids are stable, shards have unique output keys and a content identity."""

import bz2
import gzip
import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

try:
    from compression import zstd  # Python 3.14
except ImportError:
    from backports import zstd  # the project's dependency before 3.14

from pipeline import columns as C
from pipeline import sources
from pipeline.sources import (
    InputError, Shard, ShardReader, ShardUnreadable, list_shards, probe_id_type, shard_columns,
)
from pipeline.spec import InputSpec

COLUMNS = {C.TEXT: "body"}
COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".zst": zstd.compress}


def _jsonl(path, lines):
    data = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()
    return _write(path, data)


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix
    path.write_bytes(COMPRESS[suffix](data) if suffix in COMPRESS else data)
    return path


def _read(reader, shard):
    return pa.concat_tables(list(reader.read(shard)))


def _read_until_unreadable(reader, shard):
    """The tables yielded before the reader raised ShardUnreadable, and its message."""
    tables = []
    with pytest.raises(ShardUnreadable) as raised:
        for table in reader.read(shard):
            tables.append(table)
    return tables, str(raised.value)


def _shards(path, **kw):
    return list_shards(InputSpec(path=str(path), **kw))


def test_bad_jsonl_rows_become_error_rows_and_good_rows_survive(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl.gz", [
        {"doc": 1, "body": "fine"}, {"doc": 2, "body": None}, {"doc": 3, "body": ""}, {"doc": 4, "body": 42},
        "{not json", {"doc": None, "body": "no id"}, "", {"doc": 7, "body": "  "}, "[1, 2]", {"doc": 9, "body": "ok"},
    ])
    (shard,) = _shards(path)
    assert (shard.format, shard.compression) == ("jsonl", "gzip")
    tables = list(ShardReader(COLUMNS, "doc").read(shard))
    assert sum(t.num_rows for t in tables) == 9  # the blank line is not a row
    table = pa.concat_tables(tables)
    errors = {r[C.ROW]: r[C.ERROR] for r in table.to_pylist()}
    assert errors[0] is None and errors[8] is None
    assert errors[1] == "text is null" and errors[2] == "text is empty" and errors[6] == "text is empty"
    assert errors[3] == "text is not a string (got int)"
    assert errors[4].startswith("line 5: invalid JSON")
    assert errors[5] == "id is null"
    assert errors[7] == "line 9: invalid JSON (expected a JSON object, got list)"
    assert table.schema.field(C.ID).type == pa.int64()


@pytest.mark.parametrize("suffix, compression", [(".gz", "gzip"), (".bz2", "bz2"), (".zst", "zstd")])
def test_compressed_jsonl_shards_are_read(tmp_path, suffix, compression):
    _jsonl(tmp_path / f"part.jsonl{suffix}", [{"id": "a", "body": "x"}, {"id": "b", "body": "y"}])
    (shard,) = _shards(tmp_path)
    assert (shard.format, shard.compression, shard.key) == ("jsonl", compression, "part")
    table = _read(ShardReader(COLUMNS, "id"), shard)
    assert table.column(C.ID).to_pylist() == ["a", "b"]
    assert table.column(C.TEXT).to_pylist() == ["x", "y"]


def test_files_of_unknown_format_are_an_error_unless_input_format_is_set(tmp_path):
    _jsonl(tmp_path / "a.jsonl.bz2", [{"id": 1, "body": "x"}])
    for name in ["b.txt", "c.parquet.snappy", "d.md", "e.csv"]:
        (tmp_path / name).write_text("?")
    with pytest.raises(InputError) as raised:
        _shards(tmp_path)
    assert str(raised.value) == (
        f"input.format: cannot tell the format of b.txt, c.parquet.snappy, d.md and 1 more in {tmp_path}; "
        "set input.format to parquet or jsonl, or move those files out of the input"
    )

    only = tmp_path / "parquet"
    only.mkdir()
    pq.write_table(pa.table({"id": [1, 2], "body": ["p", "q"]}), only / "c.parquet.snappy")
    (shard,) = _shards(only, format="parquet")
    assert (shard.format, shard.compression, shard.key) == ("parquet", None, "c.parquet.snappy")
    assert _read(ShardReader(COLUMNS, "id"), shard).column(C.TEXT).to_pylist() == ["p", "q"]


def test_hidden_files_and_directories_are_skipped(tmp_path):
    _jsonl(tmp_path / "day" / "a.jsonl", [{"id": 1, "body": "x"}])
    for hidden in ["_SUCCESS", ".DS_Store", "day/.a.jsonl.crc", "_temporary/0/b.jsonl", ".cache/c.txt"]:
        _write(tmp_path / hidden, b"?")
    assert [s.key for s in _shards(tmp_path)] == ["day__a"]
    assert [s.key for s in _shards(tmp_path / "*" / "*")] == ["day__a"]


def test_keys_name_nested_shards_uniquely_and_deterministically(tmp_path):
    for rel in ["day/a.jsonl.gz", "day/b c.ndjson", "x.jsonl", "x.parquet", "p q.jsonl", "p_q.jsonl", "m.PQ"]:
        if rel.endswith(("parquet", "PQ")):
            pq.write_table(pa.table({"id": [1]}), tmp_path / rel)
        else:
            _jsonl(tmp_path / rel, [{"id": 1}])
    shards = _shards(tmp_path)
    keys = {s.name: s.key for s in shards}
    assert keys["a.jsonl.gz"] == "day__a"
    assert keys["b c.ndjson"] == "day__b_c"
    assert (keys["x.jsonl"], keys["x.parquet"]) == ("x.jsonl", "x.parquet")  # same stem: extensions kept
    assert keys["m.PQ"] == "m"
    # "p q" and "p_q" sanitize alike even with extensions: a hash of the real name tells them apart.
    assert keys["p q.jsonl"].startswith("p_q.jsonl-") and keys["p_q.jsonl"].startswith("p_q.jsonl-")
    assert len(set(keys.values())) == len(shards) == 7
    assert [(s.index, s.path, s.key) for s in _shards(tmp_path)] == [(s.index, s.path, s.key) for s in shards]

    # The root is the glob's fixed directory, or a single file's own directory.
    assert [s.key for s in _shards(tmp_path / "da*" / "*.gz")] == ["day__a"]
    assert [s.key for s in _shards(tmp_path / "day" / "*.gz")] == ["a"]
    assert [s.key for s in _shards(tmp_path / "day" / "a.jsonl.gz")] == ["a"]


def test_local_shards_carry_size_times_and_inode(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", [{"id": 1, "body": "x"}])
    (shard,) = _shards(tmp_path)
    st = os.stat(path)
    assert shard.identity == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                              "inode": st.st_ino}
    assert shard.path == str(path)


def test_a_truncated_gzip_shard_raises_after_its_good_rows(tmp_path):
    random.seed(0)
    lines = [{"id": i, "body": "".join(random.choices("abcdefghij", k=40))} for i in range(100_000)]
    path = _jsonl(tmp_path / "day.jsonl.gz", lines)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (shard,) = _shards(path)
    tables, message = _read_until_unreadable(ShardReader(COLUMNS, "id"), shard)
    ids = pa.concat_tables(tables).column(C.ID).to_pylist()
    assert ids == list(range(len(ids))) and len(ids) >= 4096  # whole batches of good rows came first
    assert message.startswith("day.jsonl.gz: truncated or corrupt gzip data after line ")
    assert "Compressed file ended before the end-of-stream marker was reached" in message
    assert int(message.split("after line ")[1].split()[0]) >= len(ids)


def test_a_truncated_zstd_shard_raises(tmp_path):
    # The `zstandard` package's stream reader ends quietly inside a frame; backports.zstd (a dependency) raises.
    path = _jsonl(tmp_path / "t.jsonl.zst", [{"id": i, "body": "x" * i} for i in range(2000)])
    path.write_bytes(path.read_bytes()[:-100])
    (shard,) = _shards(path)
    _, message = _read_until_unreadable(ShardReader(COLUMNS, "id"), shard)
    assert message.startswith("t.jsonl.zst: truncated or corrupt zstd data")


def test_a_shard_that_cannot_be_opened_raises(tmp_path):
    (shard,) = _shards(_jsonl(tmp_path / "gone.jsonl", [{"id": 1, "body": "x"}]))
    os.remove(shard.path)
    _, message = _read_until_unreadable(ShardReader(COLUMNS, "id"), shard)
    assert message.startswith("gone.jsonl: cannot be opened (") and "No such file" in message


def test_a_parquet_file_with_a_corrupt_footer_raises(tmp_path):
    path = tmp_path / "part-3.parquet"
    pq.write_table(pa.table({"id": [1, 2], "body": ["a", "b"]}), path)
    data = path.read_bytes()
    path.write_bytes(data[:-4] + b"XXXX")  # the trailing magic bytes
    (shard,) = _shards(path)
    _, message = _read_until_unreadable(ShardReader(COLUMNS, "id"), shard)
    assert message.startswith("part-3.parquet: not a readable Parquet file (")
    assert "magic bytes not found" in message
    with pytest.raises(ShardUnreadable, match="part-3.parquet: not a readable Parquet file"):
        shard_columns(shard)


def _three_row_groups(path, **kw):
    table = pa.table({"id": list(range(3000)), "body": [f"text number {i:04d}" for i in range(3000)]})
    pq.write_table(table, path, row_group_size=1000, use_dictionary=False, **kw)
    return pq.ParquetFile(path).metadata.row_group(1).column(1)  # the body column of row group 1


def test_a_parquet_file_with_a_corrupt_data_page_raises_after_the_good_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_BATCH_ROWS", 1000)  # batches end where row groups do
    path = tmp_path / "p.parquet"
    chunk = _three_row_groups(path, compression="gzip")
    data = bytearray(path.read_bytes())
    middle = chunk.data_page_offset + chunk.total_compressed_size // 2
    data[middle : middle + 32] = bytes(b ^ 0xFF for b in data[middle : middle + 32])
    path.write_bytes(bytes(data))
    (shard,) = _shards(path)
    tables, message = _read_until_unreadable(ShardReader(COLUMNS, "id"), shard)
    assert sum(t.num_rows for t in tables) == 1000
    assert message.startswith("p.parquet: corrupt or unreadable Parquet data after row 1000 (")


def test_parquet_page_checksums_catch_corruption_that_still_decodes(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_BATCH_ROWS", 1000)
    path = tmp_path / "p.parquet"
    _three_row_groups(path, compression="none", write_page_checksum=True)
    data = path.read_bytes()
    assert data.count(b"text number 1500") == 1
    path.write_bytes(data.replace(b"text number 1500", b"text number 9999"))  # same length: decodes fine
    (shard,) = _shards(path)
    tables, message = _read_until_unreadable(ShardReader(COLUMNS, "id"), shard)
    assert sum(t.num_rows for t in tables) == 1000
    assert "CRC checksum verification failed" in message


def test_jsonl_lines_are_split_on_newline_only(tmp_path):
    nbsp = "\u00a0"
    data = (b'{"id": 1, "body": "one\rtwo"}\r\n'  # a raw CR inside a string, and a CRLF ending
            b" \t\r\n"  # blank: ASCII whitespace only
            + nbsp.encode() + b"\n"  # not blank: a row, and not JSON
            + b'{"id": 2, "body": "tab\there"}\n'
            + b'{"id": 3, "body": "last, no newline"}')
    (shard,) = _shards(_write(tmp_path / "a.jsonl", data))
    rows = _read(ShardReader(COLUMNS, "id"), shard).to_pylist()
    assert [(r[C.ID], r[C.TEXT], r[C.ROW]) for r in rows] == [
        (1, "one\rtwo", 0), (None, None, 1), (2, "tab\there", 2), (3, "last, no newline", 3)]
    assert rows[0][C.ERROR] is None and rows[2][C.ERROR] is None and rows[3][C.ERROR] is None
    assert rows[1][C.ERROR].startswith("line 3: invalid JSON (Expecting value")


def test_a_line_that_is_not_utf8_is_an_error_row_and_its_neighbours_are_fine(tmp_path):
    data = b'{"id": 1, "body": "caf\xc3\xa9"}\n{"id": 2, "body": "caf\xe9"}\n{"id": 3, "body": "ok"}\n'
    (shard,) = _shards(_write(tmp_path / "a.jsonl", data))
    rows = _read(ShardReader(COLUMNS, "id"), shard).to_pylist()
    assert [(r[C.ID], r[C.TEXT], r[C.ERROR]) for r in rows] == [
        (1, "café", None), (None, None, "line 2: not valid UTF-8 (invalid continuation byte)"), (3, "ok", None)]


def test_ids_that_are_not_int64_or_strings_are_error_rows(tmp_path):
    big = 2**64
    path = _jsonl(tmp_path / "a.jsonl", [
        {"id": 1, "body": "a"}, {"id": big, "body": "b"}, {"id": 2.5, "body": "c"}, {"id": True, "body": "d"},
        {"id": [1], "body": "e"}, {"id": -(2**63), "body": "f"},
    ])
    (shard,) = _shards(path)
    assert probe_id_type([shard], "id") == pa.int64()
    table = _read(ShardReader(COLUMNS, "id", id_type=pa.int64()), shard)
    assert table.column(C.ID).to_pylist() == [1, None, None, None, None, -(2**63)]
    assert table.column(C.ERROR).to_pylist() == [
        None,
        "line 2: id 18446744073709551616 does not fit in a 64-bit integer",
        "id 2.5 is a float; ids must be integers or strings",
        "id True is a bool; ids must be integers or strings",
        "id [1] is a list; ids must be integers or strings",
        None,
    ]


def test_strings_win_across_shards_and_no_string_becomes_a_number(tmp_path):
    pq.write_table(pa.table({"id": pa.array([7, 8], pa.int32()), "body": ["a", "b"]}), tmp_path / "1.parquet")
    _jsonl(tmp_path / "2.jsonl", [{"id": None, "body": "null first"}, {"id": "007", "body": "c"},
                                  {"id": 9, "body": "d"}])
    shards = _shards(tmp_path)
    id_type = probe_id_type(shards, "id")
    assert id_type == pa.string()  # the JSONL shard's first non-null id is a string
    reader = ShardReader(COLUMNS, "id", id_type=id_type)
    ints, strings = (_read(reader, s) for s in shards)
    assert ints.schema.field(C.ID).type == strings.schema.field(C.ID).type == pa.string()
    assert ints.column(C.ID).to_pylist() == ["7", "8"]
    assert strings.column(C.ID).to_pylist() == [None, "007", "9"]
    assert strings.column(C.ERROR).to_pylist() == ["id is null", None, None]


def test_integer_jobs_take_the_parquet_type_when_shards_agree_and_a_later_string_id_makes_strings(tmp_path):
    pq.write_table(pa.table({"id": pa.array([1], pa.int32()), "body": ["a"]}), tmp_path / "1.parquet")
    pq.write_table(pa.table({"id": pa.array([2], pa.int32()), "body": ["b"]}), tmp_path / "2.parquet")
    assert probe_id_type(_shards(tmp_path), "id") == pa.int32()

    # A JSONL shard whose first id is an integer and later ones strings: the job's ids are strings, and
    # "007" stays "007" (never cast to 7).
    _jsonl(tmp_path / "3.jsonl", [{"id": 3, "body": "c"}, {"id": "007", "body": "d"}, {"id": "7", "body": "e"}])
    shards = _shards(tmp_path)
    id_type = probe_id_type(shards, "id")
    assert id_type == pa.string()
    table = _read(ShardReader(COLUMNS, "id", id_type=id_type), shards[2])
    assert table.column(C.ID).to_pylist() == ["3", "007", "7"]
    assert table.column(C.ERROR).to_pylist() == [None, None, None]


def test_made_up_ids_make_the_job_a_string_job(tmp_path):
    _jsonl(tmp_path / "1.jsonl", [{"id": 1, "body": "a"}])
    _jsonl(tmp_path / "2.jsonl", [{"body": "b"}, {"id": 5, "body": "ignored id"}])
    shards = _shards(tmp_path)
    id_type = probe_id_type(shards, "id")
    assert id_type == pa.string()
    assert _read(ShardReader(COLUMNS, "id", id_type=id_type), shards[1]).column(C.ID).to_pylist() == ["2.jsonl:0",
                                                                                                      "2.jsonl:1"]


def test_parquet_without_id_column_gets_stable_ids_and_keeps_its_types(tmp_path):
    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"body": ["x", None, "y"]}), path, row_group_size=2)
    (shard,) = _shards(tmp_path)
    assert shard.key == "part-0"
    table = _read(ShardReader(COLUMNS, "id"), shard)
    assert table.column(C.ID).to_pylist() == ["part-0.parquet:0", "part-0.parquet:1", "part-0.parquet:2"]
    assert table.column(C.ERROR).to_pylist() == [None, "text is null", None]

    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"id": pa.array([5, 6], pa.int32()), "body": ["a", "b"]}), typed)
    (shard,) = _shards(typed)
    assert _read(ShardReader(COLUMNS, "id"), shard).schema.field(C.ID).type == pa.int32()


def test_a_parquet_file_without_the_text_column_errors_every_row(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": [1, 2], "content": ["a", "b"]}), path)
    (shard,) = _shards(path)
    table = _read(ShardReader(COLUMNS, "id"), shard)
    assert table.num_rows == 2
    assert all("column 'body' not in p.parquet" in e for e in table.column(C.ERROR).to_pylist())


def test_shard_columns(tmp_path):
    pq.write_table(pa.table({"id": [1], "body": ["a"], "lang": ["en"]}), tmp_path / "p.parquet")
    _jsonl(tmp_path / "j.jsonl.gz", ["", "{bad", "[1]", {"doc": 1, "title": "t", "body": "b"}, {"other": 2}])
    jsonl, parquet = _shards(tmp_path)
    assert shard_columns(parquet) == ["id", "body", "lang"]
    assert shard_columns(jsonl) == ["doc", "title", "body"]
    os.remove(jsonl.path)
    with pytest.raises(ShardUnreadable, match="j.jsonl.gz: cannot be opened"):
        shard_columns(jsonl)


def test_in_memory_rows_keep_working():
    # pipeline/local.py builds tables from rows given in memory through to_table.
    reader = ShardReader(COLUMNS, "id")
    table = reader.to_table([{C.ID: 1, C.TEXT: "a"}, {C.ID: 2**64, C.TEXT: "b"}], Shard(0, "memory", "jsonl"), 0, None)
    assert table.column(C.ID).to_pylist() == [1, None]
    assert table.column(C.ERROR).to_pylist() == [None, "id 18446744073709551616 does not fit in this job's id type (int64)"]
