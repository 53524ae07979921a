"""Per-shard distributions (pipeline.stats): fixed buckets, labels per head, merging across markers."""

from __future__ import annotations

import json

import pyarrow as pa

from pipeline import columns as C
from pipeline.output import OutputDir
from pipeline.markers import Marker
from pipeline.sinks import Finalizing, WriteParts, finalize_shard
from pipeline.sources import Shard
from pipeline.stats import TOKEN_BUCKETS, WINDOW_BUCKETS, empty_stats, merge_stats, shard_stats
from pipeline.summary import totals

ENTITY = pa.struct([("entity_group", pa.string()), ("score", pa.float32()), ("word", pa.string()),
                    ("start", pa.int32()), ("end", pa.int32())])


def _good(tokens: list[int], windows: list[int] | None = None, rows_per_doc: int = 1, **columns) -> pa.Table:
    """Good rows as finalize_shard sees them: `rows_per_doc` output rows per document, stats on the first."""
    n = len(tokens)
    windows = windows or [1] * n
    docs, n_tok, n_win = [], [], []
    for t, w in zip(tokens, windows):
        for k in range(rows_per_doc):
            docs.append(int(k == 0))
            n_tok.append(t if k == 0 else 0)
            n_win.append(w if k == 0 else 0)
    data = {"id": pa.array(range(len(docs)), pa.int64()), **columns,
            "_documents": pa.array(docs, pa.int64()), "_n_windows": pa.array(n_win, pa.int64()),
            C.N_TOKENS: pa.array(n_tok, pa.int64())}
    return pa.table(data)


def _ents(*groups: str) -> list[dict]:
    return [{"entity_group": g, "score": 0.9, "word": "w", "start": 0, "end": 1} for g in groups]


def test_token_buckets_are_fixed_powers_of_two_and_edges_fall_in_the_lower_bucket():
    assert TOKEN_BUCKETS[:3] == ["<=16", "17-32", "33-64"] and TOKEN_BUCKETS[-2:] == ["4097-8192", "8193+"]
    assert WINDOW_BUCKETS == ["1", "2", "3", "4", "5-8", "9-16", "17+"]
    stats = shard_stats(_good([1, 16, 17, 32, 33, 8192, 8193, 100_000], windows=[1, 2, 3, 4, 5, 8, 9, 17]))
    h = stats["document_tokens_histogram"]
    assert list(h) == TOKEN_BUCKETS  # every bucket, in order, zeros included
    assert (h["<=16"], h["17-32"], h["33-64"], h["65-128"], h["4097-8192"], h["8193+"]) == (2, 2, 1, 0, 1, 2)
    assert sum(h.values()) == 8
    assert stats["windows_histogram"] == {"1": 1, "2": 1, "3": 1, "4": 1, "5-8": 2, "9-16": 1, "17+": 1}
    assert stats["label_counts"] == {}  # no label column: embedding, fill-mask, QA


def test_documents_are_counted_once_however_many_rows_they_have_and_labels_per_row():
    # Token granularity: one row per token, the document's stats on its first row only.
    labels = pa.array(["B-PER", "O", "O", "B-LOC", "O", None], pa.string())
    stats = shard_stats(_good([20, 40], windows=[1, 2], rows_per_doc=3, label=labels))
    assert stats["document_tokens_histogram"]["17-32"] == 1 and stats["document_tokens_histogram"]["33-64"] == 1
    assert sum(stats["document_tokens_histogram"].values()) == 2
    assert stats["windows_histogram"]["1"] == 1 and stats["windows_histogram"]["2"] == 1
    assert stats["label_counts"] == {"O": 3, "B-LOC": 1, "B-PER": 1}  # nulls skipped, most common first


