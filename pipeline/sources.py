"""Reading input shards into rows: Parquet and JSONL (gzip, bz2, zstd too), local or `s3://`.

Shards are listed on the driver (so `validate` can say the input is unreachable, or holds files of
unknown format, before anything runs), then each shard is read by one task, or a large Parquet shard
by several, each a range of whole row groups (`plan_pieces`). Reading by shard (or by row group, whose
first row's place the footer gives) keeps each row's place in its shard, which gives stable ids when
the input has none, and lets a bad JSON line
become one error row instead of failing the whole file (pyarrow's JSON reader fails a file on one
mistyped value). Rows that cannot be processed (bad id, null / empty / non-string text) are marked here
with a reason and travel on as error rows; nothing is dropped. A file that cannot be read at all raises
ShardUnreadable: its row count is unknown, so no error row could stand for it honestly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import columns as C
from pipeline.errors import UserError
from pipeline.storage import filesystem_for, storage_cause, strip_protocol, with_protocol

READ_BATCH_ROWS = 4096
READ_CHUNK_BYTES = 1 << 20
COUNT_CHUNK_BYTES = 8 << 20
PROBE_THREADS = 16  # id-type probes are one small read each; on S3 their latency, not bandwidth, adds up
UTF8_BOM = b"\xef\xbb\xbf"  # skipped at the start of a JSONL file
JSON_BLOCK_BYTES = 16 << 20  # pyarrow's JSON reader (the id probe): a longer line makes the probe parse lines

# Reader keys of the input columns carried to the output (output.columns): CARRY_PREFIX + the column's
# name. Internal while they travel (stages pass them through untouched); Postprocess writes them under
# their own names.
CARRY_PREFIX = "_carry:"

DATA_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}  # fsspec names


@dataclass(frozen=True)
class Piece:
    """What one read task reads: a whole shard, or row groups [first, end) of a Parquet shard, whose
    rows are numbered from `row0` (the rows of the row groups before them)."""

    shard: int  # Shard.index
    part: int  # 0, 1, ... within the shard
    row_groups: tuple[int, int] | None = None  # None: the whole shard
    row0: int = 0


class InputError(UserError):
    """The input cannot be read at all; the message names the path and what to do."""


class ShardUnreadable(Exception):
    """One shard cannot be read (open failed, corrupt footer, page or stream); the message is one
    sentence naming the file and the reason. Rows yielded before it are not to be trusted as a whole."""


@dataclass(frozen=True)
class Shard:
    index: int
    path: str  # with protocol for remote files
    format: str  # "parquet" | "jsonl"
    compression: str | None = None  # fsspec's name: "gzip" | "bz2" | "zstd"
    key: str = ""  # the stem of this shard's output files: unique in its listing, deterministic
    identity: dict = field(default_factory=dict)  # what resume compares (`_identity`, input.verify)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


def _split_name(name: str) -> tuple[str, str | None, str | None]:
    """(stem, format, compression) from a file name; format None when the extensions do not say."""
    lower = name.lower()
    compression = next((c for ext, c in COMPRESSIONS.items() if lower.endswith(ext)), None)
    if compression:
        cut = name.rindex(".")
        name, lower = name[:cut], lower[:cut]
    for ext, fmt in DATA_EXTENSIONS.items():
        if lower.endswith(ext):
            # Parquet compresses inside the file; a compressed Parquet file is not a format we infer.
            return name[: -len(ext)], None if fmt == "parquet" and compression else fmt, compression
    return name, None, compression


def list_shards(input_spec, storage=None) -> list[Shard]:
    path = input_spec.path
    fs = filesystem_for(path, storage)
    bare = strip_protocol(path)
    root = fs._strip_protocol(path)  # normalised as listings name files (local: absolute)
    named = False  # a single file named by the path is read even if its name looks hidden
    try:
        if any(ch in bare for ch in "*?["):
            found = fs.glob(bare, detail=True)
            root = re.split(r"[*?\[]", root, maxsplit=1)[0].rpartition("/")[0]
        elif fs.isdir(bare):
            found = fs.find(bare, detail=True)
        else:
            try:
                info = fs.info(bare)
            except FileNotFoundError:
                found = {}
            else:
                found = {info["name"]: info}
            root, named = root.rpartition("/")[0], True
    except (OSError, PermissionError) as e:
        raise InputError(f"input.path: cannot list {path} ({storage_cause(e) or e})") from None
    except Exception as e:  # noqa: BLE001 - botocore errors (missing credentials) are not OSErrors
        cause = storage_cause(e) or f"{type(e).__name__}: {e}"
        raise InputError(f"input.path: cannot list {path} ({cause})") from None

    files = []  # (relative name, info, stem, format, compression)
    for name in sorted(found):
        info = found[name]
        rel = name[len(root) :].lstrip("/")
        if not named and _hidden(rel):
            continue  # markers and dot-files (_SUCCESS, .DS_Store) beside the data
        if info.get("islink"):
            info = _followed(fs, name, rel, path)
        if info.get("type") != "file":
            continue  # folders (a listing names them under a glob)
        stem, fmt, compression = _split_name(rel)
        files.append((rel, info, stem, input_spec.format or fmt, compression))
    unknown = [rel for rel, _, _, fmt, _ in files if fmt is None]
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise InputError(
            f"input.format: cannot tell the format of {', '.join(unknown[:3])}{more} in {path}; "
            "set input.format to parquet or jsonl, or move those files out of the input"
        )
    if not files:
        raise InputError(f"input.path: no input files match {path}")
    keys = _unique_keys([(rel, stem) for rel, _, stem, _, _ in files])
    shards = [
        Shard(i, with_protocol(info["name"], path), fmt, compression, key, _identity(info))
        for i, ((_, info, _, fmt, compression), key) in enumerate(zip(files, keys))
    ]
    if getattr(input_spec, "verify", "metadata") == "checksum":
        with ThreadPoolExecutor(PROBE_THREADS) as pool:
            digests = list(pool.map(lambda s: _sha256(s, storage), shards))
        shards = [replace(s, identity={"size": s.identity["size"], "sha256": d}) for s, d in zip(shards, digests)]
    return shards


def _followed(fs, name: str, rel: str, path: str) -> dict:
    """A symbolic link in a local input: the file it points to is read under the link's name, with that
    file's identity; a link to a folder or to nothing is refused, never skipped in silence."""
    try:
        target = os.stat(name)
    except OSError as e:
        raise InputError(f"input.path: {rel} in {path} is a symbolic link to {os.readlink(name)!r}, which cannot "
                         f"be read ({e.strerror or e}); fix or remove the link") from None
    if not stat.S_ISREG(target.st_mode):
        raise InputError(f"input.path: {rel} in {path} is a symbolic link to a folder, which the job does not "
                         "follow; give that folder as input.path, or copy its files in")
    return {**fs.info(name), "name": name, "type": "file"}


