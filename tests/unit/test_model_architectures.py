"""A checkpoint whose config.json lists no `architectures` cannot show that it holds the head's weights:
a sequence classifier's `classifier` loads into a token classifier without a missing key, so it would
run as NER and label entities `neg`/`pos`. It is refused (exit 2, one sentence naming the fix) unless
`model.allow_random_head`, which then says in one warning line that the predictions are random.

In-process through `pipeline.models.check_model` (as the driver checks before any work), and through the
real CLI (`python -m pipeline validate`, a subprocess; no Ray starts)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.models import ModelError, check_model
from pipeline.spec import spec_from_dict
from pipeline.stages import load_head
from tests.models import build_bert

REPO_ROOT = Path(__file__).resolve().parents[2]


def _strip_architectures(model_dir: Path) -> Path:
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("architectures")
    config_path.write_text(json.dumps(config, indent=2))
    return model_dir


@pytest.fixture(scope="module")
def seq_cls_dir(tmp_path_factory) -> Path:
    """A tiny sentiment classifier (neg/pos), saved with save_pretrained (architectures listed)."""
    return build_bert(tmp_path_factory.mktemp("sc"), head="sequence-classification", labels=["neg", "pos"])


@pytest.fixture(scope="module")
def bare_seq_cls_dir(tmp_path_factory) -> Path:
    """The same kind of checkpoint with "architectures" deleted from its config.json."""
    out = build_bert(tmp_path_factory.mktemp("sc-bare"), head="sequence-classification", labels=["neg", "pos"])
    return _strip_architectures(out)


def _spec(model_dir, head: str, **model) -> object:
    return spec_from_dict({
        "input": {"path": "memory.jsonl"},
        "model": {"path": str(model_dir), "head": head, **model},
        "output": {"path": "unused"},
    })


def _check(model_dir, head: str, **model) -> None:
    spec = _spec(model_dir, head, **model)
    loaded = load_head(spec)
    check_model(str(model_dir), loaded, spec.model)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pipeline.models" and r.levelno >= logging.WARNING]


# -- in-process ------------------------------------------------------------------------------------


def test_sequence_classifier_without_architectures_is_refused_as_ner(bare_seq_cls_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.models"), pytest.raises(ModelError) as e:
        _check(bare_seq_cls_dir, "token-classification")
    message = str(e.value)
    assert message.startswith(f"model.path: {bare_seq_cls_dir}/config.json lists no \"architectures\"")
    assert '"architectures": ["BertForTokenClassification"]' in message
    assert "model.allow_random_head: true" in message
    assert "\n" not in message
    assert _warnings(caplog) == []


def test_the_right_head_without_architectures_is_refused_too(bare_seq_cls_dir):
    # Nothing in the files tells a sentiment classifier from an NER model with two labels.
    with pytest.raises(ModelError, match=r'add "architectures": \["BertForSequenceClassification"\] to its config'):
        _check(bare_seq_cls_dir, "sequence-classification")


def test_empty_architectures_is_no_architectures(tmp_path, seq_cls_dir):
    import shutil

    model_dir = shutil.copytree(seq_cls_dir, tmp_path / "model")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "architectures": []}))
    with pytest.raises(ModelError, match="lists no \"architectures\""):
        _check(model_dir, "sequence-classification")


def test_adding_architectures_is_the_fix(seq_cls_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.models"):
        _check(seq_cls_dir, "sequence-classification")
    assert _warnings(caplog) == []


def test_embedding_needs_no_architectures(bare_seq_cls_dir, caplog):
    # The embedding head pools the encoder's outputs: no head weights to prove.
    with caplog.at_level(logging.WARNING, logger="pipeline.models"):
        _check(bare_seq_cls_dir, "embedding")
    assert _warnings(caplog) == []


def test_allow_random_head_runs_it_with_one_warning(bare_seq_cls_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.models"):
        _check(bare_seq_cls_dir, "token-classification", allow_random_head=True)
    [warning] = _warnings(caplog)
    assert warning.startswith("warning: model.path: its config.json names no architectures")
    assert "predictions are random" in warning and "model.allow_random_head is true" in warning


def test_allow_random_head_warns_once_for_missing_weights(minilm_dir, caplog):
    # A bare encoder (architectures ["BertModel"]) has no classifier: random, said once.
    with caplog.at_level(logging.WARNING, logger="pipeline.models"):
        _check(minilm_dir, "token-classification", allow_random_head=True)
    [warning] = _warnings(caplog)
    assert "missing classifier." in warning and "predictions are random" in warning


def test_allow_random_head_warns_once_for_another_heads_checkpoint(seq_cls_dir, caplog):
    # load_head's check_architecture says it; check_model adds no second line.
    with caplog.at_level(logging.WARNING, logger="pipeline.models"):
        _check(seq_cls_dir, "token-classification", allow_random_head=True)
    [warning] = _warnings(caplog)
    assert "trained as BertForSequenceClassification" in warning and "random" in warning


def test_allow_random_head_on_a_sound_checkpoint_says_nothing(seq_cls_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.models"):
        _check(seq_cls_dir, "sequence-classification", allow_random_head=True)
    assert _warnings(caplog) == []


# -- the real CLI ------------------------------------------------------------------------------------


def _validate(tmp_path: Path, model_dir: Path, head: str, *extra: str) -> subprocess.CompletedProcess:
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": i, "text": f"Alice met Bob in Paris, day {i}."}) + "\n"
                            for i in range(3)))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "input": {"path": str(docs)},
        "model": {"path": str(model_dir), "head": head, "max_length": 32},
        "output": {"path": str(tmp_path / "out")},
    }))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "pipeline", "validate", str(spec), *extra], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_cli_refuses_it_with_exit_2_and_one_line(tmp_path, bare_seq_cls_dir):
    proc = _validate(tmp_path, bare_seq_cls_dir, "token-classification")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: model.path: ") and '"architectures": ["BertForTokenClassification"]' in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_allow_random_head_prints_one_warning_line(tmp_path, bare_seq_cls_dir):
    proc = _validate(tmp_path, bare_seq_cls_dir, "token-classification", "--set", "model.allow_random_head=true")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: token-classification on ")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("warning: model.path: ") and "predictions are random" in lines[0]
