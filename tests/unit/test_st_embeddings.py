"""sentence-transformers checkpoints bring their own defaults: with no head settings, the embedding
head pools, normalises and cuts windows as the checkpoint says, so its vectors equal
`SentenceTransformer(path).encode(texts)` — on the shipped all-MiniLM-L6-v2 (mean, Normalize,
max_seq_length 256 in sentence_bert_config.json, legacy `pooling_mode_*` flags) and on a tiny BERT
saved here by sentence-transformers 6 itself (`pooling_mode: cls`, no Normalize, max_seq_length 24,
which version 6 keeps as the tokenizer's model_max_length)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

from pipeline.heads.embedding import sentence_transformers_defaults
from pipeline.local import LocalRunner
from pipeline.models import ModelError
from pipeline.spec import spec_from_dict
from tests.models import MINILM_DIR, build_bert

LONG = " ".join(["The committee met in Geneva to discuss the treaty and its long annexes."] * 40)  # ~600 tokens
TEXTS = ["Hello world", "A longer sentence about the Bank of England in London.", "naïve café ☃ 北京 😀", LONG]


def _runner(model_dir, head=None, **model):
    return LocalRunner(spec_from_dict({"input": {"path": "unused"}, "model": {"path": str(model_dir), "head": "embedding",
                                                                              **model},
                                       "head": head or {}, "output": {"path": "unused"}}))


def _ours(runner, texts=TEXTS):
    results, errors = runner.run([{"id": i, "text": t} for i, t in enumerate(texts)])
    assert errors.num_rows == 0 and results.column("id").to_pylist() == list(range(len(texts)))
    return np.array(results.column("embedding").to_pylist(), dtype=np.float32)


@pytest.fixture(scope="module")
def tiny_cls_dir(tmp_path_factory):
    """A tiny random BERT wrapped and saved by sentence-transformers: Transformer (max_seq_length 24)
    and Pooling(cls), no Normalize."""
    base = build_bert(tmp_path_factory.mktemp("tiny-bert"), head="base", seed=3)
    out = tmp_path_factory.mktemp("tiny-st-cls")
    encoder = Transformer(str(base), max_seq_length=24)
    SentenceTransformer(modules=[encoder, Pooling(encoder.get_embedding_dimension(), pooling_mode="cls")]).save(str(out))
    return out


def test_minilm_defaults_equal_sentence_transformers():
    st = SentenceTransformer(str(MINILM_DIR), device="cpu")
    assert st.max_seq_length == 256
    runner = _runner(MINILM_DIR)
    head = runner.postprocess.head
    assert (head.pooling, head.normalize, head.max_length) == ("mean", True, 256)
    ours = _ours(runner)
    expected = st.encode(TEXTS, convert_to_numpy=True)
    diff = float(np.abs(ours - expected).max())
    print(f"all-MiniLM-L6-v2 vs SentenceTransformer.encode: max abs diff {diff:.2e}")
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # The long text is cut at 256 tokens, as sentence-transformers cuts it, not at 512.
    assert len(head.tokenizer(LONG)["input_ids"]) > 512
    assert not np.allclose(ours[3], _ours(_runner(MINILM_DIR, max_length=512), [LONG])[0], atol=1e-3)


def test_tiny_cls_checkpoint_equals_sentence_transformers(tiny_cls_dir):
    defaults = sentence_transformers_defaults(str(tiny_cls_dir))
    # max_seq_length is the tokenizer's model_max_length here, which caps every window anyway.
    assert (defaults.pooling, defaults.normalize, defaults.max_seq_length, defaults.unsupported) == ("cls", False, None,
                                                                                                   None)
    st = SentenceTransformer(str(tiny_cls_dir), device="cpu")
    runner = _runner(tiny_cls_dir)
    ours = _ours(runner)
    expected = st.encode(TEXTS, convert_to_numpy=True)
    diff = float(np.abs(ours - expected).max())
    print(f"tiny BERT, Pooling(cls), max_seq_length 24: max abs diff {diff:.2e}")
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert not np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-3)  # no Normalize module: raw vectors
    assert runner.postprocess.head.max_length == 24


def test_spec_settings_win_over_the_checkpoint(tiny_cls_dir):
    """head.pooling / head.normalize / model.max_length, when set, replace the checkpoint's."""
    st = SentenceTransformer(str(tiny_cls_dir), device="cpu")
    st.max_seq_length = 16
    tokens = st.encode(TEXTS, output_value="token_embeddings")
    mean = np.stack([t.numpy().mean(0) for t in tokens])  # unpadded per text: every token is real
    ours = _ours(_runner(tiny_cls_dir, {"pooling": "mean", "normalize": True}, max_length=16))
    np.testing.assert_allclose(ours, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
    head = _runner(tiny_cls_dir, max_length=16).postprocess.head
    assert (head.pooling, head.normalize, head.max_length) == ("cls", False, 16)
    minilm = _runner(MINILM_DIR, {"normalize": False}, max_length=128).postprocess.head
    assert (minilm.pooling, minilm.normalize, minilm.max_length) == ("mean", False, 128)


def test_without_sentence_transformers_files_mean_and_no_normalisation(tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    base = build_bert(tmp_path / "plain", head="base", seed=5)
    assert sentence_transformers_defaults(str(base)).pooling is None
    ours = _ours(_runner(base), TEXTS[:3])
    tok, model = AutoTokenizer.from_pretrained(base), AutoModel.from_pretrained(base).eval()
    with torch.no_grad():
        enc = tok(TEXTS[:3], padding=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    np.testing.assert_allclose(ours, ((hidden * mask).sum(1) / mask.sum(1)).numpy(), atol=1e-5)


@pytest.mark.parametrize("mode", ["max", "weightedmean", ["cls", "mean"]])
def test_a_pooling_we_do_not_compute_is_refused_unless_the_spec_sets_one(tiny_cls_dir, tmp_path, mode):
    import shutil

    model_dir = tmp_path / "st"
    shutil.copytree(tiny_cls_dir, model_dir)
    config = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps({**config, "pooling_mode": mode}))
    with pytest.raises(ModelError, match=r"head\.pooling: .*sentence-transformers.*pooling is"):
        _runner(model_dir)
    assert _ours(_runner(model_dir, {"pooling": "cls"}), TEXTS[:1]).shape == (1, 32)
