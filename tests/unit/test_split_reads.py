"""A large Parquet shard is read by several tasks, each a run of whole row groups: the pieces cover
every row group once, in order, and the rows they read (their place, stable ids and errors) are those
of reading the file whole."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import columns as C
from pipeline.ledger import ReadLedger
from pipeline.sources import Piece, ShardReader, group_pieces, list_shards, plan_pieces
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



def test_small_shards_share_read_tasks_by_size_and_the_rest_stream_alone(tmp_path):
    """Whether a shard is grouped depends on its own size alone (a resumed run reads it as the full
    run did); groups hold consecutive small shards up to the budget."""
    (tmp_path / "in").mkdir()
    for i, size in enumerate([100, 300, 50, 5000, 400, 100, 100]):
        (tmp_path / "in" / f"s{i}.jsonl").write_text("x" * size)
    shards = _shards(tmp_path)
    by_index = {s.index: s for s in shards}
    pieces = [Piece(s.index, 0) for s in shards]
    streamed, grouped = group_pieces(pieces, by_index, group_bytes=500)
    name = {i: by_index[pieces[i].shard].name for i in range(len(pieces))}
    assert [[name[i] for i in t] for t in streamed] == [["s3.jsonl"]]  # 5000 bytes: streamed alone
    assert [[name[i] for i in t] for t in grouped] == [["s0.jsonl", "s1.jsonl", "s2.jsonl"], ["s4.jsonl", "s5.jsonl"],
                                                       ["s6.jsonl"]]
    # Without the first shards (done by an earlier run), the rest go the same way.
    later = pieces[3:]
    streamed, grouped = group_pieces(later, by_index, group_bytes=500)
    assert [[by_index[later[i].shard].name for i in t] for t in streamed] == [["s3.jsonl"]]
    assert sum(len(t) for t in grouped) == 3
    # A piece of a split Parquet shard always streams.
    split = [Piece(0, 0, (0, 1), 0), Piece(0, 1, (1, 2), 10)]
    assert group_pieces(split, by_index, group_bytes=10**9) == ([[0], [1]], [])
