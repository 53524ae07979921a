"""Bad input fails alone (issue 20): bytes that are not UTF-8 in a Parquet string column become error
rows, a UTF-8 byte order mark at the start of a JSONL file is skipped, a string id anywhere makes the
job's ids strings, and duplicate ids within a shard are counted."""

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import columns as C
from pipeline import sources
from pipeline.sinks import duplicate_ids
from pipeline.sources import (
    UTF8_BOM, Piece, ShardReader, ShardUnreadable, count_rows, list_shards, probe_id_type, shard_columns,
)
from pipeline.spec import InputSpec
from pipeline.markers import Marker
from pipeline.summary import build_summary, totals

COLUMNS = {C.TEXT: "body"}


def _shards(path):
    return list_shards(InputSpec(path=str(path)))


def _read(reader, shard, piece=None):
    return pa.concat_tables(list(reader.read(shard, piece)))


def _unchecked_strings(values: list) -> pa.Array:
    """A string array holding the given bytes as they are (None: null), as a foreign Parquet writer
    stores them: Arrow's constructors would refuse bytes that are not UTF-8."""
    data = b"".join(v or b"" for v in values)
    offsets = np.cumsum([0] + [len(v or b"") for v in values]).astype(np.int32)
    validity = pa.array([v is not None for v in values]).buffers()[1]
    return pa.Array.from_buffers(pa.string(), len(values), [validity, pa.py_buffer(offsets.tobytes()),
                                                            pa.py_buffer(data)])


