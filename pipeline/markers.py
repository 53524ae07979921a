"""Resume: which input shards are done (their marker matches), which to do, which shards' results are
no longer wanted (their input is gone), and which of the job's own files to remove first.

A marker (`_shards/<shard>.json`, written by pipeline.sinks.finalize_shard) matches when it was
made from the same input file (its identity: pipeline.sources._identity) with the same fingerprint
(the spec keys that change results, and the model's revision). A marker made with another
fingerprint stops the run before any work, naming the keys that differ, unless the run is `--fresh`.

Markers and pending records are read from storage, so they are input to check, not truth to trust:
each must name its own shard, and every file it names must be one of that shard's result or error
files inside output.path (`read_markers`). A marker that is not refuses the run, and nothing is
removed.

A run that reads markers ends by writing `_MARKERS.json`: every marker it knows with the version its
file had in the listing (S3's ETag; locally size, mtime and inode). The next run uses an entry only
for a marker whose listed version is the same, checked like the file itself, and reads the rest (new
ones, changed ones, all of them when the index is missing or unreadable). So a rerun over many
finished shards costs a listing and one GET instead of a GET per shard, and a marker changed since
the index was written is read from its file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from dataclasses import MISSING
from dataclasses import fields as dataclass_fields

from pipeline.errors import UserError
from pipeline.output import (
    ERRORS_DIR, MARKER_INDEX, MARKERS_DIR, PROGRESS, REPORT, SUCCESS, SUMMARY, OutputDir, StorageFailed,
    marker_file, pending_file,
)

PENDING = ".pending.json"
# A shard key as pipeline.sources makes it: a file-name-safe stem, never a path.
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


class FingerprintMismatch(UserError):
    """The output holds shards made with other result-changing settings."""


class MarkerInvalid(UserError):
    """A file under _shards/ that the job did not write as it is: unreadable, or naming files that are
    not its shard's own."""


class VanishedShards(UserError):
    """The output holds results of shards that are no longer in the input."""


