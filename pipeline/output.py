"""The output folder: the names of what the job writes there, whole-file reads and writes, and every
storage error (and a Ray worker's error, decoded) turned into one line.

    output.path/
      <shard>-00000.parquet ...        results of input shard <shard> (pipeline.sources.Shard.key)
      _errors/<shard>-00000.parquet    its error rows (id, error, shard, row)
      _shards/<shard>.json             marker: every row of <shard> is written or recorded as an error
      _shards/<shard>.pending.json     files a shard's finalisation is about to write (removed after)
      _MARKERS.json                    the markers as a run last listed them (a cache: pipeline.markers)
      _staging/<shard>/r*.parquet      parts of a shard in flight, one per batch (removed once final)
      _LEASE.json                      the active run (id, host, pid, heartbeat)
      _PROGRESS.json                   a run that has not finished: what is done, what failed
      _SUMMARY.json, _REPORT.html, _SUCCESS   written last, when every shard is done

Every file the job writes appears whole or not at all: locally under a temporary name, then renamed;
on S3 in one PUT (a multipart upload is invisible until completed). The job removes only these
names, and result files only when a marker or a pending record lists them.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import describe_storage_error, filesystem_for, normal_path, protocol_of, strip_protocol

ERRORS_DIR = "_errors"
MARKERS_DIR = "_shards"
STAGING_DIR = "_staging"
LEASE = "_LEASE.json"
PROGRESS = "_PROGRESS.json"
SUMMARY = "_SUMMARY.json"
REPORT = "_REPORT.html"
SUCCESS = "_SUCCESS"
MARKER_INDEX = "_MARKERS.json"


# A temporary file of OutputDir.write_bytes (locally): `.<name>.tmp-<8 hex>` beside the file it becomes.
_TEMPORARY = re.compile(r"\.(?P<name>[^/]+)\.tmp-[0-9a-f]{8}")
# A part under _staging/<shard>/ (pipeline.sinks.WriteParts): its first row and a digest of its rows.
_PART = re.compile(r"r\d{12}-[0-9a-f]{12}\.parquet")
# The names the job writes in each of its folders (a temporary file is removed only if it was to be one).
_WRITTEN_IN = {
    "": re.compile(r"_PROGRESS\.json|_SUMMARY\.json|_MARKERS\.json|_REPORT\.html|_SUCCESS|_LEASE\.json|.+-\d{5}\.parquet"),
    ERRORS_DIR: re.compile(r".+-\d{5}\.parquet"),
    MARKERS_DIR: re.compile(r".+\.json"),
}


def result_file(key: str, i: int) -> str:
    return f"{key}-{i:05d}.parquet"


def marker_file(key: str) -> str:
    return f"{MARKERS_DIR}/{key}.json"


def pending_file(key: str) -> str:
    return f"{MARKERS_DIR}/{key}.pending.json"


class StorageFailed(RuntimeError):
    """Reading or writing the output failed beyond the retries; the message says why in a few words.
    Raised inside Ray tasks too, so the reason survives Ray's wrapping as the error's first line."""


def _storage_call(verb: str):
    def wrap(method):
        @functools.wraps(method)
        def call(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except (FileNotFoundError, StorageFailed):
                raise
            except Exception as e:  # noqa: BLE001 - botocore's errors are not OSErrors
                raise StorageFailed(f"cannot {verb} {self.path}: {describe_storage_error(e)}") from e
        return call
    return wrap


class OutputDir:
    """Files under output.path by their relative names (the layout above)."""

    def __init__(self, path: str, storage=None, patient: bool = True):
        self.path = path.rstrip("/")
        self.storage = storage
        self.patient = patient
        self.local = protocol_of(path) == "file"
        # Locally the resolved folder: `file:///x` is /x, not a folder named `file:`.
        self.root = normal_path(self.path) if self.local else strip_protocol(normal_path(self.path))
        self._fs = None

    @property
    def fs(self):
        if self._fs is None:  # made lazily: an OutputDir travels to Ray tasks without a live client
            self._fs = filesystem_for(self.path, self.storage, self.patient)
        return self._fs

    def impatient(self) -> "OutputDir":
        """The same folder through a client that gives up after one retry: for best-effort records."""
        return OutputDir(self.path, self.storage, patient=False)

    def __getstate__(self):
        return {**self.__dict__, "_fs": None}

    def full(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    @_storage_call("write to")
    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self.full(rel)
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2) + "\n").encode())

    def write_table(self, rel: str, table: pa.Table, compression: str = "snappy") -> None:
        """`compression`: a Parquet codec (zstd, snappy, gzip, lz4, none); snappy, pyarrow's default,
        for staging parts, which live only until their shard is final."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression=compression)
        self.write_bytes(rel, buf.getvalue())

    @_storage_call("read from")
    def read_table(self, rel: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.fs.cat_file(self.full(rel))))

    @_storage_call("read from")
    def read_json(self, rel: str):
        """The parsed file, or None when it does not exist."""
        try:
            return json.loads(self.fs.cat_file(self.full(rel)))
        except FileNotFoundError:
            return None

    @_storage_call("read from")
    def read_many(self, rels: list[str]) -> dict[str, bytes]:
        """Several small files at once (s3fs fetches a list concurrently); a missing one is left out."""
        if not rels:
            return {}
        got = self.fs.cat([self.full(r) for r in rels], on_error="omit")
        return {self._rel(p): data for p, data in got.items()}

    def list(self, rel_dir: str, suffix: str = "") -> list[str]:
        """Relative names of the files directly in rel_dir that end with suffix (sorted)."""
        return sorted(self.versions(rel_dir, suffix))

    @_storage_call("list")
    def versions(self, rel_dir: str, suffix: str = "") -> dict[str, str]:
        """Relative name -> version of the files directly in rel_dir that end with suffix, as the listing
        says: the ETag on object storage; locally size, mtime and inode (the job writes a file anew under
        a temporary name and renames it, so each write is a new inode)."""
        try:
            found = self.fs.ls(self.full(rel_dir), detail=True)
        except FileNotFoundError:
            return {}
        versions = {}
        for info in found:
            rel = self._rel(info["name"])
            if info.get("type") == "file" and rel.endswith(suffix) and not rel.rsplit("/", 1)[-1].startswith("."):
                etag = info.get("ETag") or info.get("etag")
                versions[rel] = str(etag) if etag else f"{info.get('size')}:{info.get('mtime')}:{info.get('ino')}"
        return versions

    @_storage_call("list")
    def leftovers(self) -> list[str]:
        """What runs that died left behind, by relative name: the temporary files of their writes
        (locally, `.<name>.tmp-<hex>` beside the file it was to become) in the folders the job writes,
        and the parts under _staging/. Only names of the job's own making; for a run that holds the
        lease, before it stages anything."""
        found = []
        for folder, ours in _WRITTEN_IN.items():
            try:
                names = self.fs.ls(self.full(folder).rstrip("/"), detail=False)
            except FileNotFoundError:
                continue
            for name in (p.rsplit("/", 1)[-1] for p in names):
                temporary = _TEMPORARY.fullmatch(name)
                if temporary and ours.fullmatch(temporary.group("name")):
                    found.append(f"{folder}/{name}".lstrip("/"))
        try:
            staged = self.fs.find(self.full(STAGING_DIR))
        except FileNotFoundError:
            staged = []
        for p in staged:
            rel = self._rel(p)
            parts = rel.split("/")
            temporary = _TEMPORARY.fullmatch(parts[-1])
            name = temporary.group("name") if temporary else parts[-1]
            if len(parts) == 3 and _PART.fullmatch(name):
                found.append(rel)
        return sorted(found)

    @_storage_call("list")
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.full(rel))

    @_storage_call("remove files from")
    def remove(self, rels: list[str], known: bool = False) -> int:
        """Remove these files (missing ones are fine); returns how many were there. `known`: the caller
        has just written or listed them, so they are not looked up one by one first."""
        present = rels if known else [r for r in rels if self.exists(r)]
        if present:
            self.fs.rm([self.full(r) for r in present])
        return len(present)

    def prune(self, rel_dir: str) -> None:
        """Locally, remove rel_dir and its parents below the root once they are empty (object stores
        have no folders to leave behind)."""
        if not self.local:
            return
        path = self.full(rel_dir)
        while path != self.root:
            try:
                os.rmdir(path)
            except OSError:  # not empty, or gone
                return
            path = os.path.dirname(path)

    def _rel(self, path: str) -> str:
        path = strip_protocol(path)
        return path[len(self.root) :].lstrip("/") if path.startswith(self.root) else path