def _hidden(rel: str) -> bool:
    return any(part.startswith(("_", ".")) for part in rel.split("/") if part)


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name.replace("/", "__"))


def _unique_keys(names: list[tuple[str, str]]) -> list[str]:
    """Output stems for (relative name, stem) pairs. Stems that collide (x.jsonl and x.parquet) keep
    their extensions; names that still collide (`a b` and `a_b` sanitize alike) get a hash of the name."""
    keys = [_sanitize(stem) for _, stem in names]
    counts = Counter(keys)
    keys = [key if counts[key] == 1 else _sanitize(rel) for key, (rel, _) in zip(keys, names)]
    counts = Counter(keys)
    return [
        key if counts[key] == 1 else f"{key}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"
        for key, (rel, _) in zip(keys, names)
    ]


def _identity(info: dict) -> dict:
    """What a rerun compares to tell that a shard's input is unchanged. An ETag changes with the content
    (S3). A local file's size and modification time can be put back after an edit (`touch -r`); its
    change time and inode cannot: any write, rename or restore of the file moves them. Elsewhere (another
    fsspec store), size and modification time."""
    etag = info.get("ETag")
    if etag:
        return {"size": int(info["size"]), "etag": str(etag)}
    if info.get("ino") is not None:  # a local file (a link's target)
        st = os.stat(info["name"])
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}
    mtime = info.get("mtime")
    return {"size": int(info["size"]), "mtime": None if mtime is None else float(mtime)}