def test_entities_are_flattened_and_counted_by_entity_group():
    entities = pa.array([_ents("PER", "LOC", "PER"), [], None, _ents("ORG", "PER")], pa.list_(ENTITY))
    stats = shard_stats(_good([5, 6, 7, 8], entities=entities))
    assert stats["label_counts"] == {"PER": 3, "LOC": 1, "ORG": 1}
    chunked = pa.chunked_array([entities.slice(0, 2), entities.slice(2)])  # tables read back are chunked
    table = _good([5, 6, 7, 8]).append_column("entities", chunked)
    assert shard_stats(table)["label_counts"] == {"PER": 3, "LOC": 1, "ORG": 1}


def test_an_empty_table_gives_empty_stats():
    table = _good([], label=pa.array([], pa.string()))
    assert shard_stats(table) == empty_stats()
    assert sum(empty_stats()["document_tokens_histogram"].values()) == 0 and empty_stats()["label_counts"] == {}


def _marker(**stats) -> Marker:
    return Marker.from_json("_shards/x.json", "x", {
        "key": "x", "shard": "x.jsonl", "identity": {}, "fingerprint": "f", "files": [], "error_files": [],
        **dict.fromkeys(("rows", "rows_written", "rows_errored", "output_rows", "tokens", "padded_token_slots",
                         "windows", "documents_truncated", "largest_document_tokens"), 0), **stats})


def test_merge_adds_shards_and_treats_old_markers_without_stats_as_empty():
    a = shard_stats(_good([10, 300], windows=[1, 3], label=pa.array(["pos", "neg"])))
    b = shard_stats(_good([12], windows=[1], label=pa.array(["pos"])))
    old = _marker()  # a marker written before the stats existed
    merged = merge_stats([_marker(**a), old, _marker(**b)])
    assert merged["document_tokens_histogram"]["<=16"] == 2 and merged["document_tokens_histogram"]["257-512"] == 1
    assert list(merged["document_tokens_histogram"]) == TOKEN_BUCKETS
    assert merged["windows_histogram"]["1"] == 2 and merged["windows_histogram"]["3"] == 1
    assert merged["label_counts"] == {"pos": 2, "neg": 1}
    assert merge_stats([]) == empty_stats() and merge_stats([old]) == empty_stats()


def test_finalize_shard_puts_the_stats_in_the_marker_and_totals_merges_them(tmp_path):
    out = OutputDir(str(tmp_path))
    entities = pa.array([_ents("PER"), _ents("LOC", "PER"), None], pa.list_(ENTITY))
    batch = _good([5, 40, 0], windows=[1, 2, 0], entities=entities)
    n = batch.num_rows
    batch = (batch.append_column(C.SHARD, pa.array([0] * n, pa.int32()))
             .append_column(C.ROW, pa.array(range(n), pa.int64()))
             .append_column(C.ERROR, pa.array([None, None, "text is empty"], pa.string()))
             .append_column(C.PADDED_SLOTS, pa.array([0, 3, 0], pa.int64()))
             .append_column(C.TRUNCATED, pa.array([False, True, False])))
    WriteParts(Finalizing(out, 10), {0: Shard(0, "a.jsonl", "jsonl", key="a")})(batch)
    marker = finalize_shard(Finalizing(out, 10), Shard(0, "a.jsonl", "jsonl", key="a"), n)
    assert marker.label_counts == {"PER": 2, "LOC": 1}  # the error row is not counted
    assert marker.document_tokens_histogram["<=16"] == 1 and marker.document_tokens_histogram["33-64"] == 1
    assert sum(marker.windows_histogram.values()) == 2 == marker.rows_written
    assert json.loads((tmp_path / "_shards" / "a.json").read_text()) == marker.to_json()
    empty = finalize_shard(Finalizing(out, 10), Shard(1, "empty.jsonl", "jsonl", key="empty"), 0)
    assert {k: getattr(empty, k) for k in empty_stats()} == empty_stats()

    # A marker from before the stats, as resume reads it back.
    old = Marker.from_json("_shards/a.json", "a", {k: v for k, v in marker.to_json().items() if k not in empty_stats()})
    t = totals([marker, empty, old])
    assert t["label_counts"] == {"PER": 2, "LOC": 1}
    assert t["document_tokens_histogram"]["<=16"] == 1 and sum(t["windows_histogram"].values()) == 2
