"""The shard as the unit of completion, without Ray: parts -> final files exactly once, the resume plan
and what it may remove, and the lease."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import columns as C
from pipeline.markers import (
    FingerprintMismatch, MarkerInvalid, Request, VanishedShards, fingerprint, keep_keys, plan_resume, read_markers,
    write_index,
)
from pipeline.output import OutputDir
from pipeline.sinks import Finalizing, ShardIncomplete, WriteParts, finalize_shard
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
    return finalize_shard(Finalizing(out, rows_per_file, file_metadata={"bert_batch.head": "x"}),
                          Shard(0, f"{key}.jsonl", "jsonl", key=key), rows)


def test_parts_become_final_files_in_input_order_each_row_once(tmp_path):
    out = OutputDir(str(tmp_path))
    write = WriteParts(Finalizing(out, 4), {0: Shard(0, "a.jsonl", "jsonl", key="a"),
                                            1: Shard(1, "b.jsonl", "jsonl", key="b")})
    # Batches arrive out of order; shard b's rows share a batch with a's; a retried batch (rows 2, 3)
    # comes back cut differently (rows 1-3), so rows 2 and 3 are in two parts.
    stats = write(pa.concat_tables([_batch(0, [4, 5], tokens_per_doc=2), _batch(1, [0])]))
    assert stats.to_pydict() == {"shard": [0, 1], "documents": [2, 1], "rows_errored": [0, 0], "tokens": [10, 5],
                                 "marker": [None, None]}
    write(_batch(0, [2, 3], tokens_per_doc=2, error_rows=(3,)))
    write(_batch(0, [1, 2, 3], tokens_per_doc=2, error_rows=(3,)))
    write(_batch(0, [2, 3], tokens_per_doc=2, error_rows=(3,)))  # the same batch again: same part name
    assert len(list((tmp_path / "_staging" / "a").glob("*.parquet"))) == 3
    with pytest.raises(ShardIncomplete, match="1 of 6 rows not written yet"):
        _finalize(out)
    write(_batch(0, [0], tokens_per_doc=2))

    marker = _finalize(out)
    assert marker.files == ["a-00000.parquet", "a-00001.parquet", "a-00002.parquet"]
    assert marker.error_files == ["_errors/a-00000.parquet"]
    assert (marker.rows, marker.rows_written, marker.rows_errored, marker.output_rows) == (6, 5, 1, 10)
    assert marker.tokens == 25 and marker.top_errors == {"text is empty": 1}
    results = pa.concat_tables([pq.read_table(tmp_path / f) for f in marker.files])
    assert [pq.read_table(tmp_path / f).num_rows for f in marker.files] == [4, 4, 2]
    assert results.column_names == ["id", "label"]
    assert results.column("id").to_pylist() == [0, 0, 1, 1, 2, 2, 4, 4, 5, 5]
    assert results.column("label").to_pylist() == ["t0", "t1"] * 5
    assert pq.read_table(tmp_path / "a-00000.parquet").schema.metadata == {b"bert_batch.head": b"x",
                                                                       b"bert_batch.shard": b"a.jsonl"}
    errors = pq.read_table(tmp_path / "_errors" / "a-00000.parquet").to_pylist()
    assert errors == [{"id": 3, "error": "line 4: text is empty", "shard": "a", "row": 3}]
    assert json.loads((tmp_path / "_shards" / "a.json").read_text()) == marker.to_json()
    assert not (tmp_path / "_staging" / "a").exists() and not (tmp_path / "_shards" / "a.pending.json").exists()
    assert (tmp_path / "_staging" / "b").is_dir()  # shard b is still in flight, untouched


def test_a_part_with_rows_beyond_the_shard_is_refused(tmp_path):
    out = OutputDir(str(tmp_path))
    WriteParts(Finalizing(out, 4), {0: Shard(0, "a.jsonl", "jsonl", key="a")})(_batch(0, [0, 1, 2]))
    with pytest.raises(ShardIncomplete, match="holds row 2, but the shard has 2 rows"):
        _finalize(out, rows=2)


def test_an_empty_shard_is_done_with_no_files(tmp_path):
    out = OutputDir(str(tmp_path))
    marker = _finalize(out, key="empty", rows=0)
    assert (marker.rows, marker.files, marker.error_files) == (0, [], [])
    assert json.loads((tmp_path / "_shards" / "empty.json").read_text()) == marker.to_json()


def _shard(tmp_path, key, size=10, index=0, name=None):
    return Shard(index, str(tmp_path / "in" / (name or f"{key}.jsonl")), "jsonl", key=key,
                 identity={"size": size, "mtime": 1.0})


def _marker(out, key, fields=FIELDS, size=10, files=None, name=None, **extra):
    files = files if files is not None else [f"{key}-00000.parquet"]
    for f in files:
        out.write_bytes(f, b"x")
    counts = dict.fromkeys(("rows", "rows_written", "rows_errored", "output_rows", "tokens", "padded_token_slots",
                            "windows", "documents_truncated", "largest_document_tokens"), 1)
    out.write_json(f"_shards/{key}.json", {
        "key": key, "shard": str(Path(out.root).parent / "in" / (name or f"{key}.jsonl")),
        "identity": {"size": size, "mtime": 1.0}, "files": files, "error_files": [],
        "fingerprint": fingerprint(fields), "spec": fields, **counts, **extra})


def _plan(out, shards, listed=None, **request):
    recorded = read_markers(out)
    return plan_resume(out, keep_keys(shards, recorded.markers), FIELDS, recorded, Request(**request), listed)


def test_resume_plan_skips_matching_shards_and_removes_only_the_jobs_own_files(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    _marker(out, "a")
    _marker(out, "b", size=99)  # its input changed since
    out.write_json("_shards/c.pending.json", {"files": ["c-00000.parquet", "_errors/c-00000.parquet"]})
    out.write_bytes("c-00000.parquet", b"half")
    out.write_bytes("_staging/c/r000000000000-0123456789ab.parquet", b"part")
    out.write_bytes("_staging/c/r000000000000-mine.parquet", b"user's, not a part's name")
    out.write_bytes("mine.csv", b"user")
    shards = [_shard(tmp_path, k, index=i) for i, k in enumerate("abc")]

    plan = _plan(out, shards)
    assert list(plan.done) == ["a"] and [s.key for s in plan.todo] == ["b", "c"] and plan.retired == {}
    assert sorted(plan.remove) == sorted([
        "b-00000.parquet", "_shards/b.json", "c-00000.parquet", "_errors/c-00000.parquet", "_shards/c.pending.json",
        "_staging/c/r000000000000-0123456789ab.parquet", "_SUMMARY.json", "_REPORT.html", "_SUCCESS"])
    out.remove(plan.remove)
    assert (tmp_path / "out" / "mine.csv").read_bytes() == b"user" and (tmp_path / "out" / "a-00000.parquet").exists()
    assert (tmp_path / "out" / "_staging" / "c" / "r000000000000-mine.parquet").exists()

    fresh = _plan(out, shards, fresh=True)
    assert fresh.done == {} and "a-00000.parquet" in fresh.remove and "_shards/a.json" in fresh.remove


@pytest.mark.parametrize("marker, why", [
    ({"files": ["../victim.txt"]}, "names '../victim.txt'"),
    ({"files": ["/etc/passwd"]}, "names '/etc/passwd'"),
    ({"files": ["b-00000.parquet"]}, "not a result file of shard 'a'"),  # another shard's file
    ({"error_files": ["_errors/../../victim-00000.parquet"]}, "not a result file"),
    ({"files": "a-00000.parquet"}, "no list of files"),
    ({"key": "b"}, "not a marker of shard 'a'"),
    ({"rows": -1}, "count 'rows'"),
    ({"shard": None}, "lacks the shard"),
])
def test_a_marker_naming_what_is_not_its_shards_is_refused_and_nothing_is_removed(tmp_path, marker, why):
    out = OutputDir(str(tmp_path / "out"))
    (tmp_path / "victim.txt").write_text("keep")
    _marker(out, "a", files=[])
    record = json.loads((tmp_path / "out" / "_shards" / "a.json").read_text())
    (tmp_path / "out" / "_shards" / "a.json").write_text(json.dumps({**record, **marker}))
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(MarkerInvalid, match=rf"_shards/a\.json .*{why}.*move it out"):
        read_markers(out)
    assert sorted(p for p in tmp_path.rglob("*")) == before and (tmp_path / "victim.txt").read_text() == "keep"


@pytest.mark.parametrize("name, content, why", [
    ("evil.pending.json", {"files": ["../victim.txt"]}, "names '../victim.txt'"),
    ("evil.json", "{not json", "not JSON the job wrote"),
    ("evil.json", "", "not JSON the job wrote"),
    ("a b.json", {"key": "a b"}, "not named for a shard"),
])
def test_a_hand_made_file_under_shards_is_refused(tmp_path, name, content, why):
    out = OutputDir(str(tmp_path / "out"))
    out.write_bytes(f"_shards/{name}", (content if isinstance(content, str) else json.dumps(content)).encode())
    with pytest.raises(MarkerInvalid, match=why):
        read_markers(out)


def _indexed_output(tmp_path) -> tuple[OutputDir, dict]:
    """Three markers and the index a run over them leaves."""
    out = OutputDir(str(tmp_path / "out"))
    for key in "abc":
        _marker(out, key)
    recorded = read_markers(out)
    assert recorded.fetched == 3
    write_index(out, recorded.markers, recorded.versions)
    return out, recorded.markers


def test_a_rerun_takes_unchanged_markers_from_the_index_and_reads_changed_ones_from_their_files(tmp_path):
    out, markers = _indexed_output(tmp_path)
    again = read_markers(out)
    assert again.fetched == 0 and again.markers == markers  # one GET instead of one per marker

    # b is written anew (another run redid it), c is gone, d is new: each is read or dropped as its file says.
    b = json.loads((tmp_path / "out" / "_shards" / "b.json").read_text())
    out.write_json("_shards/b.json", {**b, "rows": 7})
    (tmp_path / "out" / "_shards" / "c.json").unlink()
    _marker(out, "d")
    later = read_markers(out)
    assert later.fetched == 2 and sorted(later.markers) == ["a", "b", "d"]
    assert later.markers["b"].rows == 7 and later.markers["a"] == markers["a"]


def test_a_marker_written_this_run_is_indexed_with_its_new_version_not_the_one_read(tmp_path):
    out, markers = _indexed_output(tmp_path)
    recorded = read_markers(out)
    out.write_json("_shards/a.json", {**markers["a"].to_json(), "rows": 5})  # a redone by this run
    redone = {**markers, "a": read_markers(out).markers["a"]}
    kept = {rel: v for rel, v in recorded.versions.items() if rel != "_shards/a.json"}  # job.py keeps done ones
    write_index(out, redone, kept)
    after = read_markers(out)
    assert after.fetched == 0 and after.markers["a"].rows == 5


@pytest.mark.parametrize("index", [
    "{not json",
    json.dumps([1, 2]),
    json.dumps({"markers": "all done"}),
    json.dumps({"markers": {"_shards/a.json": {"version": "1:2:3", "marker": {}}}}),  # a version never listed
])
def test_an_index_that_is_no_index_costs_a_read_per_marker_and_nothing_else(tmp_path, index):
    out, markers = _indexed_output(tmp_path)
    (tmp_path / "out" / "_MARKERS.json").write_text(index)
    recorded = read_markers(out)
    assert recorded.fetched == 3 and recorded.markers == markers


def test_a_hostile_index_entry_is_checked_like_the_file_and_the_file_is_read_instead(tmp_path):
    out, markers = _indexed_output(tmp_path)
    (tmp_path / "victim.txt").write_text("keep")
    index = json.loads((tmp_path / "out" / "_MARKERS.json").read_text())
    entry = index["markers"]["_shards/a.json"]
    entry["marker"] = {**entry["marker"], "files": ["../victim.txt"]}  # the listed version, another content
    index["markers"]["_shards/zz.json"] = {"version": entry["version"], "marker": entry["marker"]}
    (tmp_path / "out" / "_MARKERS.json").write_text(json.dumps(index))
    recorded = read_markers(out)
    assert recorded.fetched == 1 and recorded.markers == markers  # a from its file; zz is no listed marker
    plan = plan_resume(out, [_shard(tmp_path, k, index=i) for i, k in enumerate("abc")], FIELDS, recorded,
                       Request(fresh=True))
    assert "../victim.txt" not in plan.remove and (tmp_path / "victim.txt").read_text() == "keep"


def test_a_shard_keeps_its_key_when_a_file_with_its_stem_arrives(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    _marker(out, "s00", name="s00.jsonl")
    # Listed together, the two stems collide and the listing names both by their full names.
    shards = [_shard(tmp_path, "s00.jsonl", index=0, name="s00.jsonl"),
              _shard(tmp_path, "s00.parquet", index=1, name="s00.parquet")]
    kept = keep_keys(shards, read_markers(out).markers)
    assert [s.key for s in kept] == ["s00", "s00.parquet"]
    plan = _plan(out, shards)
    assert list(plan.done) == ["s00"] and [s.key for s in plan.todo] == ["s00.parquet"]
    assert "s00-00000.parquet" not in plan.remove

    # The jsonl shard gone and a parquet one of its stem in its place: the key stays with its marker.
    alone = [_shard(tmp_path, "s00", name="s00.parquet")]
    (key,) = [s.key for s in keep_keys(alone, read_markers(out).markers)]
    assert key.startswith("s00-") and key != "s00"


def test_results_of_a_vanished_shard_refuse_the_run_or_are_retired(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    for key in ("s14", "s15", "s16"):
        _marker(out, key)
    shards = [_shard(tmp_path, "s14b", index=0), _shard(tmp_path, "s16", index=1)]  # s14 renamed, s15 deleted
    with pytest.raises(VanishedShards, match=r"2 shard\(s\) no longer in the input: s14 \(from .*s14\.jsonl\), "
                                             r"s15 .*--retire"):
        _plan(out, shards)
    plan = _plan(out, shards, retire=True)
    assert sorted(plan.retired) == ["s14", "s15"] and list(plan.done) == ["s16"]
    assert {"s14-00000.parquet", "_shards/s14.json", "s15-00000.parquet", "_shards/s15.json",
            "_SUCCESS"} <= set(plan.remove)
    assert "s16-00000.parquet" not in plan.remove
    # A --limit run that leaves s16 out does not take it for vanished.
    assert _plan(out, shards[:1], listed={"s14b", "s16"}, retire=True).retired.keys() == {"s14", "s15"}


def test_an_edited_shard_is_redone_whatever_its_size_and_mtime_say(tmp_path):
    import os

    from pipeline.sources import list_shards
    from pipeline.spec import InputSpec

    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl").write_text('{"id": 1, "text": "Alice"}\n')
    before = list_shards(InputSpec(path=str(src)))[0].identity
    stat = os.stat(src / "a.jsonl")
    (src / "a.jsonl").write_text('{"id": 1, "text": "Alice"}\n'.replace("Alice", "Bobby"))  # same size
    os.utime(src / "a.jsonl", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # touch -r
    after = list_shards(InputSpec(path=str(src)))[0].identity
    assert after["size"] == before["size"] and after["mtime_ns"] == before["mtime_ns"]
    assert after != before  # the change time moved
    checked = list_shards(InputSpec(path=str(src), verify="checksum"))[0].identity
    assert checked.keys() == {"size", "sha256"} and len(checked["sha256"]) == 64


def test_leftovers_of_a_dead_run_are_named_and_nothing_else(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    theirs = ["._PROGRESS.json.tmp-0123abcd", "_shards/.a.json.tmp-89abcdef", ".a-00000.parquet.tmp-deadbeef",
              "_errors/.a-00000.parquet.tmp-00000000", "_staging/a/r000000000010-0123456789ab.parquet",
              "_staging/a/.r000000000010-0123456789ab.parquet.tmp-01234567"]
    mine = [".notes.tmp-01234567", "_staging/a/notes.txt", "_shards/.a.json.tmp-x", "keep.parquet"]
    for rel in theirs + mine:
        (tmp_path / "out" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / rel).write_text("x")
    assert out.leftovers() == sorted(theirs)


def test_a_marker_made_with_other_settings_refuses_naming_the_keys(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    _marker(out, "a", fields={**FIELDS, "head.aggregation_strategy": "max"})
    with pytest.raises(FingerprintMismatch, match=r"head\.aggregation_strategy \('max' there, 'simple' now\).*--fresh"):
        _plan(out, [_shard(tmp_path, "a")])
    assert _plan(out, [_shard(tmp_path, "a")], fresh=True).todo


def test_a_shard_whole_in_its_batch_is_finished_by_the_writer_and_a_partial_one_is_staged(tmp_path):
    """A grouped read marks each row with its shard's row count (`_shard_rows`): a shard all of whose
    rows are in the batch gets its final files and marker at once (no part), equal to what finalising
    its parts gives; one short of a row is staged as a part, as any other."""
    from pipeline.markers import Marker

    def grouped(shard, rows, n):
        batch = _batch(shard, rows, tokens_per_doc=2, error_rows=(3,))
        return batch.append_column(C.SHARD_ROWS, pa.array([n] * batch.num_rows, pa.int64()))

    out = OutputDir(str(tmp_path / "writer"))
    shards = {0: Shard(0, "a.jsonl", "jsonl", key="a"), 1: Shard(1, "b.jsonl", "jsonl", key="b")}
    stats = WriteParts(Finalizing(out, 4), shards)(pa.concat_tables([grouped(0, range(6), 6), grouped(1, [0, 1], 3)]))
    a_json, b_json = stats.column("marker").to_pylist()
    assert b_json is None and len(list((tmp_path / "writer" / "_staging" / "b").glob("*.parquet"))) == 1
    marker = Marker.from_json("_shards/a.json", "a", json.loads(a_json))
    assert json.loads((tmp_path / "writer" / "_shards" / "a.json").read_text()) == marker.to_json()
    assert not (tmp_path / "writer" / "_staging" / "a").exists()
    # Its pending record stays for the driver (ShardCompletion.finish) to remove with the run's others.
    assert (tmp_path / "writer" / "_shards" / "a.pending.json").exists()

    staged = OutputDir(str(tmp_path / "staged"))  # the same rows through a part and finalize_shard
    WriteParts(Finalizing(staged, 4), shards)(_batch(0, range(6), tokens_per_doc=2, error_rows=(3,)))
    again = _finalize(staged)
    skip = {"run_id", "finished_at"}
    assert {k: v for k, v in marker.to_json().items() if k not in skip} == \
        {k: v for k, v in again.to_json().items() if k not in skip}
    for name in [*marker.files, *marker.error_files]:
        assert pq.read_table(tmp_path / "writer" / name).equals(pq.read_table(tmp_path / "staged" / name))