def _sha256(shard: Shard, storage) -> str:
    """input.verify: checksum - the digest of the shard's bytes as stored (compressed ones too)."""
    digest = hashlib.sha256()
    fs = filesystem_for(shard.path, storage)
    try:
        with fs.open(strip_protocol(shard.path), "rb") as f:
            while chunk := f.read(COUNT_CHUNK_BYTES):
                digest.update(chunk)
    except Exception as e:  # noqa: BLE001 - permission, a vanished file, any S3 error
        raise InputError(f"input.verify: cannot read {shard.name} to checksum it "
                         f"({storage_cause(e) or f'{type(e).__name__}: {e}'})") from None
    return digest.hexdigest()


def row_problem(row: dict, text_columns: list[str]) -> str | None:
    """Why a row cannot be processed, or None."""
    if row.get(C.ID) is None:
        return "id is null"
    for col in text_columns:
        value = row.get(col)
        if value is None:
            return f"{col} is null"
        if not isinstance(value, str):
            return f"{col} is not a string (got {type(value).__name__})"
        if not value.strip():
            return f"{col} is empty"
    return None


# -- reading bytes: every I/O or decoding failure becomes ShardUnreadable ----------------------------
def _unreadable(shard: Shard, what: str, e: BaseException) -> ShardUnreadable:
    """The exception for a failed read: a storage failure says so (S3 throttling beyond the retries is
    not a corrupt file); otherwise `what` went wrong, with the type, which says what a bare message
    cannot (s3fs's FileNotFoundError carries only the path)."""
    cause = storage_cause(e)
    if cause:
        return ShardUnreadable(f"{shard.name}: cannot be read ({cause})")
    return ShardUnreadable(f"{shard.name}: {what} ({type(e).__name__}: {' '.join(str(e).split())})")


@contextmanager
def _open(shard: Shard, storage, patient: bool = True):
    fs = filesystem_for(shard.path, storage, patient=patient)
    try:
        f = fs.open(strip_protocol(shard.path), "rb", compression=shard.compression)
    except Exception as e:  # noqa: BLE001 - permission, missing file, any S3 error
        raise _unreadable(shard, "cannot be opened", e) from e
    with f:
        yield f


def _parquet_file(f, shard: Shard) -> pq.ParquetFile:
    try:
        # Page checksums, where the writer stored them (parquet-mr does), catch corruption that still
        # decodes, e.g. flipped bytes inside an uncompressed text value.
        return pq.ParquetFile(f, page_checksum_verification=True)
    except Exception as e:  # noqa: BLE001 - a corrupt footer or a failed read
        raise _unreadable(shard, "not a readable Parquet file", e) from e


def _lines(shard: Shard, storage) -> Iterator[tuple[int, bytes]]:
    """(1-based physical line number, line) of the decompressed bytes, split on b"\\n" only: a raw
    b"\\r" inside a line is not a break, so the reader sees exactly the lines the file holds. A UTF-8
    byte order mark at the start of the file (Windows tools write one) is not part of line 1."""
    line_no = 0
    with _open(shard, storage) as f:
        tail = b""
        start = True  # the first bytes are still to be checked for a BOM
        while True:
            try:
                chunk = f.read(READ_CHUNK_BYTES)
            except Exception as e:  # noqa: BLE001 - truncated / corrupt stream, failed read
                what = f"truncated or corrupt {shard.compression} data" if shard.compression else "read failed"
                where = f"after line {line_no}" if line_no else "at the start"
                raise _unreadable(shard, f"{what} {where}", e) from e
            if not chunk:
                break
            if start:
                head = tail + chunk
                if len(head) < len(UTF8_BOM) and UTF8_BOM.startswith(head):
                    tail = head  # a stream may hand out fewer bytes than asked: wait for three
                    continue
                tail, chunk, start = b"", head.removeprefix(UTF8_BOM), False
            *complete, tail = (tail + chunk).split(b"\n")
            for line in complete:
                line_no += 1
                yield line_no, line
        if tail:
            yield line_no + 1, tail


