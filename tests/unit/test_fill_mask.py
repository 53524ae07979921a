"""The fill-mask head against transformers' fill-mask pipeline, run in-process through LocalRunner on
tiny seeded masked-LM checkpoints (WordPiece BERT and byte-level BPE RoBERTa): token ids, token_str and
sequence exactly, scores to 1e-4, for top_k, targets, one and several masks, truncation."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pytest
import torch
import transformers
from transformers import pipeline as hf_pipeline

from pipeline import columns as C
from pipeline.heads.fill_mask import _MASK_ONLY_HEAD, FillMask
from pipeline.local import LocalRunner
from pipeline.models import ModelError
from pipeline.spec import SpecError, spec_from_dict
from tests.models import ARCHITECTURES, build_bert, build_roberta

ATOL = 1e-4

# {m} is the mask token.
TEXTS = [
    "Paris is the {m} of France.",
    "The quick brown {m} jumps over the lazy dog.",
    "{m} is a city.",
    "Café Müller in Zürich serves the best {m}!",
    "The {m} of the {m} was great.",
    "{m} {m} {m}",
]
TARGETS = {
    # in-vocabulary words, a duplicate, and words the vocabulary lacks (their first token is used)
    "bert": ["capital", "city", "dog", "city", "zzyzx", "Paris"],
    "roberta": ["Ġcapital", "Ġcity", "Ġdog", "capital", "Paris", "xyz"],
}


def runner(model_dir, head=None, **model):
    spec = {"input": {"path": "unused"}, "model": {"path": str(model_dir), "head": "fill-mask", **model},
            "head": head or {}, "output": {"path": "unused"}}
    return LocalRunner(spec_from_dict(spec))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """arch -> (model dir, mask token, pipeline)."""
    out = {}
    for arch, build, seed in (("bert", build_bert, 0), ("roberta", build_roberta, 1)):
        d = build(tmp_path_factory.mktemp(f"{arch}-mlm"), "masked-lm", seed=seed)
        pipe = hf_pipeline("fill-mask", model=str(d), tokenizer=str(d))
        out[arch] = (d, pipe.tokenizer.mask_token, pipe)
    return out


def reference(pipe, text, **kwargs):
    """Per mask, the pipeline's candidates: [(token, token_str, score, sequence), ...]."""
    out = pipe(text, **kwargs)
    per_mask = out if isinstance(out[0], list) else [out]
    return [[(p["token"], p["token_str"], p["score"], p["sequence"]) for p in preds] for preds in per_mask]


def assert_matches(ours_row, ref, text, mask):
    masks = ours_row["masks"]
    assert len(masks) == len(ref)
    for m, preds in zip(masks, ref):
        assert text[m["start"] : m["end"]] == mask
        got = [(p["token_id"], p["token_str"], p["sequence"]) for p in m["predictions"]]
        assert got == [(p[0], p[1], p[3]) for p in preds]
        np.testing.assert_allclose([p["score"] for p in m["predictions"]], [p[2] for p in preds], atol=1e-7, rtol=ATOL)
    starts = [m["start"] for m in masks]
    assert starts == sorted(starts)  # text order


def run_ok(r, rows):
    results, errors = r.run(rows)
    assert errors.num_rows == 0, errors.to_pylist()
    return {row["id"]: row for row in results.to_pylist()}


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("top_k", [1, 5, 12])
def test_top_k_matches_pipeline(models, arch, top_k):
    model_dir, mask, pipe = models[arch]
    texts = [t.format(m=mask) for t in TEXTS]
    ours = run_ok(runner(model_dir, {"top_k": top_k}), [{"id": i, "text": t} for i, t in enumerate(texts)])
    for i, text in enumerate(texts):
        assert_matches(ours[i], reference(pipe, text, top_k=top_k), text, mask)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("top_k", [2, 10])  # 10 > the distinct targets: capped, as the pipeline does
def test_targets_match_pipeline(models, arch, top_k):
    model_dir, mask, pipe = models[arch]
    texts = [t.format(m=mask) for t in TEXTS]
    targets = TARGETS[arch]
    r = runner(model_dir, {"top_k": top_k, "targets": targets})
    ours = run_ok(r, [{"id": i, "text": t} for i, t in enumerate(texts)])
    logging.getLogger("transformers").setLevel(logging.ERROR)  # the pipeline warns about unknown targets
    for i, text in enumerate(texts):
        ref = reference(pipe, text, top_k=top_k, targets=targets)
        assert_matches(ours[i], ref, text, mask)
    assert len(ours[0]["masks"][0]["predictions"]) == min(top_k, len(r.predict.head.targets))


