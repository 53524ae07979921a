"""A large Parquet shard is read by several tasks, each a run of whole row groups: the pieces cover
every row group once, in order, and the rows they read (their place, stable ids and errors) are those
of reading the file whole."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import columns as C
from pipeline.ledger import ReadLedger
from pipeline.sources import Piece, ShardReader, list_shards, plan_pieces
from pipeline.spec import InputSpec

ROWS = 1000


def _write(path, rows=ROWS, row_group_size=100):
    texts = [f"document number {i} " * (1 + i % 7) if i % 97 else "" for i in range(rows)]  # some empty
    pq.write_table(pa.table({"text": texts}), path, row_group_size=row_group_size)
    return path


def _shards(tmp_path):
    return list_shards(InputSpec(path=str(tmp_path / "in")))


def _read(shard, piece=None):
    reader = ShardReader({C.TEXT: "text"}, "id")
    return pa.concat_tables(reader.read(shard, piece))


@pytest.mark.parametrize("split_bytes", [1, 3000, 10_000, 10**9])
def test_pieces_cover_every_row_group_once_and_read_the_same_rows(tmp_path, split_bytes):
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in" / "big.parquet")
    (shard,) = _shards(tmp_path)
    pieces = plan_pieces([shard], None, split_bytes)
    groups = [g for p in pieces for g in range(*(p.row_groups or (0, 10)))]
    assert groups == list(range(10))  # every row group, once, in order
    if split_bytes == 1:
        assert len(pieces) == 10  # one row group each
    if split_bytes == 10**9:
        assert pieces == [Piece(shard.index, 0)]  # small enough: one task, the whole file
    whole = _read(shard)
    parts = pa.concat_tables([_read(shard, p) for p in pieces])
    assert parts.column(C.ROW).to_pylist() == list(range(ROWS))
    assert parts.column(C.ID)[ROWS - 1].as_py() == f"big.parquet:{ROWS - 1}"
    for name in (C.ID, C.TEXT, C.ROW, C.ERROR):  # the same stable ids (`big.parquet:<row>`) and errors
        assert parts.column(name).to_pylist() == whole.column(name).to_pylist()
    assert parts.column(C.ERROR).null_count == ROWS - len(range(0, ROWS, 97))


def test_small_files_one_row_group_files_and_limited_shards_are_read_whole(tmp_path):
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in" / "a.parquet")
    _write(tmp_path / "in" / "b.parquet", row_group_size=ROWS)  # one row group: cannot be split
    _write(tmp_path / "in" / "c.parquet")
    (tmp_path / "in" / "d.jsonl").write_text('{"text": "x"}\n' * 2000)  # JSONL is read by one task
    shards = _shards(tmp_path)
    by_name = {s.name: s for s in shards}
    pieces = plan_pieces(shards, None, 1, whole=frozenset({by_name["c.parquet"].key}))
    per_shard = {s.name: [p for p in pieces if p.shard == s.index] for s in shards}
    assert len(per_shard["a.parquet"]) == 10
    assert [len(per_shard[n]) for n in ("b.parquet", "c.parquet", "d.jsonl")] == [1, 1, 1]


def test_a_split_shard_counts_once_all_its_pieces_reported():
    ledger = ReadLedger({0: 3, 1: 1})
    ledger.report([(0, 100, 0), (1, 7, 0)])
    ledger.report([(0, 100, 2)])
    assert ledger.take() == ({1: 7}, {})  # shard 0 still waits for part 1
    ledger.report([(0, 100, 2)])  # a retried task reports its piece again: counted once
    ledger.report([(0, 50, 1)], unreadable=[(2, "bad")])
    assert ledger.take() == ({0: 250}, {2: "bad"})
    assert ledger.take() == ({}, {})  # only what is new since the last take