def _parse(line: bytes) -> tuple[dict | None, str | None]:
    """The JSON object on a line, or None and why not."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 ({e.reason})"
    try:
        # strict=False: raw control characters (a tab, a lone \r) inside strings are text, not errors.
        obj = json.loads(text, strict=False)
    except ValueError as e:
        return None, f"invalid JSON ({e})"
    if not isinstance(obj, dict):
        return None, f"invalid JSON (expected a JSON object, got {type(obj).__name__})"
    return obj, None


def _objects(shard: Shard, storage) -> Iterator[dict]:
    """The shard's JSON objects, skipping blank and bad lines: for peeking at the first ones."""
    for _, line in _lines(shard, storage):
        if line.strip():
            obj, _ = _parse(line)
            if obj is not None:
                yield obj


def carry_key(column: str) -> str:
    """The reader's key for an input column carried to the output (output.columns)."""
    return CARRY_PREFIX + column


def is_carry_key(key: str) -> bool:
    return key.startswith(CARRY_PREFIX)


def count_rows(shard: Shard, storage=None, patient: bool = True) -> int:
    """Rows the reader will find in a shard: the Parquet footer's count, or the JSONL lines that are
    not blank (the reader's rows, bad lines included), without parsing them. Raises ShardUnreadable
    like the reader. `patient=False`: few S3 retries (for a progress count, which may give up)."""
    with _open(shard, storage, patient) as f:
        if shard.format == "parquet":
            return _parquet_file(f, shard).metadata.num_rows
        rows, tail, start = 0, b"", True
        while chunk := f.read(COUNT_CHUNK_BYTES):
            if start:  # a BOM is not a line's content (as in `_lines`)
                head = tail + chunk
                if len(head) < len(UTF8_BOM) and UTF8_BOM.startswith(head):
                    tail = head
                    continue
                tail, chunk, start = b"", head.removeprefix(UTF8_BOM), False
            *lines, tail = (tail + chunk).split(b"\n")
            rows += sum(1 for line in lines if line.strip())
        return rows + (1 if tail.strip() else 0)


def plan_pieces(shards: list[Shard], storage, split_bytes: int, whole: frozenset[str] = frozenset()) -> list[Piece]:
    """The read tasks for `shards`: one per shard, except a Parquet shard larger than `split_bytes`,
    which gets one per run of whole row groups of about `split_bytes` (from its footer, read here on
    the driver). Shards in `whole` (by key) are read whole; so is one whose footer cannot be read (the
    reader then reports it)."""
    big = [s for s in shards if s.format == "parquet" and s.key not in whole
           and int(s.identity.get("size") or 0) > split_bytes]
    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        groups = dict(zip((s.index for s in big), pool.map(lambda s: _row_groups(s, storage), big)))
    pieces = []
    for shard in shards:
        sizes = groups.get(shard.index)
        if not sizes or len(sizes) == 1:
            pieces.append(Piece(shard.index, 0))
            continue
        first, row0, rows, size, part = 0, 0, 0, 0, 0
        for g, (n_rows, n_bytes) in enumerate(sizes):
            rows, size = rows + n_rows, size + n_bytes
            if size >= split_bytes or g == len(sizes) - 1:
                pieces.append(Piece(shard.index, part, (first, g + 1), row0))
                first, row0, rows, size, part = g + 1, row0 + rows, 0, 0, part + 1
    return pieces


