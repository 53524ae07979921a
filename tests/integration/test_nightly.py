"""Nightly runs left alone, through the real job on local Ray: the shard as the unit of work and of
completion, resume by default, `--fresh`, markers, a corrupt shard among good ones, too many errors,
the lease, and the user's own files surviving everything."""

from __future__ import annotations

import gzip
import json
import os
import socket
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration._util import SMALL_RESOURCES, check_counts, read_outputs, rows, write_jsonl

pytestmark = pytest.mark.slow


def _docs(shard: int, n: int) -> list[dict]:
    names = ["Alice", "Bob", "Carol", "Dave"]
    places = ["Paris", "Berlin", "Rome", "Tokyo"]
    return [{"id": shard * 1000 + i, "text": f"{names[i % 4]} flew to {places[(i + shard) % 4]} on day {i}."}
            for i in range(n)]


def _spec(input_path, output_path, model_dir, **kw):
    from pipeline.spec import spec_from_dict

    data = {
        "input": {"path": str(input_path)},
        "model": {"path": model_dir, "head": "token-classification", "max_length": 32},
        "output": {"path": str(output_path)},
        "resources": SMALL_RESOURCES,
    }
    for dotted, value in kw.items():
        section, key = dotted.split("__")
        data.setdefault(section, {})[key] = value
    return spec_from_dict(data)


def _run(spec, **kw):
    from pipeline.job import run

    return run(spec, progress=lambda msg: None, **kw)


def _mtimes(out_dir) -> dict[str, int]:
    return {str(p.relative_to(out_dir)): p.stat().st_mtime_ns for p in out_dir.rglob("*") if p.is_file()}


@pytest.fixture
def corpus(tmp_path):
    """Four JSONL shards of 12 documents each, and a user's own files in the output folder."""
    for s in range(4):
        write_jsonl(tmp_path / "in" / f"day-{s}.jsonl", _docs(s, 12))
    out = tmp_path / "out"
    out.mkdir()
    (out / "NOTES.txt").write_text("mine")
    pq.write_table(pa.table({"x": [1]}), out / "mine.parquet")
    (out / "day-0-00000.parquet.bak").write_text("mine too")
    return tmp_path / "in", out


def test_shard_files_markers_resume_and_fresh(corpus, tiny_ner_dir, ray_session):
    src, out = corpus
    spec = _spec(src, out, tiny_ner_dir, output__rows_per_file=5)
    first = _run(spec)
    assert first["status"] == "complete" and first["shards"] == 4 and first["shards_run"] == 4

    # Results of shard S only in files named after S, at most rows_per_file rows each, in input order.
    for s in range(4):
        files = sorted(out.glob(f"day-{s}-*.parquet"))
        assert [f.name for f in files] == [f"day-{s}-0000{i}.parquet" for i in range(3)]
        tables = [pq.read_table(f) for f in files]
        assert [t.num_rows for t in tables] == [5, 5, 2]
        assert pa.concat_tables(tables).column("id").to_pylist() == [s * 1000 + i for i in range(12)]
        meta = tables[0].schema.metadata
        assert meta[b"bert_batch.head"] == b"token-classification"
        assert meta[b"bert_batch.fingerprint"].decode() == first["fingerprint"]
        assert meta[b"bert_batch.model_revision"].decode() == first["model_revision"] != "None"
        marker = json.loads((out / "_shards" / f"day-{s}.json").read_text())
        assert marker["rows"] == marker["rows_written"] == 12 and marker["rows_errored"] == 0
        assert marker["files"] == [f.name for f in files]
        assert marker["identity"]["size"] == (src / f"day-{s}.jsonl").stat().st_size
    assert (out / "_SUCCESS").read_bytes() == b""
    assert not (out / "_PROGRESS.json").exists() and not (out / "_LEASE.json").exists()
    assert not (out / "_staging").exists()  # parts removed, and their folders with them
    check_counts(read_outputs(str(out)) | {"results": [(f.name, pq.read_table(f)) for f in out.glob("day-*.parquet")]},
                 expect_read=48, expect_written=48, expect_errored=0)

    # The same spec again: every shard resumed, no result file touched.
    before = _mtimes(out)
    second = _run(spec)
    assert (second["shards_resumed"], second["shards_run"]) == (4, 0)
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if not k.startswith("_")} == {
        k: v for k, v in before.items() if not k.startswith("_")}
    assert second["rows_read"] == 48

    # One input shard changes: only it is redone.
    write_jsonl(src / "day-2.jsonl", _docs(2, 7))
    third = _run(spec)
    assert (third["shards_resumed"], third["shards_run"]) == (3, 1)
    assert third["rows_read"] == 36 + 7
    assert sorted(f.name for f in out.glob("day-2-*.parquet")) == ["day-2-00000.parquet", "day-2-00001.parquet"]
    assert _mtimes(out)["day-0-00000.parquet"] == before["day-0-00000.parquet"]

    # A result-changing setting refuses to mix, naming the key; --fresh redoes everything.
    from pipeline.markers import FingerprintMismatch

    changed = _spec(src, out, tiny_ner_dir, output__rows_per_file=5, head__aggregation_strategy="first")
    with pytest.raises(FingerprintMismatch, match=r"head\.aggregation_strategy \('simple' there, 'first' now\)"):
        _run(changed)
    fresh = _run(changed, fresh=True)
    assert (fresh["shards_resumed"], fresh["shards_run"]) == (0, 4)
    assert fresh["fingerprint"] != first["fingerprint"]

    # The user's files survived runs, reruns and --fresh.
    assert (out / "NOTES.txt").read_text() == "mine"
    assert pq.read_table(out / "mine.parquet").column("x").to_pylist() == [1]
    assert (out / "day-0-00000.parquet.bak").read_text() == "mine too"


