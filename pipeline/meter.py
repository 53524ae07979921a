"""What each stage did and when: rows, tokens and busy seconds per stage, in total and per time bucket.

Stages report each batch they finish (`record`, fire-and-forget from pipeline/job.py's stage
wrappers) to one `StageMeter` (a small Ray actor). The driver reads `snapshot()` for the progress
display and puts it in the summary (`stages`, `timeline`), from which `_REPORT.html` draws its charts.
Ray-free: the class is plain Python, and `job.py` makes it an actor.
"""

from __future__ import annotations

import time

STAGES = ("read", "tokenize", "predict", "postprocess", "write")
# Stages whose batches carry token counts (the reader has not tokenized yet; the writer's rows are parts).
TOKEN_STAGES = ("tokenize", "predict", "postprocess")


class StageMeter:
    def __init__(self, started_at: float | None = None, bucket_seconds: float = 2.0, max_buckets: int = 600):
        self.started_at = started_at if started_at is not None else time.time()
        self.bucket_seconds = bucket_seconds
        # A long run keeps at most max_buckets: the buckets are merged pairwise (twice as wide) when full.
        self.max_buckets = max_buckets
        self.totals = {s: {"rows": 0, "tokens": 0, "busy_seconds": 0.0, "batches": 0} for s in STAGES}
        self.rows = {s: [] for s in STAGES}
        self.tokens = {s: [] for s in TOKEN_STAGES}

    def record(self, stage: str, finished_at: float, seconds: float, rows: int, tokens: int = 0) -> None:
        t = self.totals[stage]
        t["rows"] += rows
        t["tokens"] += tokens
        t["busy_seconds"] += seconds
        t["batches"] += 1
        bucket = max(0, int((finished_at - self.started_at) // self.bucket_seconds))
        while bucket >= self.max_buckets:
            self._widen()
            bucket = max(0, int((finished_at - self.started_at) // self.bucket_seconds))
        self._grow(bucket + 1)
        self.rows[stage][bucket] += rows
        if stage in self.tokens:
            self.tokens[stage][bucket] += tokens

    def snapshot(self) -> dict:
        """`stages`: per stage, rows, tokens, busy seconds (summed over the stage's workers) and the
        rates per busy second (one worker's rate); `timeline`: rows (and tokens) finished per bucket."""
        stages = {}
        for s, t in self.totals.items():
            busy = t["busy_seconds"]
            has_tokens = s in TOKEN_STAGES
            stages[s] = {
                "rows": t["rows"],
                "tokens": t["tokens"] if has_tokens else None,
                "busy_seconds": round(busy, 3),
                "batches": t["batches"],
                "rows_per_second": round(t["rows"] / busy, 1) if busy else None,
                "tokens_per_second": round(t["tokens"] / busy, 1) if busy and has_tokens else None,
            }
        return {
            "stages": stages,
            "timeline": {
                "bucket_seconds": self.bucket_seconds,
                "started_at": self.started_at,
                "rows": {s: list(v) for s, v in self.rows.items()},
                "tokens": {s: list(v) for s, v in self.tokens.items()},
            },
        }

    def _grow(self, n: int) -> None:
        for series in (*self.rows.values(), *self.tokens.values()):
            series.extend([0] * (n - len(series)))

    def _widen(self) -> None:
        self.bucket_seconds *= 2
        for series in (*self.rows.values(), *self.tokens.values()):
            series[:] = [sum(series[i : i + 2]) for i in range(0, len(series), 2)]
