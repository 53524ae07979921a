"""Every check before work, in one room: the spec's paths apart, the input listed and its columns
present, the output writable, and (the slow part, seconds: transformers, the tokenizer, the weights)
the head loaded and the checkpoint holding its weights. A problem found here is one sentence and exit
2 (pipeline.errors.UserError), before Ray starts or any file is written."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipeline.heads import head_entry
from pipeline.models import model_identity
from pipeline.output import OutputDir, StorageFailed
from pipeline.sources import InputError, Shard, ShardUnreadable, is_carry_key, list_shards, reader_columns, shard_columns
from pipeline.spec import SpecError
from pipeline.storage import normal_path, protocol_of, strip_protocol


@dataclass(frozen=True)
class Preflight:
    """What the quick checks found (well under a second on local files)."""

    shards: list[Shard]  # the input's shards, keys from the listing (pipeline.markers.keep_keys may keep older ones)
    output: OutputDir
    model: dict  # the checkpoint's identity: {"path", "revision"} (pipeline.models.model_identity)


@dataclass(frozen=True)
class HeadCheck:
    """What the slow checks loaded: the head (its tokenizer and config) and the checkpoint's local folder."""

    head: object
    model_dir: str


def check_input(spec) -> Preflight:
    """The quick checks: paths apart, input reachable, columns present, output writable."""
    check_paths_apart(spec.input.path, spec.output.path)
    shards = list_shards(spec.input, spec.storage)
    check_columns(spec, shards)
    output = OutputDir(spec.output.path, spec.storage)
    check_writable(output)
    return Preflight(shards, output, model_identity(spec.model.path, spec.storage))


def check_head(spec) -> HeadCheck:
    """The slow checks: the head loads and the model has its weights."""
    from pipeline.models import check_model
    from pipeline.stages import load_head

    head = load_head(spec)
    if spec.output.granularity not in head.granularities:
        raise SpecError(f"output.granularity: {spec.model.head} supports {', '.join(head.granularities)}")
    model_dir = head.ctx.extra["model_dir"]
    check_model(model_dir, head, spec.model)
    return HeadCheck(head, model_dir)


def validate(spec) -> tuple[Preflight, HeadCheck]:
    """Everything `run` checks before it starts (`bert-batch validate`)."""
    return check_input(spec), check_head(spec)


def check_paths_apart(input_path: str, output_path: str) -> None:
    """Refuses an output that is, lies inside or contains the input, compared as the paths they name
    (pipeline.storage.normal_path: `file://`, `~`, `..`, `//` and symlinks resolved), the input up to
    its first wildcard."""
    protocol, bare = protocol_of(input_path), strip_protocol(input_path)
    parts = bare.split("/")
    wild = next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts))
    fixed = "/".join(parts[:wild]) or ("/" if bare.startswith("/") else ".")
    fixed = normal_path(fixed if protocol == "file" else f"{protocol}://{fixed}").rstrip("/")
    out = normal_path(output_path).rstrip("/")
    if out == fixed or out.startswith(fixed + "/") or fixed.startswith(out + "/") or not out:
        raise SpecError(f"output.path: {output_path} is, lies inside or contains input.path {input_path}; "
                        "write the results somewhere else")


def check_columns(spec, shards) -> None:
    """The configured columns exist in the first readable, non-empty shard (of the first three; an
    unreadable one fails later, alone)."""
    columns, optional = reader_columns(spec)
    for shard in shards[:3]:
        try:
            # JSONL: the keys of the first objects, as a carried column may be missing from some rows.
            have = shard_columns(shard, spec.storage, objects=100)
        except ShardUnreadable:
            continue
        if not have:  # an empty shard tells nothing
            continue
        attr_of = head_entry(spec.model.head).input_columns
        for key, user in columns.items():
            if user not in have and key not in optional:
                field = "output.columns" if is_carry_key(key) else f"input.{attr_of.get(key, 'text_column')}"
                raise InputError(f"{field}: column {user!r} not in {shard.name} (it has: {', '.join(have)})")
        return


def check_writable(output: OutputDir) -> None:
    """Locally: the folder, or the nearest one above it that exists, is a folder where a file can be
    made (a hidden probe file is made and removed there; no folder is made). os.access alone says yes
    to root on a read-only mount or /proc. Object storage: a probe object is written and removed."""
    try:
        if output.local:
            parent = output.root
            while not os.path.exists(parent):
                parent = os.path.dirname(parent)
            if not os.path.isdir(parent):
                raise InputError(f"output.path: cannot write to {output.path} ({parent} is a file, not a folder); "
                                 "choose another output.path")
            probe = os.path.join(parent, f".write-probe-{os.getpid()}-{os.urandom(4).hex()}")
            try:
                os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except OSError as e:
                raise InputError(f"output.path: cannot write to {output.path} ({parent} is not a writable folder: "
                                 f"{e.strerror or e}); choose another output.path or make it writable") from None
            os.remove(probe)
            return
        probe = f".write-probe-{os.getpid()}"
        output.write_bytes(probe, b"")
        output.remove([probe])
    except StorageFailed as e:
        raise InputError(f"output.path: {e}") from None
    except OSError as e:
        raise InputError(f"output.path: cannot write to {output.path} ({e})") from None
