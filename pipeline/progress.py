"""Progress on stderr while the job runs: a live bar on a terminal, plain lines otherwise.

The bar shows rows done out of rows total, tokens/s and an ETA. The total of local input comes from
the files themselves (`pipeline.sources.count_rows`: Parquet footers, JSONL line counts), counted in
a background thread while the job starts, so a corpus of many files does not delay the first batch;
on object storage it grows as the readers report their shards (`ReadTotal`), which costs no request.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass

from pipeline.sources import Shard, count_rows

BAR_SECONDS = 1.0  # a terminal bar redraws this often
# Plain lines (a log file, a scheduler's capture): at most this often, when the counts changed, and
# at least every HEARTBEAT_SECONDS while they do not (start-up, a long shard being finalised).
LINE_SECONDS = 2.0
HEARTBEAT_SECONDS = 30.0


@dataclass
class Snapshot:
    """What the display shows; filled by the driver (pipeline/job.py)."""

    rows_done: int = 0
    rows_errored: int = 0
    tokens: int = 0
    shards_done: int = 0
    shards_total: int = 0
    shards_failed: int = 0


class RowTotal:
    """Rows in the shards of this run, counted in a background thread; a shard that cannot be
    counted (it fails later, alone, with its reason) counts as none. Storage is asked with few
    retries, and `stop` ends the count between shards, so the thread never outlives the run."""

    def __init__(self, shards: list[Shard], storage=None, limits: dict[str, int] | None = None):
        self.known = 0
        self.unknown = len(shards)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._count, args=(shards, storage, limits or {}), daemon=True,
                                        name="count-rows")
        self._thread.start()

    def _count(self, shards, storage, limits) -> None:
        for shard in shards:
            if self._stopped.is_set():
                return
            try:
                n = limits[shard.key] if shard.key in limits else count_rows(shard, storage, patient=False)
            except Exception:  # noqa: BLE001 - the reader reports an unreadable shard, with its reason
                n = 0
            self.known += n
            self.unknown -= 1

    def stop(self, timeout: float = 30.0) -> None:
        self._stopped.set()
        self._thread.join(timeout)

    @property
    def exact(self) -> bool:
        return self.unknown == 0


class ReadTotal:
    """Rows in the shards of this run as their readers report them (a sinks.ShardCompletion's
    `rows_read`): on object storage, where counting them apart would fetch every shard twice. Exact once
    every shard is read or has failed."""

    def __init__(self, completion, shards: int):
        self.completion, self.shards = completion, shards

    @property
    def known(self) -> int:
        return sum(list(self.completion.rows_read.values()))  # a copy: the driver adds to it meanwhile

    @property
    def exact(self) -> bool:
        return len(self.completion.rows_read) + len(self.completion.failed) >= self.shards

    def stop(self, timeout: float = 0.0) -> None:
        """Nothing runs apart to stop."""


class Display:
    """Shows `state()` on `stream` from a background thread, between `start` and `stop`: a bar
    redrawn every BAR_SECONDS on a terminal, otherwise a line every LINE_SECONDS when the counts
    changed (and every HEARTBEAT_SECONDS when they did not)."""

    def __init__(self, stream=None, message=None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._message = message
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False
        self._last_state: Snapshot | None = None
        self._last_line_at = 0.0

    def message(self, text: str) -> None:
        """A line of its own (above the bar on a terminal)."""
        if self._message is not None:
            self._message(text)
            return
        self._clear()
        print(text, file=self.stream, flush=True)

    def start(self, state, total: RowTotal, started: float) -> None:
        self._state, self._total, self._started = state, total, started
        self._thread = threading.Thread(target=self._loop, daemon=True, name="progress")
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._total.stop()
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._draw(final=True)
        if self.tty and self._drawn:
            print(file=self.stream, flush=True)
            self._drawn = False

    def _loop(self) -> None:
        interval = BAR_SECONDS if self.tty else LINE_SECONDS
        while not self._stop.wait(interval):
            self._draw(final=False)

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[2K")
            self._drawn = False

    def _draw(self, final: bool) -> None:
        if self._message is not None:  # a caller's own messages only (tests, embedding programs)
            return
        state = self._state()
        now = time.time()
        if not (self.tty or final or state != self._last_state or now - self._last_line_at >= HEARTBEAT_SECONDS):
            return
        self._last_state, self._last_line_at = Snapshot(**vars(state)), now
        line = render(state, self._total, now - self._started)
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
            self.stream.flush()
            self._drawn = True
        else:
            print(line, file=self.stream, flush=True)


def render(s: Snapshot, total: RowTotal, elapsed: float) -> str:
    """One line: time, rows done of the total, errors, tokens/s, shards, ETA. Rates are over the
    whole run so far, start-up included (as the summary's tokens_per_second)."""
    elapsed = max(elapsed, 1e-9)
    rows_rate = s.rows_done / elapsed
    known = total.known
    if total.exact and known:
        frac = min(1.0, s.rows_done / known)
        bar = "#" * int(frac * 24)
        of = f"{s.rows_done:,}/{known:,} rows {frac:6.1%} [{bar:<24}]"
        eta = f" ETA {_clock((known - s.rows_done) / rows_rate)}" if rows_rate and s.rows_done < known else ""
    else:
        of = f"{s.rows_done:,}/{known:,}+ rows (counting)" if known else f"{s.rows_done:,} rows"
        eta = ""
    errors = f", {s.rows_errored:,} errors" if s.rows_errored else ""
    failed = f" ({s.shards_failed} failed)" if s.shards_failed else ""
    return (f"{_clock(elapsed)} {of}{errors}, {s.tokens / elapsed:,.0f} tokens/s, shards {s.shards_done}/"
            f"{s.shards_total}{failed}{eta}")


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
