"""The progress display (a bar on a terminal, lines otherwise), the row totals it counts from the
input, and the stage meter behind the summary's `stages` and `timeline`."""

from __future__ import annotations

import gzip
import io
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import progress
from pipeline.meter import STAGES, StageMeter
from pipeline import sources
from pipeline.progress import Display, ReadTotal, RowTotal, Snapshot, render
from pipeline.sources import Shard, ShardUnreadable, count_rows


def _shard(path, fmt, compression=None, index=0):
    return Shard(index, str(path), fmt, compression, path.name.split(".")[0], {})


def test_count_rows_matches_what_the_reader_reads(tmp_path):
    from pipeline.sources import ShardReader

    lines = [json.dumps({"id": i, "text": f"t{i}"}) for i in range(7)]
    raw = "\n".join(lines[:3]) + "\n\n   \n" + "\n".join(lines[3:]) + "\n{broken\n" + lines[0]  # blanks, a bad line, no final \n
    plain = tmp_path / "a.jsonl"
    plain.write_text(raw)
    packed = tmp_path / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(raw.encode()))
    table = pa.table({"id": list(range(1234)), "text": ["x"] * 1234})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=100)
    reader = ShardReader({"text": "text", "id": "id"}, "id")
    for shard in (_shard(plain, "jsonl"), _shard(packed, "jsonl", "gzip"), _shard(tmp_path / "c.parquet", "parquet")):
        expected = sum(t.num_rows for t in reader.read(shard))
        assert count_rows(shard) == expected
    assert count_rows(_shard(plain, "jsonl")) == 9  # 7 objects, a bad line and the last line: blanks are not rows


def test_count_rows_small_chunks_split_lines_correctly(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "COUNT_CHUNK_BYTES", 3)
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 22}\n  \n{"a": 333}')
    assert count_rows(_shard(path, "jsonl")) == 3


def test_row_total_counts_in_the_background_and_skips_unreadable(tmp_path):
    good = tmp_path / "a.jsonl"
    good.write_text("{}\n{}\n")
    bad = tmp_path / "b.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ShardUnreadable):
        count_rows(_shard(bad, "parquet"))
    total = RowTotal([_shard(good, "jsonl"), _shard(bad, "parquet", index=1)], limits={})
    total._thread.join(timeout=10)
    assert total.exact and total.known == 2
    limited = RowTotal([_shard(good, "jsonl")], limits={"a": 1})
    limited._thread.join(timeout=10)
    assert limited.known == 1
    stopped = RowTotal([_shard(good, "jsonl", index=i) for i in range(1000)])
    stopped.stop()  # between shards: the thread ends long before counting 1,000 shards
    assert not stopped._thread.is_alive() and stopped.unknown > 0


def test_read_total_grows_as_the_readers_report_and_is_exact_once_every_shard_is_in():
    """Object storage: the total costs no request, it is what the readers counted."""
    from types import SimpleNamespace

    completion = SimpleNamespace(rows_read={}, failed={})
    total = ReadTotal(completion, shards=3)
    assert (total.known, total.exact) == (0, False)
    completion.rows_read.update({0: 5, 2: 7})
    assert (total.known, total.exact) == (12, False)
    completion.failed["b.jsonl"] = "b.jsonl: not JSON"  # the third shard could not be read
    assert (total.known, total.exact) == (12, True)
    assert "12/12 rows" in render(Snapshot(rows_done=12), total, 3.0)


class _Total:
    def __init__(self, known, exact=True):
        self.known, self.exact = known, exact
        self.stopped = False

    def stop(self):
        self.stopped = True


def test_render_shows_rows_of_total_rate_and_eta():
    line = render(Snapshot(rows_done=250, rows_errored=3, tokens=5000, shards_done=1, shards_total=4), _Total(1000),
                  elapsed=10.0)
    assert "250/1,000 rows" in line and "25.0%" in line
    assert "3 errors" in line
    assert "500 tokens/s" in line
    assert "shards 1/4" in line
    assert "ETA 00:30" in line  # 750 rows left at 25 rows/s
    counting = render(Snapshot(rows_done=5), _Total(40, exact=False), elapsed=2.0)
    assert "5/40+ rows (counting)" in counting and "ETA" not in counting
    done = render(Snapshot(rows_done=1000, shards_done=4, shards_total=4), _Total(1000), elapsed=3723.0)
    assert "100.0%" in done and "ETA" not in done and done.startswith("1:02:03")