def test_a_corrupt_shard_among_good_ones_fails_alone_and_a_rerun_retries_it(tmp_path, tiny_ner_dir, ray_session):
    from pipeline.errors import JobFailed

    src, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(src / "a.jsonl", _docs(0, 10))
    good_gz = gzip.compress("".join(json.dumps(d) + "\n" for d in _docs(1, 30)).encode())
    (src / "b.jsonl.gz").write_bytes(good_gz[: len(good_gz) // 2])  # truncated
    pq.write_table(pa.table({"id": [1, 2], "text": ["x", "y"]}), src / "c.parquet")
    (src / "c.parquet").write_bytes((src / "c.parquet").read_bytes()[:-12])  # corrupt footer
    pq.write_table(pa.table({"id": list(range(3000, 3008)), "text": [d["text"] for d in _docs(3, 8)]}),
                   src / "d.parquet")
    (src / "e.jsonl").write_text("")  # empty: done, with no files
    spec = _spec(src, out, tiny_ner_dir)

    with pytest.raises(JobFailed, match=r"2 of 5 shard\(s\) did not finish \((b\.jsonl\.gz|c\.parquet): "):
        _run(spec)
    progress = json.loads((out / "_PROGRESS.json").read_text())
    assert progress["status"] == "incomplete"
    assert set(progress["shards_failed"]) == {"b", "c"}
    assert "b.jsonl.gz" in progress["shards_failed"]["b"] and "c.parquet" in progress["shards_failed"]["c"]
    assert not (out / "_SUMMARY.json").exists() and not (out / "_SUCCESS").exists()
    assert sorted(p.name for p in (out / "_shards").glob("*.json")) == ["a.json", "d.json", "e.json"]
    assert not list(out.glob("b-*.parquet")) and not list(out.glob("c-*.parquet"))
    a_files = _mtimes(out)["a-00000.parquet"]

    # Repair the two shards: the rerun does just them.
    (src / "b.jsonl.gz").write_bytes(good_gz)
    pq.write_table(pa.table({"id": [1, 2], "text": ["x", "y"]}), src / "c.parquet")
    summary = _run(spec)
    assert (summary["shards_resumed"], summary["shards_run"]) == (3, 2)
    assert summary["rows_read"] == 10 + 30 + 2 + 8 == summary["rows_written"]
    assert _mtimes(out)["a-00000.parquet"] == a_files
    assert not (out / "_PROGRESS.json").exists()


def test_too_many_error_rows_exit_1_with_the_count_and_reasons(tmp_path, tiny_ner_dir, ray_session):
    from pipeline.errors import JobFailed

    src, out = tmp_path / "in", tmp_path / "out"
    pq.write_table(pa.table({"id": [1, 2], "text": ["Alice in Paris.", "Bob in Rome."]}), src.mkdir() or src / "a.parquet")
    pq.write_table(pa.table({"id": [3, 4, 5], "body": ["x", "y", "z"]}), src / "b.parquet")  # no text column
    with pytest.raises(JobFailed, match=r"3 of 5 rows errored, more than output.max_error_fraction \(0.1\) allows: "
                                        r"column 'text' not in b.parquet \(it has: body, id\) \(3\)"):
        _run(_spec(src, out, tiny_ner_dir))
    assert json.loads((out / "_PROGRESS.json").read_text())["status"] == "failed"
    assert not (out / "_SUMMARY.json").exists()
    # Allowed by the spec: complete, and the errors are all recorded.
    summary = _run(_spec(src, out, tiny_ner_dir, output__max_error_fraction=1.0))
    assert (summary["rows_written"], summary["rows_errored"]) == (2, 3)
    assert len(rows(read_outputs(str(out))["errors"])) == 3


def test_paths_that_overlap_are_refused_before_any_work(tmp_path, tiny_ner_dir):
    from pipeline.preflight import validate
    from pipeline.spec import SpecError

    src = write_jsonl(tmp_path / "in" / "a.jsonl", _docs(0, 2)).parent
    for out in (src, src / "out", tmp_path):
        with pytest.raises(SpecError, match="output.path: .* is, lies inside or contains input.path"):
            validate(_spec(src, out, tiny_ner_dir))
    with pytest.raises(SpecError, match="contains input.path"):
        validate(_spec(src / "*.jsonl", src, tiny_ner_dir))
    assert sorted(p.name for p in src.iterdir()) == ["a.jsonl"]


def _lease(out, **fields):
    record = {"run_id": "other", "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time(),
              "timeout_seconds": 60.0} | fields
    (out / "_LEASE.json").write_text(json.dumps(record))


def test_a_live_lease_refuses_and_a_dead_one_is_taken_over(tmp_path, tiny_ner_dir, ray_session):
    from pipeline.lease import RunActive

    src, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(src / "a.jsonl", _docs(0, 3))
    out.mkdir()
    spec = _spec(src, out, tiny_ner_dir)
    _lease(out, host="another-host", pid=1)
    with pytest.raises(RunActive, match=r"another run \(other on another-host, pid 1\) is writing"):
        _run(spec)
    assert not (out / "_shards").exists()
    _lease(out, host="another-host", heartbeat=time.time() - 600)  # its heartbeat stopped long ago
    assert _run(spec)["rows_written"] == 3
    _lease(out, pid=2**22 + 12345)  # this host, a process that does not exist (a driver killed -9)
    assert _run(spec)["shards_resumed"] == 1
    assert not (out / "_LEASE.json").exists()
