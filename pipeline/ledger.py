"""Rows read per shard, for the driver to know when a shard is complete (a Ray actor; see
pipeline/job.py `_process`). Plain Python with no imports: its actor's process loads nothing else.
"""

from __future__ import annotations


class ReadLedger:
    """Rows each shard held once all its read tasks finished, and the shards that could not be read:
    the driver needs both to know when a shard is complete. A shard read in several pieces counts once
    every piece has reported; a retried task reports its pieces again. One call per read task
    (`report`), one per driver step (`take`, what is new since the last): neither grows with the run."""

    def __init__(self, pieces: dict[int, int] | None = None):
        self.pieces = pieces or {}  # shard index -> read tasks (1 unless split)
        self.read_rows: dict[int, dict[int, int]] = {}  # shard -> part -> rows
        self.failed: dict[int, str] = {}
        self._new_done: set[int] = set()
        self._new_failed: set[int] = set()

    def report(self, reads: list[tuple[int, int, int]] = (), unreadable: list[tuple[int, str]] = ()) -> None:
        """A read task's pieces: (shard, rows, part) read whole, (shard, reason) not readable."""
        for shard, rows, part in reads:
            parts = self.read_rows.setdefault(shard, {})
            parts[part] = rows
            if len(parts) == self.pieces.get(shard, 1):
                self._new_done.add(shard)
        for shard, reason in unreadable:
            self.failed[shard] = reason
            self._new_failed.add(shard)

    def take(self) -> tuple[dict[int, int], dict[int, str]]:
        """Shards whose every piece has reported (shard -> rows), and shards that could not be read,
        since the last call."""
        done = {shard: sum(self.read_rows[shard].values()) for shard in self._new_done}
        failed = {shard: self.failed[shard] for shard in self._new_failed}
        self._new_done, self._new_failed = set(), set()
        return done, failed