class _Tty(io.StringIO):
    def isatty(self):
        return True


def _run_display(stream, monkeypatch, seconds=0.35):
    monkeypatch.setattr(progress, "BAR_SECONDS", 0.05)
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.1)
    state = Snapshot(shards_total=1)
    display = Display(stream)
    display.start(lambda: state, _Total(100), time.time())
    time.sleep(seconds / 2)
    display.message("a message")
    state.rows_done = 100
    time.sleep(seconds / 2)
    display.stop()
    return stream.getvalue()


def test_terminal_display_redraws_one_line_and_ends_with_the_final_count(monkeypatch):
    out = _run_display(_Tty(), monkeypatch)
    assert out.count("\r\x1b[2K") >= 4  # redrawn in place, several times
    assert "a message\n" in out  # a message gets its own line
    assert out.rstrip("\n").rsplit("\r\x1b[2K", 1)[-1].split(" ", 1)[1].startswith("100/100 rows")
    assert out.endswith("\n")


def test_non_terminal_display_prints_plain_lines(monkeypatch):
    out = _run_display(io.StringIO(), monkeypatch)
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    assert len(lines) >= 3 and "a message" in lines
    assert "100/100 rows" in lines[-1]


def test_display_with_a_callback_only_passes_messages():
    got = []
    display = Display(message=got.append)
    display.start(lambda: Snapshot(), _Total(1), time.time())
    display.message("resumed 3 shards")
    total = display._total
    display.stop()
    assert got == ["resumed 3 shards"]
    assert total.stopped  # the count in the background ends with the run


def test_meter_totals_rates_and_buckets():
    meter = StageMeter(started_at=100.0, bucket_seconds=2.0)
    meter.record("tokenize", 100.5, 0.5, rows=10, tokens=300)
    meter.record("tokenize", 103.0, 1.5, rows=30, tokens=900)
    meter.record("read", 101.0, 0.25, rows=40)
    meter.record("predict", 107.9, 4.0, rows=40, tokens=1200)
    snap = meter.snapshot()
    tok = snap["stages"]["tokenize"]
    assert (tok["rows"], tok["tokens"], tok["busy_seconds"], tok["batches"]) == (40, 1200, 2.0, 2)
    assert tok["tokens_per_second"] == 600.0 and tok["rows_per_second"] == 20.0
    assert snap["stages"]["read"]["tokens"] is None and snap["stages"]["read"]["rows_per_second"] == 160.0
    assert snap["stages"]["write"]["rows_per_second"] is None  # never ran
    timeline = snap["timeline"]
    assert timeline["rows"]["tokenize"] == [10, 30, 0, 0]
    assert timeline["tokens"]["predict"] == [0, 0, 0, 1200]
    assert {len(v) for v in (*timeline["rows"].values(), *timeline["tokens"].values())} == {4}
    assert set(timeline["rows"]) == set(STAGES)


def test_meter_widens_buckets_instead_of_growing_without_end():
    meter = StageMeter(started_at=0.0, bucket_seconds=1.0, max_buckets=8)
    for t in range(20):
        meter.record("write", t + 0.5, 0.1, rows=1)
    timeline = meter.snapshot()["timeline"]
    assert timeline["bucket_seconds"] == 4.0
    assert timeline["rows"]["write"] == [4, 4, 4, 4, 4]
    assert sum(timeline["rows"]["write"]) == meter.snapshot()["stages"]["write"]["rows"] == 20


def test_plain_lines_only_when_the_counts_change_or_as_a_heartbeat(monkeypatch):
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.01)
    monkeypatch.setattr(progress, "HEARTBEAT_SECONDS", 3600)
    state = Snapshot(shards_total=2)
    stream = io.StringIO()
    display = Display(stream)
    display.start(lambda: state, _Total(10), time.time())
    time.sleep(0.3)  # about 30 ticks with nothing new: one line
    assert len(stream.getvalue().splitlines()) == 1
    state.rows_done = 5
    time.sleep(0.3)
    display.stop()
    lines = stream.getvalue().splitlines()
    assert [line.split(" ", 1)[1][:9] for line in lines] == ["0/10 rows", "5/10 rows", "5/10 rows"]  # + the final line