def _jsonl_bytes(objects) -> bytes:
    return b"".join((o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n" for o in objects)


# -- invalid UTF-8 in Parquet --------------------------------------------------------------------------
@pytest.mark.parametrize("dictionary", [True, False], ids=["dictionary-pages", "plain-pages"])
def test_invalid_utf8_in_a_parquet_text_column_is_an_error_row_and_the_others_are_read(tmp_path, dictionary):
    body = _unchecked_strings([b"caf\xc3\xa9 ok", b"bad \xff\xfe bytes", None, b"half \xc3", b"last one"])
    with pytest.raises(pa.ArrowInvalid):
        body.validate(full=True)  # what the file holds really is invalid
    pq.write_table(pa.table({"id": pa.array([1, 2, 3, 4, 5], pa.int64()), "body": body}), tmp_path / "a.parquet",
                   use_dictionary=dictionary, row_group_size=2)
    (shard,) = _shards(tmp_path)
    table = _read(ShardReader(COLUMNS, "id", id_type=pa.int64()), shard)
    table.validate(full=True)
    assert table.column(C.ID).to_pylist() == [1, 2, 3, 4, 5]
    assert table.column(C.TEXT).to_pylist() == ["café ok", None, None, None, "last one"]
    assert table.column(C.ERROR).to_pylist() == [
        None, "text is not valid UTF-8 (invalid start byte)", "text is null",
        "text is not valid UTF-8 (unexpected end of data)", None,
    ]
    assert table.column(C.ROW).to_pylist() == [0, 1, 2, 3, 4]

    # A split read (row groups [1, 3)) reports the same rows at the same places.
    piece = Piece(shard.index, 1, (1, 3), 2)
    part = _read(ShardReader(COLUMNS, "id", id_type=pa.int64()), shard, piece)
    assert part.column(C.ROW).to_pylist() == [2, 3, 4]
    assert part.column(C.ERROR).to_pylist() == [
        "text is null", "text is not valid UTF-8 (unexpected end of data)", None]
    assert count_rows(shard) == 5


def test_invalid_utf8_in_a_string_id_or_a_carried_column_is_an_error_row(tmp_path):
    ids = _unchecked_strings([b"a", b"b\xff", b"c", b"d"])
    url = _unchecked_strings([b"u1", b"u2", b"u\xe9", b"u4"])
    pq.write_table(pa.table({"id": ids, "body": ["one", "two", "three", "four"], "url": url}), tmp_path / "a.parquet")
    (shard,) = _shards(tmp_path)
    assert probe_id_type([shard], "id") == pa.string()
    reader = ShardReader(COLUMNS | {sources.carry_key("url"): "url"}, "id", id_type=pa.string())
    table = _read(reader, shard)
    table.validate(full=True)  # nothing invalid travels on, to the stages or the output files
    assert table.column(C.ID).to_pylist() == ["a", None, "c", "d"]
    assert table.column(sources.carry_key("url")).to_pylist() == ["u1", "u2", None, "u4"]
    assert table.column(C.ERROR).to_pylist() == [
        None, "id is not valid UTF-8 (invalid start byte)",
        "column 'url' is not valid UTF-8 (unexpected end of data)", None,
    ]


# -- byte order mark -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz"])
def test_a_bom_at_the_start_of_a_jsonl_file_is_skipped(tmp_path, name):
    data = UTF8_BOM + _jsonl_bytes([{"id": 1, "body": "first"}, {"id": 2, "body": "second"}])
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    (shard,) = _shards(tmp_path)
    table = _read(ShardReader(COLUMNS, "id", id_type=pa.int64()), shard)
    assert table.column(C.ID).to_pylist() == [1, 2]
    assert table.column(C.TEXT).to_pylist() == ["first", "second"]
    assert table.column(C.ERROR).to_pylist() == [None, None]
    # The column check and the id probe see line 1 too.
    assert shard_columns(shard) == ["id", "body"]
    assert probe_id_type([shard], "id") == pa.int64()
    assert count_rows(shard) == 2


def test_a_bom_split_across_reads_is_skipped_and_only_at_the_start(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_CHUNK_BYTES", 1)  # the BOM arrives one byte at a time
    monkeypatch.setattr(sources, "COUNT_CHUNK_BYTES", 2)
    data = UTF8_BOM + _jsonl_bytes([{"id": "x", "body": "first"}, UTF8_BOM + b'{"id": "y", "body": "b"}'])
    (tmp_path / "a.jsonl").write_bytes(data)
    (shard,) = _shards(tmp_path)
    table = _read(ShardReader(COLUMNS, "id", id_type=pa.string()), shard)
    assert table.column(C.ID).to_pylist() == ["x", None]
    assert table.column(C.ERROR).to_pylist()[0] is None
    assert table.column(C.ERROR).to_pylist()[1].startswith("line 2: invalid JSON (Unexpected UTF-8 BOM")
    assert count_rows(shard) == 2


@pytest.mark.parametrize("data, rows, errors", [
    (UTF8_BOM, 0, []),
    (UTF8_BOM + b"\n  \n", 0, []),
    (UTF8_BOM[:2], 1, ["line 1: not valid UTF-8 (unexpected end of data)"]),
    (b"{}", 1, ["text is null"]),
], ids=["bom-only", "bom-and-blank-lines", "two-bytes-of-a-bom", "short-file"])
def test_files_that_are_a_bom_or_shorter_count_as_the_reader_reads_them(tmp_path, data, rows, errors):
    (tmp_path / "a.jsonl").write_bytes(data)
    (shard,) = _shards(tmp_path)
    table = _read(ShardReader(COLUMNS, "id", id_type=pa.string()), shard)
    assert table.num_rows == count_rows(shard) == rows
    assert table.column(C.ERROR).to_pylist() == errors


# -- ids -----------------------------------------------------------------------------------------------
def test_a_string_id_after_an_integer_one_makes_the_job_a_string_job(tmp_path):
    data = UTF8_BOM + _jsonl_bytes([{"id": v, "body": f"doc {i}"} for i, v in enumerate([7001, "007", 7, "7", 7001])])
    (tmp_path / "a.jsonl").write_bytes(data)
    (shard,) = _shards(tmp_path)
    id_type = probe_id_type([shard], "id")
    assert id_type == pa.string()
    table = _read(ShardReader(COLUMNS, "id", id_type=id_type), shard)
    assert table.column(C.ID).to_pylist() == ["7001", "007", "7", "7", "7001"]  # "007" is never 7
    assert table.column(C.ERROR).to_pylist() == [None] * 5


@pytest.mark.parametrize("name", ["b.jsonl", "b.jsonl.gz", "b.jsonl.zst"])
def test_a_string_id_deep_in_another_shard_is_found(tmp_path, name):
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int32()), "body": ["a", "b"]}), tmp_path / "a.parquet")
    lines = [{"id": i, "body": "x"} for i in range(5000)] + [{"id": "5000", "body": "late"}]
    data = _jsonl_bytes(lines)
    if name.endswith(".gz"):
        data = gzip.compress(data)
    elif name.endswith(".zst"):
        try:
            from compression import zstd  # Python 3.14
        except ImportError:
            from backports import zstd
        data = zstd.compress(data)
    (tmp_path / name).write_bytes(data)
    shards = _shards(tmp_path)
    id_type = probe_id_type(shards, "id")
    assert id_type == pa.string()
    reader = ShardReader(COLUMNS, "id", id_type=id_type)
    assert _read(reader, shards[0]).column(C.ID).to_pylist() == ["1", "2"]
    table = _read(reader, shards[1])
    assert table.column(C.ID).to_pylist()[-2:] == ["4999", "5000"]
    assert table.column(C.ERROR).null_count == table.num_rows


