"""The run's record, built from the shard markers: `_SUMMARY.json` + `_SUCCESS` when every shard is done
and the errors are within `output.max_error_fraction`; otherwise `_PROGRESS.json`, never the summary."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from pipeline.markers import COUNTS, Marker
from pipeline.output import PROGRESS, SUCCESS, SUMMARY, OutputDir
from pipeline.report import write_report
from pipeline.stats import STATS_KEYS, merge_stats

# Summed over shards; the largest document is a maximum instead.
_SUMMED = tuple(c for c in COUNTS if c != "largest_document_tokens")


def totals(markers: list[Marker]) -> dict:
    """Counts over shard markers."""
    t = {k: sum(getattr(m, k) for m in markers) for k in _SUMMED}
    t["rows_read"] = t.pop("rows")
    t["largest_document_tokens"] = max((m.largest_document_tokens for m in markers), default=0)
    reasons: Counter = Counter()
    for m in markers:
        reasons.update(m.top_errors)
    t["top_errors"] = dict(reasons.most_common(5))
    t.update(merge_stats(markers))  # document_tokens_histogram, windows_histogram, label_counts
    return t


def error_verdict(t: dict, max_error_fraction: float) -> str | None:
    """One sentence when too many rows errored, else None."""
    if not t["rows_read"] or t["rows_errored"] <= max_error_fraction * t["rows_read"]:
        return None
    reasons = "; ".join(f"{reason} ({n})" for reason, n in t["top_errors"].items())
    return (f"{t['rows_errored']} of {t['rows_read']} rows errored, more than output.max_error_fraction "
            f"({max_error_fraction:g}) allows: {reasons}")


def build_summary(t: dict, *, run: dict, wall: float, tokens_this_run: int, measured: dict | None = None,
                  limited: bool = False) -> dict:
    """`measured`: this run's StageMeter snapshot (`stages`: rows, tokens, busy seconds and rates per
    stage; `timeline`: rows and tokens per time bucket) and `model_pool`, the model actors it ran
    (pipeline/job.py). `limited`: a `--limit` run, status `limited`
    (and no `_SUCCESS`: the input is not done)."""
    measured = measured or {}
    stages = measured.get("stages", {})
    model = stages.get("predict", {})
    return {
        "status": "limited" if limited else "complete",
        "rows_read": t["rows_read"],
        "rows_written": t["rows_written"],
        "rows_errored": t["rows_errored"],
        # Rows whose id an earlier row of the same shard had (each kept as a row: ids are not deduplicated).
        "duplicate_ids": t.get("duplicate_ids", 0),
        "output_rows": t["output_rows"],
        "tokens": t["tokens"],
        "padded_token_slots": t["padded_token_slots"],
        "padding_waste": round(t["padded_token_slots"] / t["tokens"], 4) if t["tokens"] else 0.0,
        "windows": t["windows"],
        "documents_truncated": t["documents_truncated"],
        "largest_document_tokens": t["largest_document_tokens"],
        "top_errors": t["top_errors"],
        # Distributions and label counts over every shard (pipeline/stats.py), for the report.
        **{k: t[k] for k in STATS_KEYS},
        "wall_seconds": round(wall, 3),
        # Over the tokens this run computed (shards resumed from an earlier run are not counted).
        "tokens_per_second": round(tokens_this_run / wall, 1) if wall else 0.0,
        # The model stage alone: its tokens over its busy seconds, summed over its actors.
        "model_busy_seconds": model.get("busy_seconds", 0.0),
        "model_tokens_per_second": model.get("tokens_per_second"),
        "model_pool": measured.get("model_pool", {}),
        "stages": stages,
        "timeline": measured.get("timeline", {}),
        **run,
    }


def write_complete(output: OutputDir, summary: dict) -> None:
    output.write_json(SUMMARY, summary)
    write_report(output, summary)  # _REPORT.html, drawn from the summary
    if summary["status"] == "complete":  # a --limit run did not do the whole input
        output.write_bytes(SUCCESS, b"")  # last: schedulers wait for it (Spark / Airflow convention)
    output.remove([PROGRESS])


@dataclass
class Progress:
    """A run that has not finished (or is still running): what is done, what failed, and why it stopped."""

    status: str  # running | incomplete (some shards not done) | failed (too many error rows)
    run: dict  # what the run says about itself (run id, model, paths, shard counts)
    shards_total: int
    done: list[str]  # keys of the shards done
    failed: dict[str, str]  # shard key -> why not
    reason: str | None = None
    t: dict | None = None  # totals over the done shards' markers

    def record(self) -> dict:
        """`_PROGRESS.json`'s content, and what the CLI prints on stdout when the run exits 1."""
        return {
            "status": self.status,
            "reason": self.reason,
            "shards": self.shards_total,
            "shards_done": len(self.done),
            "shards_failed": self.failed,
            "shards_pending": self.shards_total - len(self.done) - len(self.failed),
            **({k: self.t[k] for k in ("rows_read", "rows_written", "rows_errored", "top_errors")} if self.t else {}),
            "updated_at": time.time(),
            **self.run,
        }


def write_progress(output: OutputDir, progress: Progress) -> bool:
    """Best effort (True when written): when storage is failing, the run's own error says more."""
    try:
        output.write_json(PROGRESS, progress.record())
        return True
    except Exception:  # noqa: BLE001 - the markers stay the record of what is done
        return False