def group_pieces(pieces: list[Piece], shards: dict[int, Shard], group_bytes: int) -> tuple[list, list]:
    """The read tasks: (streamed, grouped), each a list of piece-index lists. A shard smaller than
    `group_bytes` (read whole, its size known) shares a task with the small shards after it, up to
    `group_bytes` together, and they leave the task as one block: many small shards cost a few tasks,
    not one each. Every other piece is a task of its own whose rows stream on in batches. Which way a
    shard goes depends on the shard alone, so a resumed run reads it as the full run did."""
    streamed, grouped, group, size = [], [], [], 0
    for i, piece in enumerate(pieces):
        n = shards[piece.shard].identity.get("size")
        if piece.row_groups is not None or not isinstance(n, int) or n >= group_bytes:
            streamed.append([i])
            continue
        if group and size + n > group_bytes:
            grouped.append(group)
            group, size = [], 0
        group.append(i)
        size += n
    if group:
        grouped.append(group)
    return streamed, grouped


def _row_groups(shard: Shard, storage) -> list[tuple[int, int]] | None:
    """(rows, compressed bytes) of each row group, or None when the footer cannot be read."""
    try:
        with _open(shard, storage) as f:
            meta = _parquet_file(f, shard).metadata
    except ShardUnreadable:
        return None
    out = []
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        out.append((rg.num_rows, sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))))
    return out


def shard_columns(shard: Shard, storage=None, objects: int = 1) -> list[str]:
    """The shard's column names: the Parquet schema's, or the keys of its first `objects` JSON objects
    (in the order they first appear; a JSON key may be missing from some rows)."""
    if shard.format == "parquet":
        with _open(shard, storage) as f:
            return _parquet_file(f, shard).schema_arrow.names
    keys: dict[str, None] = {}
    with closing(_objects(shard, storage)) as found:
        for _, obj in zip(range(objects), found):
            keys.update(dict.fromkeys(obj))
    return list(keys)