def fingerprint(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ResumePlan:
    done: dict[str, Marker] = field(default_factory=dict)  # shard key -> its marker
    todo: list = field(default_factory=list)  # pipeline.sources.Shard
    retired: dict[str, str] = field(default_factory=dict)  # key of a vanished shard -> the input it was made from
    remove: list[str] = field(default_factory=list)  # relative names of the job's own files


@dataclass
class Recorded:
    """What the output folder holds of earlier runs: markers and pending records, each checked."""

    markers: dict[str, Marker] = field(default_factory=dict)  # shard key -> marker
    pending: dict[str, list[str]] = field(default_factory=dict)  # shard key -> files it was about to write
    versions: dict[str, str] = field(default_factory=dict)  # marker file -> its version in the listing
    fetched: int = 0  # markers read from their own files, not from the index


def _own_file(rel, key: str) -> bool:
    """A result or error file of shard `key`: `<key>-NNNNN.parquet`, directly in the output or in _errors/."""
    return isinstance(rel, str) and re.fullmatch(rf"(?:{ERRORS_DIR}/)?{re.escape(key)}-\d{{5}}\.parquet", rel) is not None


@dataclass(frozen=True)
class Marker:
    """A finished shard (`_shards/<key>.json`): every row of its input was written to `files` or
    recorded in `error_files`. Written by pipeline.sinks.finalize_shard, read back by resume
    (`read_markers`, which checks it) and added up by pipeline.summary.totals."""

    key: str
    shard: str  # the input file it was made from (pipeline.sources.Shard.path)
    identity: dict  # that file's identity then (pipeline.sources._identity, or input.verify's digest)
    fingerprint: str  # of the settings that change results
    files: list[str]
    error_files: list[str]
    rows: int  # rows read
    rows_written: int  # documents written
    rows_errored: int
    output_rows: int
    tokens: int
    padded_token_slots: int
    windows: int
    documents_truncated: int
    largest_document_tokens: int
    duplicate_ids: int = 0  # not in markers of earlier versions
    top_errors: dict = field(default_factory=dict)
    document_tokens_histogram: dict = field(default_factory=dict)  # pipeline.stats (empty in older markers)
    windows_histogram: dict = field(default_factory=dict)
    label_counts: dict = field(default_factory=dict)
    spec: dict = field(default_factory=dict)  # the fingerprint's fields, to name the ones that differ
    run_id: str = ""
    limit: int | None = None  # rows of a --limit run's cut shard; None: the whole shard
    finished_at: float = 0.0

    def to_json(self) -> dict:
        record = asdict(self)
        if self.limit is None:
            del record["limit"]
        return record

    @classmethod
    def from_json(cls, rel: str, key: str, obj) -> "Marker":
        """The marker `rel` holds, checked: it names its own shard and only that shard's files, and its
        counts are whole numbers. Raises MarkerInvalid."""
        where = f"{rel} (in output.path)"
        if not isinstance(obj, dict) or obj.get("key") != key:
            raise MarkerInvalid(f"{where} is not a marker of shard {key!r}")
        if not isinstance(obj.get("shard"), str) or not isinstance(obj.get("identity"), dict) \
                or not isinstance(obj.get("fingerprint"), str):
            raise MarkerInvalid(f"{where} lacks the shard, identity or fingerprint a marker holds")
        # A count a marker of an earlier version may lack (it has a default) is checked when present.
        bad = [f.name for f in _COUNTS if (f.name in obj or f.default is MISSING)
               and (type(obj.get(f.name)) is not int or obj[f.name] < 0)]
        if bad:
            raise MarkerInvalid(f"{where} has no count {bad[0]!r} (a whole number)")
        for name in ("files", "error_files"):
            _check_names(where, key, obj.get(name))
        kept = {f.name: obj[f.name] for f in dataclass_fields(cls) if f.name in obj}
        for name in ("top_errors", "document_tokens_histogram", "windows_histogram", "label_counts", "spec"):
            if not isinstance(kept.get(name, {}), dict):
                raise MarkerInvalid(f"{where} has {name} that is not a mapping")
        if not isinstance(kept.get("limit"), (int, type(None))) or isinstance(kept.get("limit"), bool):
            raise MarkerInvalid(f"{where} has a limit that is not a whole number")
        return cls(**kept)



# The whole-number counts a marker carries (`rows` ... `duplicate_ids`), named in Marker only.
_COUNTS = tuple(f for f in dataclass_fields(Marker) if f.type == "int")
COUNTS = tuple(f.name for f in _COUNTS)

def _check_names(where: str, key: str, names) -> None:
    if not isinstance(names, list):
        raise MarkerInvalid(f"{where} has no list of files")
    for rel in names:
        if not _own_file(rel, key):
            shown = rel if isinstance(rel, str) and len(rel) <= 120 else f"{str(rel)[:120]}..."
            raise MarkerInvalid(f"{where} names {shown!r}, which is not a result file of shard {key!r}")


def read_markers(output: OutputDir) -> Recorded:
    """Every marker and pending record under _shards/, checked; a marker whose listed version the index
    holds is taken from there. Raises MarkerInvalid (naming the file, and what to do) before anything
    is removed."""
    versions = output.versions(MARKERS_DIR, ".json")
    recorded = Recorded()
    indexed = _indexed(output, versions)
    for rel, marker in indexed.items():
        recorded.markers[marker.key] = marker
        recorded.versions[rel] = versions[rel]
    fetch = [rel for rel in versions if rel not in indexed]
    for rel, data in output.read_many(fetch).items():
        pending = rel.endswith(PENDING)
        key = _key_of(rel)
        try:
            if not _KEY.fullmatch(key):
                raise MarkerInvalid(f"{rel} (in output.path) is not named for a shard")
            try:
                obj = json.loads(data)
            except ValueError:
                raise MarkerInvalid(f"{rel} (in output.path) is not JSON the job wrote") from None
            if pending:
                if not isinstance(obj, dict):
                    raise MarkerInvalid(f"{rel} (in output.path) is not a pending record")
                _check_names(f"{rel} (in output.path)", key, obj.get("files"))
                recorded.pending[key] = obj["files"]
            else:
                recorded.markers[key] = Marker.from_json(rel, key, obj)
                recorded.versions[rel] = versions[rel]
                recorded.fetched += 1
        except MarkerInvalid as e:
            raise MarkerInvalid(f"output.path: {e}; the job did not write it so - move it out of "
                                f"{output.path}/{MARKERS_DIR}, or use another output.path") from None
    return recorded


def _indexed(output: OutputDir, versions: dict[str, str]) -> dict[str, Marker]:
    """The index's markers whose file is listed with the version the index holds, each checked as its
    file would be. The index is a cache: when it is missing, unreadable or its entry does not check,
    the marker's own file is read instead."""
    try:
        index = output.read_json(MARKER_INDEX)
    except StorageFailed:  # not JSON
        return {}
    entries = index.get("markers") if isinstance(index, dict) else None
    found = {}
    for rel, entry in (entries if isinstance(entries, dict) else {}).items():
        if (not isinstance(entry, dict) or rel.endswith(PENDING) or rel not in versions
                or entry.get("version") != versions[rel] or not _KEY.fullmatch(_key_of(rel))):
            continue
        try:
            found[rel] = Marker.from_json(rel, _key_of(rel), entry.get("marker"))
        except MarkerInvalid:
            continue
    return found


def _key_of(rel: str) -> str:
    """The shard key a file listed under _shards/ is named for (a marker's or a pending record's)."""
    return rel[len(MARKERS_DIR) + 1 : -len(PENDING if rel.endswith(PENDING) else ".json")]


def write_index(output: OutputDir, markers: dict[str, Marker], versions: dict[str, str]) -> None:
    """`_MARKERS.json` for the next run: the markers this run knows, each with the version its file is
    listed with. `versions`: the versions of the markers this run read, as listed when it read them;
    the markers it wrote are listed now."""
    written = [key for key in markers if marker_file(key) not in versions]
    listed = output.versions(MARKERS_DIR, ".json") if written else {}
    entries = {}
    for key, marker in markers.items():
        rel = marker_file(key)
        version = versions.get(rel, listed.get(rel))
        if version is not None:
            entries[rel] = {"version": version, "marker": marker.to_json()}
    output.write_json(MARKER_INDEX, {"markers": entries})


def keep_keys(shards: list, markers: dict[str, Marker]) -> list:
    """The shards with the keys they keep: a shard that a marker was made from (by path) keeps that
    marker's key, so a file added beside it (`s00.parquet` beside `s00.jsonl`) never renames it; any
    other keeps its listing's key unless a marker holds that key for another file, when it takes one
    made unique by its path. Two markers of one path: the one under the listing's key, else the first."""
    held: dict[str, str] = {}  # input path -> the key of the first marker made from it
    for key in sorted(markers):
        held.setdefault(markers[key].shard, key)
    kept = {}
    for s in shards:
        if s.key in markers and markers[s.key].shard == s.path:
            kept[s.index] = s.key
        elif s.path in held:
            kept[s.index] = held[s.path]
    used = set(markers) | set(kept.values())
    out = []
    for s in shards:
        key = kept.get(s.index)
        if key is None:
            key = s.key if s.key not in used else f"{s.key}-{hashlib.sha1(s.path.encode()).hexdigest()[:8]}"
            used.add(key)
        out.append(s if key == s.key else replace(s, key=key))
    return out


@dataclass(frozen=True)
class Request:
    """What the run was asked to do with earlier results (the CLI's flags)."""

    fresh: bool = False  # redo every shard
    retire: bool = False  # remove the results of shards no longer in the input instead of refusing
    limits: dict[str, int] = field(default_factory=dict)  # shard key -> rows of a --limit run's cut shard


def plan_resume(output: OutputDir, shards: list, fields: dict, recorded: Recorded, request: Request = Request(),
                listed: set[str] | None = None) -> ResumePlan:
    """`shards`: those to run (keys from `keep_keys`); `listed`: the keys of every shard in the input
    now (default: `shards`'), so that a `--limit` run does not take the shards it leaves for vanished.
    A limited run's marker counts as done only for a run with the same limit on its shard, so the full
    run redoes a dry run's partial shards; a full marker counts for any run (a dry run never redoes
    finished work).

    A marker whose shard is no longer in the input (deleted, renamed, or now named under another key)
    refuses the run (VanishedShards) unless `request.retire` or `.fresh`: then its files are removed
    with it and it is listed in `plan.retired`. Raises FingerprintMismatch, VanishedShards."""
    fresh, retire, limits = request.fresh, request.retire, request.limits
    markers = recorded.markers
    listed = {s.key for s in shards} if listed is None else listed
    vanished = {key: m.shard for key, m in markers.items() if key not in listed}
    if vanished and not (retire or fresh):
        shown = ", ".join(f"{key} (from {path})" for key, path in sorted(vanished.items())[:3])
        raise VanishedShards(
            f"output.path: {output.path} holds the results of {len(vanished)} shard(s) no longer in the input: "
            f"{shown}{' ...' if len(vanished) > 3 else ''}; rerun with --retire to remove their results, or use "
            "another output.path")
    ours = fingerprint(fields)
    if not fresh:
        for key, marker in markers.items():
            if key in vanished or marker.fingerprint == ours:
                continue
            theirs = marker.spec
            differ = sorted(k for k in set(theirs) | set(fields) if theirs.get(k) != fields.get(k))
            shown = ", ".join(f"{k} ({theirs.get(k)!r} there, {fields.get(k)!r} now)" for k in differ[:3])
            raise FingerprintMismatch(
                f"output.path: {output.path} holds results made with other settings ({shown or 'another version'}"
                f"{' ...' if len(differ) > 3 else ''}; shard {key}); use another output.path, or rerun with "
                "--fresh to redo every shard"
            )
    plan = ResumePlan(retired=vanished)
    for shard in shards:
        marker = markers.get(shard.key)
        if (not fresh and marker is not None and marker.shard == shard.path
                and marker.identity == shard.identity and marker.limit in (None, limits.get(shard.key))):
            plan.done[shard.key] = marker
        else:
            plan.todo.append(shard)
    # Files of shards about to be redone or retired (and, with --fresh, of every shard recorded here),
    # and of finalisations that died for shards no longer in the input.
    redo = set(markers) if fresh else set(vanished)
    redo |= {s.key for s in plan.todo} | {key for key in recorded.pending if key not in listed}
    for key in sorted(redo):
        marker = markers.get(key)
        if marker is not None:
            plan.remove += marker.files + marker.error_files + [marker_file(key)]
        if key in recorded.pending:
            plan.remove += recorded.pending[key]
    # A pending record outlives its marker only when a run died between the two: the record alone goes.
    plan.remove += [pending_file(key) for key in sorted(recorded.pending) if key in redo or key in markers]
    plan.remove += output.leftovers()  # temporary files and staged parts of runs that died
    if plan.todo or plan.retired:
        plan.remove += [SUMMARY, REPORT, SUCCESS]
    if fresh:
        plan.remove += [PROGRESS]
    return plan