# -- Ray's errors, decoded: what went wrong in a worker, in one line ---------------------------------

# The line of a worker's traceback that names an exception: `module.Class: message`.
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*): (.+)$")
_STORAGE_FAILED = "pipeline.output.StorageFailed"


def worker_exception_lines(e: BaseException) -> list[tuple[str, str]]:
    """(class, message) of each exception named in a RayTaskError's text. Ray re-raises a worker's
    error as a RayTaskError whose text holds the worker's traceback; the wrapped exception objects lose
    their own chain on the way, so that text is where the cause is."""
    from ray.exceptions import RayTaskError

    seen: BaseException | None = e
    while seen is not None and not isinstance(seen, RayTaskError):
        seen = getattr(seen, "cause", None) or seen.__cause__
    if seen is None:
        return []
    lines = [line.strip() for line in str(seen).splitlines()]
    return [m.groups() for m in map(_EXCEPTION_LINE.match, lines) if m and not m.group(1).startswith("ray::")]


def storage_failed(e: BaseException) -> bool:
    chain = [e, getattr(e, "cause", None), e.__cause__]
    return any(isinstance(x, StorageFailed) for x in chain) or any(
        name == _STORAGE_FAILED for name, _ in worker_exception_lines(e))


def root_cause(e: BaseException) -> str:
    """What went wrong, in one line: our own StorageFailed says it all in its message; otherwise the
    first exception a worker's traceback names (the deepest cause: chained tracebacks print it first)."""
    for x in (e, getattr(e, "cause", None), e.__cause__):
        if isinstance(x, StorageFailed):
            return str(x)
    named = worker_exception_lines(e)
    for name, message in named:
        if name == _STORAGE_FAILED:
            return message
    if named:
        name, message = named[0]
        return f"{name.rsplit('.', 1)[-1]}: {message}"
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"