def test_default_top_k_is_five(models):
    model_dir, mask, pipe = models["bert"]
    text = TEXTS[0].format(m=mask)
    ours = run_ok(runner(model_dir), [{"id": 0, "text": text}])
    assert_matches(ours[0], reference(pipe, text), text, mask)
    assert len(ours[0]["masks"][0]["predictions"]) == 5


def test_predictions_vary(models):
    """The tiny models are not constants: different contexts, different best tokens."""
    for arch in ("bert", "roberta"):
        model_dir, mask, _ = models[arch]
        ours = run_ok(runner(model_dir, {"top_k": 1}), [{"id": i, "text": t.format(m=mask)} for i, t in enumerate(TEXTS)])
        best = {m["predictions"][0]["token_id"] for row in ours.values() for m in row["masks"]}
        assert len(best) > 2


def test_output_schema(models):
    model_dir, mask, _ = models["bert"]
    results, _ = runner(model_dir, {"top_k": 2}).run([{"id": "a", "text": f"a {mask} b"}])
    prediction = pa.struct([("token_id", pa.int32()), ("token_str", pa.string()), ("score", pa.float32()),
                            ("sequence", pa.string())])
    expected = pa.schema([("id", pa.string()), ("masks", pa.list_(pa.struct(
        [("start", pa.int32()), ("end", pa.int32()), ("predictions", pa.list_(prediction))])))])
    assert results.schema == expected


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_rows_without_a_mask_are_errors(models, arch):
    model_dir, mask, _ = models[arch]
    results, errors = runner(model_dir).run([{"id": 0, "text": "no mask here"}, {"id": 1, "text": f"one {mask}"}])
    assert results.column("id").to_pylist() == [1]
    assert errors.to_pylist() == [{"id": 0, "_error": f"text has no {mask} token (the mask token of this model)"}]


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_long_texts_truncate_to_the_first_window(models, arch):
    model_dir, mask, pipe = models[arch]
    filler = "and the weather in London is cold and rainy in winter " * 8
    inside = f"Paris is the {mask} of France {filler}"
    beyond = f"Paris is the capital of France {filler} {mask} end"
    both = f"Paris is the {mask} of France {filler} {mask} end"
    r = runner(model_dir, {"top_k": 3}, max_length=32, stride=8)
    results, errors = r.run([{"id": 0, "text": inside}, {"id": 1, "text": beyond}, {"id": 2, "text": both}])
    ours = {row["id"]: row for row in results.to_pylist()}
    assert list(ours) == [0]
    ref = reference(pipe, inside, top_k=3, tokenizer_kwargs={"truncation": True, "max_length": 32})
    assert_matches(ours[0], ref, inside, mask)
    reasons = dict(zip(errors.column("id").to_pylist(), errors.column("_error").to_pylist()))
    assert reasons[1] == (f"1 of the text's 1 {mask} tokens lie beyond the first 32 tokens (model.max_length); "
                          "fill-mask reads only the first window")
    assert reasons[2].startswith(f"1 of the text's 2 {mask} tokens lie beyond")
    encoded = r.tokenize(r.prepare([{"id": 0, "text": inside}]))
    assert encoded.column(C.TRUNCATED).to_pylist() == [True]


def test_forward_returns_top_k_per_mask_not_the_vocabulary(models):
    model_dir, mask, _ = models["bert"]
    r = runner(model_dir, {"top_k": 3})
    texts = [TEXTS[0], TEXTS[4], TEXTS[5]]
    out = r.predict(r.tokenize(r.prepare([{"id": i, "text": t.format(m=mask)} for i, t in enumerate(texts)])))
    for name in ("token_ids", "scores"):
        per_doc = out.column(C.out(name)).to_pylist()
        assert [[len(w) for w in doc] for doc in per_doc] == [[3], [6], [9]]  # masks x top_k
    assert out.schema.field(C.out("token_ids")).type == pa.list_(pa.list_(pa.int32()))
    assert r.predict.head.mask_only_head  # the LM head ran on the mask positions only, no fallback