def test_integer_ids_stay_integers_whatever_else_the_lines_hold(tmp_path, monkeypatch):
    # Bad lines, floats, booleans, a huge id, a raw tab and a null make pyarrow's fast pass fail or are
    # no string ids: the lines are then parsed, and the job stays an integer job.
    (tmp_path / "a.jsonl").write_bytes(UTF8_BOM + _jsonl_bytes([
        {"id": 1, "body": "a"}, b"{oops", {"id": 2.5, "body": "b"}, {"id": True, "body": "c"},
        {"id": 2**64, "body": "d"}, b'{"id": 3, "body": "raw\ttab"}', {"id": None, "body": "e"},
        {"body": 'a "quoted" text', "id": 4}, b"[1, 2]", b"",
    ]))
    (tmp_path / "b.jsonl").write_bytes(_jsonl_bytes([{"id": i, "body": "z"} for i in range(100)]))
    shards = _shards(tmp_path)
    assert probe_id_type(shards, "id") == pa.int64()

    # A shard of integer ids costs one pass of pyarrow's JSON reader, not a parse of each line here.
    parsed = []
    real = sources._parse
    monkeypatch.setattr(sources, "_parse", lambda line: parsed.append(line) or real(line))
    assert probe_id_type(shards[1:], "id") == pa.int64()
    assert len(parsed) == 1  # the first line, which says "integer"


def test_a_line_longer_than_the_probes_block_is_still_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "JSON_BLOCK_BYTES", 64)
    (tmp_path / "a.jsonl").write_bytes(_jsonl_bytes([{"id": 1, "body": "x" * 500}, {"id": "2", "body": "y"}]))
    assert probe_id_type(_shards(tmp_path), "id") == pa.string()


def test_an_unreadable_shard_does_not_stop_the_probe(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_CHUNK_BYTES", 64)  # its first line is read before the cut
    (tmp_path / "a.jsonl").write_bytes(_jsonl_bytes([{"id": 1, "body": "x"}]))
    good = gzip.compress(_jsonl_bytes([{"id": i, "body": "y"} for i in range(2000)] + [{"id": "s", "body": "z"}]))
    (tmp_path / "b.jsonl.gz").write_bytes(good[: len(good) // 2])  # truncated: the reader reports it
    shards = _shards(tmp_path)
    assert probe_id_type(shards, "id") == pa.int64()
    with pytest.raises(ShardUnreadable):
        _read(ShardReader(COLUMNS, "id", id_type=pa.int64()), shards[1])


# -- duplicate ids -------------------------------------------------------------------------------------
def test_duplicate_ids_count_documents_of_results_and_errors_together():
    # Token-level output: document 0 has three rows, document 2 two; row 3 errored with the id of row 0;
    # rows 4 and 5 have no id (not duplicates of each other); row 6 repeats row 1's id.
    table = pa.table({
        C.ROW: pa.array([0, 0, 0, 1, 2, 2, 3, 4, 5, 6], pa.int64()),
        C.ID: pa.array(["7", "7", "7", "007", "8", "8", "7", None, None, "007"]),
    })
    assert duplicate_ids(table) == 2
    assert duplicate_ids(table.slice(0, 6)) == 0  # one document's several rows are one row
    assert duplicate_ids(pa.table({C.ROW: pa.array([0, 1], pa.int64()), C.ID: pa.array([5, 5])})) == 1


def test_the_summary_sums_duplicate_ids_and_old_markers_count_none():
    base = {"key": "s", "shard": "s.jsonl", "identity": {}, "fingerprint": "f", "files": [], "error_files": [],
            "rows": 5, "rows_written": 5, "rows_errored": 0, "output_rows": 5, "tokens": 10,
            "padded_token_slots": 0, "windows": 5, "documents_truncated": 0, "largest_document_tokens": 3}
    old = Marker.from_json("_shards/s.json", "s", base)  # a marker from before the count
    t = totals([Marker.from_json("_shards/s.json", "s", {**base, "duplicate_ids": n}) for n in (2, 1)] + [old])
    assert t["duplicate_ids"] == 3
    summary = build_summary(t, run={}, wall=1.0, tokens_this_run=30)
    assert summary["duplicate_ids"] == 3