def _carry_array(values: list) -> pa.Array:
    """One carried JSON column as Arrow, its type inferred from the values (a missing key is null).
    Values of no one Arrow type (numbers and strings mixed) are written as their JSON text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], type=pa.string())


class ShardReader:
    """Reads one shard into batches of rows with the internal column names (plain Python; no Ray).

    `columns` maps internal names (pipeline.columns) to the user's column names; the id column is
    separate so that a missing one can be made up from the shard and row index. Keys made by
    `carry_key` name the columns carried to the output: they are read as they are, with their Arrow
    type (Parquet) or JSON's (JSONL), never checked as text.
    """

    def __init__(self, columns: dict[str, str], id_column: str, storage=None, optional: tuple[str, ...] = (),
                 id_type: pa.DataType | None = None):
        self.columns = {key: user for key, user in columns.items() if not is_carry_key(key)}
        self.carry = {key: user for key, user in columns.items() if is_carry_key(key)}
        self.id_column = id_column
        self.storage = storage
        self.optional = set(optional)
        # One id type for the whole job (Ray cannot concatenate blocks whose id types differ);
        # None keeps each batch's own type (in-process use).
        self.id_type = id_type

    def read(self, shard: Shard, piece: Piece | None = None) -> Iterator[pa.Table]:
        """Batches of the shard's rows (of the piece's row groups only, when given); raises
        ShardUnreadable when the file cannot be read to its end."""
        if shard.format == "parquet":
            yield from self._read_parquet(shard, piece)
        else:
            yield from self._read_jsonl(shard)

    # -- parquet ---------------------------------------------------------------------------------
    def _read_parquet(self, shard: Shard, piece: Piece | None = None) -> Iterator[pa.Table]:
        with _open(shard, self.storage) as f:
            pf = _parquet_file(f, shard)
            names = set(pf.schema_arrow.names)
            missing = [user for key, user in self.columns.items() if user not in names and key not in self.optional]
            missing += [user for user in self.carry.values() if user not in names]
            has_id = self.id_column in names
            wanted = sorted({u for u in [*self.columns.values(), *self.carry.values()] if u in names}
                            | ({self.id_column} if has_id else set()))
            groups = None if piece is None or piece.row_groups is None else list(range(*piece.row_groups))
            batches = pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=wanted or None, row_groups=groups)
            row0 = piece.row0 if groups is not None else 0
            while True:
                try:
                    batch = next(batches, None)
                except Exception as e:  # noqa: BLE001 - a corrupt page or a failed read, nothing of ours
                    raise _unreadable(shard, f"corrupt or unreadable Parquet data after row {row0}", e) from e
                if batch is None:
                    break
                # A foreign writer may store bytes that are not UTF-8 in a string column, and pyarrow
                # reads them unchecked: such a value is null, and its row an error row, in this read.
                checked = {u: _utf8_checked(batch.column(u)) for u in wanted}
                present = {u: checked[u][0].to_pylist() for u in set(self.columns.values()) if u in names}
                n = batch.num_rows
                rows = [
                    {key: present[user][i] if user in present else None for key, user in self.columns.items()}
                    for i in range(n)
                ]
                bad = [(C.ID, self.id_column)] if has_id else []
                bad += [*self.columns.items(), *self.carry.items()]
                for key, user in bad:
                    what = f"column {user!r}" if is_carry_key(key) else key
                    for i, reason in checked.get(user, (None, {}))[1].items():
                        rows[i].setdefault(C.ERROR, f"{what} is not valid UTF-8 ({reason})")
                if missing:
                    # A file without the text column: every row becomes an error row, none is lost.
                    reason = f"column {missing[0]!r} not in {shard.name} (it has: {', '.join(sorted(names))})"
                    for r in rows:
                        r[C.ERROR] = reason
                ids = checked[self.id_column][0] if has_id else False
                carried = {key: checked[user][0] if user in names else pa.nulls(n)
                           for key, user in self.carry.items()}
                yield self.to_table(rows, shard, row0, ids, carried)
                row0 += n

    # -- jsonl -----------------------------------------------------------------------------------
    def _read_jsonl(self, shard: Shard) -> Iterator[pa.Table]:
        rows: list[dict] = []
        row0 = 0
        has_id: bool | None = None  # the first object decides: a shard has ids, or all of them are made up
        for line_no, line in _lines(shard, self.storage):
            if not line.strip():
                continue  # blank (ASCII whitespace only) lines are not rows
            obj, problem = _parse(line)
            if obj is None:
                row = {key: None for key in [*self.columns, *self.carry]}
                row[C.ERROR] = f"line {line_no}: {problem}"
            else:
                if has_id is None:
                    has_id = self.id_column in obj
                row = {key: obj.get(user) for key, user in [*self.columns.items(), *self.carry.items()]}
                ident = row[C.ID] = obj.get(self.id_column)
                if has_id and isinstance(ident, int) and not isinstance(ident, bool) and not _fits(ident, pa.int64()):
                    # JSON integers are unbounded; no Arrow (or Parquet) id column holds this one.
                    row[C.ID] = None
                    row[C.ERROR] = f"line {line_no}: id {ident} does not fit in a 64-bit integer"
            rows.append(row)
            if len(rows) >= READ_BATCH_ROWS:
                yield self.to_table(rows, shard, row0, None if has_id else False)
                row0 += len(rows)
                rows = []
        if rows or row0 == 0:
            yield self.to_table(rows, shard, row0, None if has_id else False)

    # -- common ----------------------------------------------------------------------------------
    def to_table(self, rows: list[dict], shard: Shard, row0: int, ids, carried: dict | None = None) -> pa.Table:
        """Rows use internal keys. `ids`: an Arrow array of the input's ids (kept with their type),
        None to take `row[C.ID]`, or False when the input has no id column (stable ids are made).
        `carried`: the carried columns as Arrow arrays (Parquet); otherwise they are taken from the rows."""
        text_cols = [k for k in self.columns if k not in self.optional]
        id_errors: list[str | None] = [None] * len(rows)
        if ids is False:
            ids = pa.array([f"{shard.name}:{row0 + i}" for i in range(len(rows))], type=pa.string())
        else:
            id_type = self.id_type
            if isinstance(ids, pa.Array):
                if id_type is None and (pa.types.is_integer(ids.type) or pa.types.is_string(ids.type)
                                        or pa.types.is_large_string(ids.type)):
                    id_type = ids.type
                values = ids.to_pylist()
            else:
                values = [r.get(C.ID) for r in rows]
            ids, id_errors = _job_ids(values, id_type)
        id_values = ids.to_pylist()
        errors: list[str | None] = []
        values = {key: [] for key in self.columns}
        for r, ident, id_error in zip(rows, id_values, id_errors):
            prepared = {**r, C.ID: ident}
            error = r.get(C.ERROR) or id_error or row_problem(prepared, text_cols)
            for col in self.optional:
                v = r.get(col)
                if error is None and v is not None and not isinstance(v, str):
                    error = f"{col} is not a string (got {type(v).__name__})"
            errors.append(error)
            for key in self.columns:
                v = r.get(key)
                # Non-string values only occur in error rows; keep the column a string column.
                values[key].append(v if isinstance(v, str) or v is None else str(v))
        data = {C.ID: ids}
        for key in self.columns:
            data[key] = pa.array(values[key], type=pa.string())
        for key in self.carry:
            data[key] = carried[key] if carried is not None else _carry_array([r.get(key) for r in rows])
        data[C.SHARD] = pa.array([shard.index] * len(rows), type=pa.int32())
        data[C.ROW] = pa.array(range(row0, row0 + len(rows)), type=pa.int64())
        data[C.ERROR] = pa.array(errors, type=pa.string())
        return pa.table(data)


def _utf8_checked(values: pa.Array) -> tuple[pa.Array, dict[int, str]]:
    """A column of a Parquet batch, with each value that holds a string that is not valid UTF-8 (nested
    ones too) made null, and per such row why (UnicodeDecodeError's reason). Valid columns, the rule,
    cost one validation pass."""
    try:
        values.validate(full=True)
        return values, {}
    except pa.ArrowInvalid:
        pass
    bad = {}
    for i in range(len(values)):
        try:
            values[i].as_py()
        except UnicodeDecodeError as e:
            bad[i] = e.reason
    if not bad:  # invalid for another reason: as read, as before
        return values, {}
    mask = np.zeros(len(values), dtype=bool)
    mask[list(bad)] = True
    return pc.if_else(pa.array(mask), pa.nulls(len(values), values.type), values), bad


def _fits(value: int, int_type: pa.DataType) -> bool:
    bits = int_type.bit_width
    if pa.types.is_signed_integer(int_type):
        return -(1 << (bits - 1)) <= value < 1 << (bits - 1)
    return 0 <= value < 1 << bits


def _job_ids(values: list, id_type: pa.DataType | None) -> tuple[pa.Array, list[str | None]]:
    """Ids in the job's id type, and per id the reason it cannot be one (its id becomes null).
    A string is never cast to an integer: "007" and "7" are different documents."""
    if id_type is None:  # strings win, as across shards
        id_type = pa.string() if any(isinstance(v, str) for v in values) else pa.int64()
    integer = pa.types.is_integer(id_type)
    out, errors = [], []
    for v in values:
        problem = None
        if v is None:
            pass  # row_problem says "id is null"
        elif isinstance(v, bool) or not isinstance(v, (int, str)):
            problem = f"id {v!r} is a {type(v).__name__}; ids must be integers or strings"
        elif isinstance(v, str) and integer:
            problem = f"id {v!r} is a string but this job's ids are integers (every id was one when it started)"
        elif isinstance(v, int) and integer and not _fits(v, id_type):
            problem = f"id {v} does not fit in this job's id type ({id_type})"
        elif isinstance(v, int) and not integer:
            v = str(v)
        out.append(None if problem else v)
        errors.append(problem)
    return pa.array(out, type=id_type), errors


def _shard_id_type(shard: Shard, id_column: str, storage) -> pa.DataType | None:
    """What one shard says about the job's id type: an integer type, string, or None when it holds
    no id to go by (empty, all ids null, or unreadable: the reader reports that one)."""
    try:
        if shard.format == "parquet":
            with _open(shard, storage) as f:
                schema = _parquet_file(f, shard).schema_arrow
            if id_column not in schema.names:
                return pa.string()  # made-up ids
            id_type = schema.field(id_column).type
            return id_type if pa.types.is_integer(id_type) else pa.string()
        with closing(_objects(shard, storage)) as objects:
            for i, obj in enumerate(objects):
                if i == 0 and id_column not in obj:
                    return pa.string()  # the reader makes this shard's ids up
                value = obj.get(id_column)
                if value is not None:
                    return pa.int64() if isinstance(value, int) and not isinstance(value, bool) else pa.string()
    except ShardUnreadable:
        pass
    return None


def _jsonl_has_string_id(shard: Shard, id_column: str, storage) -> bool:
    """Whether any id in a JSONL shard is a string. pyarrow's JSON reader, told that the ids are int64,
    reads a shard whose ids are all integers (or null) fast, and fails the whole file on any other value
    or any bad line; then the lines are parsed here, as the reader parses them, to decide. An unreadable
    shard says no (the reader reports it)."""
    import pyarrow.json as pj

    options = pj.ParseOptions(explicit_schema=pa.schema([(id_column, pa.int64())]),
                              unexpected_field_behavior="ignore")
    try:
        with _open(shard, storage) as f:
            pj.read_json(f, read_options=pj.ReadOptions(block_size=JSON_BLOCK_BYTES), parse_options=options)
        return False
    except Exception:  # noqa: BLE001 - a string id, a float, a bad line, a long line, a failed read: look
        pass
    try:
        for _, line in _lines(shard, storage):
            if b'"' in line:  # no string without a quote
                obj, _ = _parse(line)
                if obj is not None and isinstance(obj.get(id_column), str):
                    return True
    except ShardUnreadable:
        pass
    return False


def probe_id_type(shards: list[Shard], id_column: str, storage=None) -> pa.DataType:
    """The job's id type, from every id of every shard. Integers only if every shard's ids are integers
    (the Parquet type when all shards agree on it, else int64); otherwise strings win, so that no string
    id is ever cast to a number. Parquet: the footer schema says. JSONL: the first non-null id says,
    and when every shard says integer, the JSONL shards are read to their end to confirm it (one
    fast pass of pyarrow's JSON reader each; `_jsonl_has_string_id`)."""
    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        found = list(pool.map(lambda s: _shard_id_type(s, id_column, storage), shards))
        votes = {t for t in found if t is not None}
        if not votes or not all(pa.types.is_integer(t) for t in votes):
            return pa.string()
        jsonl = [s for s, t in zip(shards, found) if t is not None and s.format == "jsonl"]
        checks = [pool.submit(_jsonl_has_string_id, s, id_column, storage) for s in jsonl]
        for done in as_completed(checks):
            if done.result():
                for check in checks:
                    check.cancel()
                return pa.string()
    return votes.pop() if len(votes) == 1 else pa.int64()


def reader_columns(spec) -> tuple[dict[str, str], tuple[str, ...]]:
    """Internal column name -> the user's column, for the spec's head (plus output.columns as carry
    keys), and the internal names that may be missing (a text pair)."""
    from pipeline.heads import head_entry

    cols = {key: getattr(spec.input, attr) for key, attr in head_entry(spec.model.head).input_columns.items()}
    optional = ()
    if spec.input.text_pair_column:
        cols[C.TEXT_PAIR] = spec.input.text_pair_column
        optional = (C.TEXT_PAIR,)
    cols |= {carry_key(name): name for name in spec.output.columns}  # read as they are, never as text
    return cols, optional
