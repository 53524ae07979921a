"""Resume: which input shards are done (their marker matches), which to do, and which of the job's
own files to remove first.

A marker (`_shards/<shard>.json`, written by pipeline.sinks.finalize_shard) matches when it was
made from the same input file (size and ETag or mtime) with the same fingerprint (the spec keys that
change results, and the model's revision). A marker made with another fingerprint stops the run
before any work, naming the keys that differ, unless the run is `--fresh`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from pipeline.output import (
    ERRORS_DIR, MARKERS_DIR, PROGRESS, REPORT, STAGING_DIR, SUCCESS, SUMMARY, OutputDir, marker_file,
)


class FingerprintMismatch(ValueError):
    """The output holds shards made with other result-changing settings."""


def fingerprint(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ResumePlan:
    done: dict[str, dict] = field(default_factory=dict)  # shard key -> its marker
    todo: list = field(default_factory=list)  # pipeline.sources.Shard
    remove: list[str] = field(default_factory=list)  # relative names of the job's own files


def plan_resume(output: OutputDir, shards: list, fields: dict, fresh: bool = False,
                limits: dict[str, int] | None = None) -> ResumePlan:
    """`limits`: rows per shard of a limited run (`--limit`). A limited run's marker counts as done
    only for a run with the same limit on its shard, so the full run redoes a dry run's partial
    shards; a full marker counts for any run (a dry run never redoes finished work)."""
    limits = limits or {}
    markers = _markers(output)
    ours = fingerprint(fields)
    if not fresh:
        for key, marker in markers.items():
            if marker.get("fingerprint") != ours:
                theirs = marker.get("spec", {})
                differ = sorted(k for k in set(theirs) | set(fields) if theirs.get(k) != fields.get(k))
                shown = ", ".join(f"{k} ({theirs.get(k)!r} there, {fields.get(k)!r} now)" for k in differ[:3])
                raise FingerprintMismatch(
                    f"output.path: {output.path} holds results made with other settings ({shown or 'another version'}"
                    f"{' ...' if len(differ) > 3 else ''}; shard {key}); use another output.path, or rerun with "
                    "--fresh to redo every shard"
                )
    plan = ResumePlan()
    for shard in shards:
        marker = markers.get(shard.key)
        if (not fresh and marker is not None and marker.get("identity") == shard.identity
                and marker.get("limit") in (None, limits.get(shard.key))):
            plan.done[shard.key] = marker
        else:
            plan.todo.append(shard)
    # Files of shards about to be redone (and, with --fresh, of every shard the job recorded here).
    redo = set(markers) if fresh else set()
    redo |= {s.key for s in plan.todo}
    for key in sorted(redo):
        marker = markers.get(key)
        if marker is not None:
            plan.remove += marker.get("files", []) + marker.get("error_files", []) + [marker_file(key)]
    pendings = output.list(MARKERS_DIR, ".pending.json")
    for rel, pending in output.read_jsons(pendings).items():
        key = rel[len(MARKERS_DIR) + 1 : -len(".pending.json")]
        if key in redo:
            plan.remove += [f for f in pending.get("files", []) if _ours(f, key)] + [rel]
    for key in redo:
        plan.remove += output.list(f"{STAGING_DIR}/{key}", ".parquet")
    if plan.todo:
        plan.remove += [SUMMARY, REPORT, SUCCESS]
    if fresh:
        plan.remove += [PROGRESS]
    return plan


def _markers(output: OutputDir) -> dict[str, dict]:
    rels = [r for r in output.list(MARKERS_DIR, ".json") if not r.endswith(".pending.json")]
    return {m["key"]: m for m in output.read_jsons(rels).values() if isinstance(m, dict) and "key" in m}


def _ours(rel: str, key: str) -> bool:
    """A pending record only ever names this shard's result and error files."""
    name = rel.removeprefix(ERRORS_DIR + "/")
    return "/" not in name and name.startswith(key + "-") and name.endswith(".parquet")
