"""Rows read per shard, for the driver to know when a shard is complete (a Ray actor; see
pipeline/job.py `_process`). Plain Python with no imports: its actor's process loads nothing else.
"""

from __future__ import annotations


class ReadLedger:
    """Rows each shard held once all its read tasks finished, and the shards that could not be read:
    the driver needs both to know when a shard is complete. A shard read
    in several pieces counts once every piece has reported; a retried task reports its piece again."""

    def __init__(self, pieces: dict[int, int] | None = None):
        self.pieces = pieces or {}  # shard index -> read tasks (1 unless split)
        self.read_rows: dict[int, dict[int, int]] = {}  # shard -> part -> rows
        self.failed: dict[int, str] = {}

    def read(self, shard: int, rows: int, part: int = 0) -> None:
        self.read_rows.setdefault(shard, {})[part] = rows

    def unreadable(self, shard: int, reason: str) -> None:
        self.failed[shard] = reason

    def snapshot(self) -> tuple[dict[int, int], dict[int, str]]:
        done = {shard: sum(parts.values()) for shard, parts in self.read_rows.items()
                if len(parts) == self.pieces.get(shard, 1)}
        return done, dict(self.failed)
