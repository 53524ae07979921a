"""Every head on every encoder family: tiny BERT, MobileBERT, DistilBERT (no token_type_ids), RoBERTa
(byte-level BPE, offsets after leading spaces), XLM-R and DeBERTa-v2 (SentencePiece Unigram, stand-alone
"▁" pieces) and ELECTRA checkpoints from `tests.models`, each run through LocalRunner and compared with
the corresponding transformers pipeline (or, for embeddings, mean pooling computed by hand). Question
answering is covered elsewhere."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer
from transformers import pipeline as hf_pipeline

from pipeline.local import LocalRunner
from pipeline.spec import spec_from_dict
from tests.models import ARCHITECTURES

ARCHS = sorted(ARCHITECTURES)
ATOL = 1e-4

TEXTS = [
    "John Smith works at Acme Corporation in New York, doesn't he?",
    "Mary met the engineers of Globex in Berlin on Monday.",
    "Café Müller in Zürich: naïve résumé, São Paulo!",
    "  leading spaces and   inner gaps  ",
]
MASKED = ["Paris is the {m} of France.", "The {m} of the {m} was great.", "{m} met the engineers in Berlin."]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """checkpoint(arch, head) -> model dir, built once per module."""
    cache = {}

    def get(arch, head):
        if (arch, head) not in cache:
            cache[arch, head] = ARCHITECTURES[arch](tmp_path_factory.mktemp(f"{arch}-{head}"), head, seed=7)
        return cache[arch, head]

    return get


def runner(model_dir, head, options=None, **output):
    return LocalRunner(spec_from_dict({"input": {"path": "unused"}, "model": {"path": str(model_dir), "head": head},
                                       "head": options or {}, "output": {"path": "unused", **output}}))


def run_ok(r, texts):
    results, errors = r.run([{"id": i, "text": t} for i, t in enumerate(texts)])
    assert errors.num_rows == 0, errors.to_pylist()
    rows = results.to_pylist()
    assert [row["id"] for row in rows] == list(range(len(texts)))
    return rows


@pytest.fixture(autouse=True)
def quiet_transformers():
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # token-classification: "fallback heuristic"
        yield
    logger.setLevel(level)


@pytest.mark.parametrize("arch", ARCHS)
def test_token_classification(checkpoint, arch):
    model_dir = checkpoint(arch, "token-classification")
    pipe = hf_pipeline("token-classification", model=str(model_dir), tokenizer=str(model_dir))
    n_entities = 0
    for strategy in ("simple", "first"):
        ours = run_ok(runner(model_dir, "token-classification", {"aggregation_strategy": strategy}), TEXTS)
        for text, row in zip(TEXTS, ours):
            ref = pipe(text, aggregation_strategy=strategy)
            assert [(e["entity_group"], e["start"], e["end"]) for e in row["entities"]] == [
                (e["entity_group"], e["start"], e["end"]) for e in ref]
            np.testing.assert_allclose([e["score"] for e in row["entities"]], [e["score"] for e in ref], atol=ATOL,
                                       rtol=0)
            for e in row["entities"]:
                assert e["word"] == text[e["start"] : e["end"]]
            n_entities += len(ref)
    assert n_entities > 4  # the comparison is not vacuous


@pytest.mark.parametrize("arch", ARCHS)
def test_sequence_classification(checkpoint, arch):
    model_dir = checkpoint(arch, "sequence-classification")
    pipe = hf_pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir))
    ours = run_ok(runner(model_dir, "sequence-classification", {"top_k": None}), TEXTS)
    for text, row in zip(TEXTS, ours):
        ref = pipe(text, top_k=None)
        assert row["label"] == ref[0]["label"]
        assert [s["label"] for s in row["scores"]] == [r["label"] for r in ref]
        np.testing.assert_allclose([s["score"] for s in row["scores"]], [r["score"] for r in ref], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_fill_mask(checkpoint, arch):
    model_dir = checkpoint(arch, "masked-lm")
    pipe = hf_pipeline("fill-mask", model=str(model_dir), tokenizer=str(model_dir))
    mask = pipe.tokenizer.mask_token
    texts = [t.format(m=mask) for t in MASKED]
    ours = run_ok(runner(model_dir, "fill-mask", {"top_k": 3}), texts)
    for text, row in zip(texts, ours):
        ref = pipe(text, top_k=3)
        ref = ref if isinstance(ref[0], list) else [ref]
        assert len(row["masks"]) == len(ref) == text.count(mask)
        for m, preds in zip(row["masks"], ref):
            assert text[m["start"] : m["end"]] == mask
            assert [(p["token_id"], p["token_str"], p["sequence"]) for p in m["predictions"]] == [
                (p["token"], p["token_str"], p["sequence"]) for p in preds]
            np.testing.assert_allclose([p["score"] for p in m["predictions"]], [p["score"] for p in preds],
                                       atol=1e-7, rtol=ATOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_mean_pooled_embeddings(checkpoint, arch):
    model_dir = checkpoint(arch, "base")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    ours = run_ok(runner(model_dir, "embedding", {"pooling": "mean"}), TEXTS)
    for text, row in zip(TEXTS, ours):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0]
        mask = enc["attention_mask"][0].unsqueeze(-1).float()
        expected = ((hidden * mask).sum(0) / mask.sum()).numpy()
        np.testing.assert_allclose(np.asarray(row["embedding"]), expected, atol=ATOL, rtol=0)
    if arch == "distilbert":  # the tokenizer gives the model no token_type_ids
        assert "token_type_ids" not in tok("x")


@pytest.mark.parametrize("arch", ARCHS)
def test_token_rows_cover_every_token_once(checkpoint, arch):
    """`output.granularity: token`: one row per non-special token, labels and scores equal to the
    pipeline's per-token output (aggregation "none", nothing ignored), every row showing its surface."""
    model_dir = checkpoint(arch, "token-classification")
    pipe = hf_pipeline("token-classification", model=str(model_dir), tokenizer=str(model_dir))
    tok = pipe.tokenizer
    r = runner(model_dir, "token-classification", {"aggregation_strategy": "none"}, granularity="token")
    rows = r.run([{"id": i, "text": t} for i, t in enumerate(TEXTS)])[0].to_pylist()
    for i, text in enumerate(TEXTS):
        mine = [row for row in rows if row["id"] == i]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert [row["token_index"] for row in mine] == list(range(len(ids)))
        assert [row["token"] for row in mine] == tok.convert_ids_to_tokens(ids)
        ref = pipe(text, aggregation_strategy="none", ignore_labels=[])
        assert [(e["index"] - 1, e["entity"]) for e in ref] == [(row["token_index"], row["label"]) for row in mine]
        np.testing.assert_allclose([row["score"] for row in mine], [e["score"] for e in ref], atol=ATOL, rtol=0)
        starts = [row["start"] for row in mine]
        assert starts == sorted(starts)
        for row in mine:
            assert 0 <= row["start"] < row["end"] <= len(text), row