def test_unknown_targets_warn_once_and_empty_targets_are_refused(models, caplog):
    model_dir, mask, _ = models["bert"]
    with caplog.at_level(logging.WARNING, logger="pipeline.heads.fill_mask"):
        r = runner(model_dir, {"targets": ["zzyzx", "capital"]})
    assert any("'zzyzx' is not in the model vocabulary" in m for m in caplog.messages)
    ours = run_ok(r, [{"id": 0, "text": f"the {mask}"}, {"id": 1, "text": f"a {mask}"}])
    assert len(ours[0]["masks"][0]["predictions"]) == 2
    with pytest.raises(SpecError, match="head.targets"):
        runner(model_dir, {"targets": []})


# ---- the LM head on the mask positions only --------------------------------------------------------

_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=99,
             max_position_embeddings=64)
_CONFIGS = {
    "bert": _TINY,
    "roberta": dict(_TINY, pad_token_id=1),
    "xlm-roberta": dict(_TINY, pad_token_id=1),
    "camembert": dict(_TINY, pad_token_id=1),
    "distilbert": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=37, vocab_size=99, max_position_embeddings=64),
    "mobilebert": dict(_TINY, embedding_size=16, true_hidden_size=16, intra_bottleneck_size=16,
                       num_feedforward_networks=1),
    "electra": dict(_TINY, embedding_size=16),
    "albert": dict(_TINY, embedding_size=16),
    "deberta": _TINY,
    "deberta-v2": _TINY,
    "mpnet": dict(_TINY, pad_token_id=1),
}


def test_every_mask_only_architecture_is_checked():
    assert set(_CONFIGS) == set(_MASK_ONLY_HEAD)


@pytest.mark.parametrize("model_type", sorted(_CONFIGS))
def test_mask_only_head_equals_full_head(model_type):
    config = transformers.AutoConfig.for_model(model_type, **_CONFIGS[model_type])
    torch.manual_seed(0)
    model = transformers.AutoModelForMaskedLM.from_config(config).eval()
    mask_id = 5
    ids = torch.randint(6, 99, (3, 12))
    ids[0, [1, 4]] = mask_id
    ids[1, 7] = mask_id
    ids[2, [2, 3, 9]] = mask_id
    attention = torch.ones_like(ids)
    attention[1, 9:] = 0
    inputs = {"input_ids": ids, "attention_mask": attention}
    is_mask = ids == mask_id

    class Stub:  # the attributes mask_logits reads
        mask_only_head = True
        run_model = staticmethod(lambda model, inputs: model(**inputs))

    with torch.no_grad():
        fast = FillMask.mask_logits(Stub, model, inputs, is_mask)
        assert Stub.mask_only_head, "the fast path fell back"
        full = model(**inputs).logits[is_mask]
    assert fast.shape == (6, config.vocab_size)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)


# ---- refusing a checkpoint without the MLM head ------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_masked_lm_checkpoint_loads_and_bare_encoder_is_refused(tmp_path, arch):
    build = ARCHITECTURES[arch]
    good = build(tmp_path / "mlm", "masked-lm")
    mask = transformers.AutoTokenizer.from_pretrained(good).mask_token
    results, errors = runner(good, {"top_k": 2}).run([{"id": 0, "text": f"the {mask} is"}])
    assert results.num_rows == 1 and errors.num_rows == 0
    bare = build(tmp_path / "bare", "base")
    with pytest.raises(ModelError, match="no trained weights for the fill-mask head"):
        runner(bare)
    runner(bare, allow_random_head=True)  # asked for: runs with a random LM head


def test_tied_decoder_is_not_a_head_parameter(models):
    model_dir, _, _ = models["bert"]
    r = runner(model_dir)
    prefixes = r.predict.head.head_parameter_prefixes()
    assert "cls.predictions.transform.dense.weight" in prefixes and "cls.predictions.bias" in prefixes
    assert "bert.embeddings.word_embeddings.weight" in prefixes
    # tied to the input embeddings / to cls.predictions.bias: may be reported missing while present
    assert "cls.predictions.decoder.weight" not in prefixes and "cls.predictions.decoder.bias" not in prefixes
