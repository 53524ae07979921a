"""Golden outputs of transformers 4.57's `QuestionAnsweringPipeline` (transformers 5 removed it) for
the question-answering head's parity test (tests/unit/test_question_answering.py).

Run it with a transformers 4.57 venv, NOT the project's:

    python3 -m venv /tmp/tf457 && /tmp/tf457/bin/pip install torch==2.13.0 'transformers==4.57.*'
    /tmp/tf457/bin/python tests/golden/make_qa_golden.py tests/golden/models

It builds tiny seeded question-answering models with reproducible tokenizers (a WordPiece vocabulary
written from a fixed word list; a byte-level BPE trained on fixed text) -- BERT (and the same with a
left-padding tokenizer), RoBERTa, DistilBERT (no token type ids), MobileBERT (trigram embeddings,
bottlenecks, NoNorm), ELECTRA, and XLM-R and DeBERTa-v2 over a SentencePiece Unigram vocabulary
counted from the same text (stand-alone "▁" pieces, unknown characters) -- saves them with
`save_pretrained` under the directory given (committed: the project's transformers 5 loads the very
same files), runs `pipeline("question-answering")` on fixed (question, context) pairs under several
option sets and writes `qa_golden.json` next to this script: inputs, options, a fingerprint of the
pipeline's windows (input ids, offsets, word and sequence ids) and its answers, or its error.

Everything is seeded and the tokenizers are built from fixed text: rerunning it rewrites identical
files on the same machine (checked with tokenizers 0.22.2, torch 2.13.0, numpy 2.4.6); another CPU's
kernels can move the weights and scores in the last bits (~1e-8), which the test's tolerance absorbs.
Takes under a minute.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import ByteLevelBPETokenizer, Regex, Tokenizer, decoders, models
from tokenizers import normalizers, pre_tokenizers, processors
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForQuestionAnswering,
    BertTokenizerFast,
    DebertaV2Config,
    DebertaV2ForQuestionAnswering,
    DebertaV2TokenizerFast,
    ElectraConfig,
    ElectraForQuestionAnswering,
    ElectraTokenizerFast,
    DistilBertConfig,
    DistilBertForQuestionAnswering,
    DistilBertTokenizerFast,
    MobileBertConfig,
    MobileBertForQuestionAnswering,
    MobileBertTokenizerFast,
    RobertaConfig,
    RobertaForQuestionAnswering,
    RobertaTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaForQuestionAnswering,
    XLMRobertaTokenizerFast,
    pipeline,
)
from unigram import unigram_vocab  # beside this script

HERE = Path(__file__).resolve().parent
MAX_POSITIONS = 64  # tokens per window the models hold; max_seq_len stays within it

LONG = (
    "The river Elbe rises in the Krkonoše mountains and flows north-west for about 1,094 kilometres. "
    "It passes Dresden, Magdeburg and Hamburg before it reaches the North Sea at Cuxhaven. "
    "In 1842 a great fire destroyed a third of Hamburg's old town; the city was rebuilt within ten years. "
    "Ships from Hamburg sailed to New York, Buenos Aires and Shanghai, carrying coffee, cotton and copper. "
    "Today the port handles about nine million containers a year, and the river is dredged to keep it deep. "
    "The oldest bridge over the Elbe in Dresden is the Augustus Bridge, first built in stone around 1300."
)

CONTEXTS = [
    "The Eiffel Tower is located in Paris, France. It was completed in 1889 and is 330 metres tall.",
    "Zoë moved to Zürich in 2011;  she works at the Café Müller —  a small,   quiet place near the lake.",
    LONG,
    "Paris is big. paris is old. PARIS is loved by everyone who visits Paris in the spring.",
    "Yes.",
    "The symbol 東京 means Tokyo ☃ in kanji, said Amélie  (an expert).",
    "Q&A: (a) first-rate, (b) well-known; e.g., the U.S.A.!!! -- done... right?",
    "   Leading and trailing   spaces   matter here, don't they?   ",
]

QUESTIONS = [
    "Where is the Eiffel Tower?",
    "When was it completed?",
    "Where does Zoë work?",
    "Which river flows to the North Sea?",
    "What did the fire destroy in 1842?",
    "Which bridge is the oldest in Dresden?",
    "Who loves Paris?",
    "Is it?",
    "What does 東京 mean?",
    "What is well-known?",
    "What matters here?",
    # Longer than max_question_len tokens: the pipeline does not truncate questions with a fast tokenizer.
    "Could you please tell me, after reading the whole text very carefully and thinking about it twice, "
    "which city was rebuilt within ten years after the fire?",
]

# (question, context) pairs: every question with its own context, plus cross pairs for variety.
PAIRS = [
    (QUESTIONS[0], CONTEXTS[0]),
    (QUESTIONS[1], CONTEXTS[0]),
    (QUESTIONS[2], CONTEXTS[1]),
    (QUESTIONS[3], LONG),
    (QUESTIONS[4], LONG),
    (QUESTIONS[5], LONG),
    (QUESTIONS[11], LONG),
    (QUESTIONS[6], CONTEXTS[3]),
    (QUESTIONS[7], CONTEXTS[4]),
    (QUESTIONS[8], CONTEXTS[5]),
    (QUESTIONS[9], CONTEXTS[6]),
    (QUESTIONS[10], CONTEXTS[7]),
    (QUESTIONS[0], CONTEXTS[3]),
    (QUESTIONS[2], LONG),
    (QUESTIONS[7], CONTEXTS[1]),
]

# Option sets (the pipeline's keyword names). max_question_len is passed for the spec's sake; the
# pipeline ignores it with a fast tokenizer.
OPTION_SETS = [
    dict(max_seq_len=48, doc_stride=16, max_answer_len=15, top_k=1, handle_impossible_answer=False, max_question_len=8),
    dict(max_seq_len=48, doc_stride=16, max_answer_len=15, top_k=3, handle_impossible_answer=False, max_question_len=8),
    dict(max_seq_len=48, doc_stride=16, max_answer_len=15, top_k=1, handle_impossible_answer=True, max_question_len=8),
    dict(max_seq_len=40, doc_stride=8, max_answer_len=4, top_k=3, handle_impossible_answer=True, max_question_len=8),
    dict(max_seq_len=32, doc_stride=4, max_answer_len=3, top_k=3, handle_impossible_answer=False, max_question_len=8),
    dict(max_seq_len=32, doc_stride=0, max_answer_len=1, top_k=1, handle_impossible_answer=False, max_question_len=8),
    dict(max_seq_len=64, doc_stride=24, max_answer_len=30, top_k=5, handle_impossible_answer=True, max_question_len=16),
]


def _words(text: str, lowercase: bool) -> list[str]:
    norm = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None if lowercase else False)
    return [w for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(norm.normalize_str(text))]


def corpus() -> list[str]:
    return CONTEXTS + QUESTIONS


def build_wordpiece_vocab() -> list[str]:
    """Specials, every character (alone and as ##continuation), two words in three whole, the third
    split in two pieces (so answers can start or end inside a word and align_to_words matters), a few
    suffixes; a few characters left out on purpose become [UNK]."""
    counts = Counter(w for t in corpus() for w in _words(t, lowercase=True))
    skip = {"東", "☃"}
    chars = sorted({c for w in counts for c in w} - skip)
    words, pieces = [], []
    for i, w in enumerate(sorted(w for w in counts if len(w) > 1)):
        if i % 3 or len(w) < 5:
            words.append(w)
        else:
            pieces += [w[:3], "##" + w[3:]]
    suffixes = ["##s", "##ed", "##ing", "##er", "##es", "##ly"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for piece in chars + ["##" + c for c in chars] + words + pieces + suffixes:
        if piece not in vocab:
            vocab.append(piece)
    return vocab


def build_bert_tokenizer(tmp: Path, padding_side: str, cls=BertTokenizerFast):
    """A lowercasing WordPiece tokenizer over `build_wordpiece_vocab`; `cls` picks the family's class
    (DistilBERT's, MobileBERT's: the same tokenizer, their own model input names)."""
    vocab_file = tmp / "vocab.txt"
    vocab_file.write_text("\n".join(build_wordpiece_vocab()) + "\n", encoding="utf-8")
    return cls(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=MAX_POSITIONS,
               padding_side=padding_side)


def build_roberta_tokenizer(tmp: Path) -> RobertaTokenizerFast:
    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    text = corpus() * 3
    bpe.train_from_iterator(text, vocab_size=420, min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(tmp))
    return RobertaTokenizerFast(vocab_file=str(tmp / "vocab.json"), merges_file=str(tmp / "merges.txt"),
                                model_max_length=MAX_POSITIONS)


def build_unigram_tokenizer(specials: list[str], unk: str, single: str, pair: str, normalizer, pre_tokenizer) -> Tokenizer:
    """A SentencePiece-style tokenizer (Unigram over "▁"-marked words): a vocabulary counted from the
    corpus (`unigram.py`; two characters left out become unknown), `specials` first, the family's template post-processor, and the normaliser and
    pre-tokeniser that transformers 5 builds for the family (it rebuilds them from the tokenizer class
    and ignores those saved in tokenizer.json), so that both versions tokenize alike."""
    vocab = unigram_vocab(corpus(), specials, skip=frozenset({"東", "☃"}))
    tok = Tokenizer(models.Unigram(vocab, unk_id=specials.index(unk), byte_fallback=False))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    ids = {t: specials.index(t) for t in specials}
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, ids[t]) for t in set((single + " " + pair).split())
                                                  if t in ids])
    return tok


def build_xlm_roberta_tokenizer() -> XLMRobertaTokenizerFast:
    # transformers 5's XLMRobertaTokenizer: no normaliser, whitespace split, then Metaspace.
    tok = build_unigram_tokenizer(
        ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<unk>", "<s> $A </s>", "<s> $A </s> </s> $B </s>",
        normalizer=None,
        pre_tokenizer=pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                               pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]))
    return XLMRobertaTokenizerFast(tokenizer_object=tok, model_max_length=MAX_POSITIONS)


def build_deberta_v2_tokenizer() -> DebertaV2TokenizerFast:
    # transformers 5's DebertaV2Tokenizer: whitespace runs and \n\r\t become one space, NFC, trailing
    # spaces stripped; then Metaspace.
    tok = build_unigram_tokenizer(
        ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], "[UNK]", "[CLS] $A [SEP]", "[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1",
        normalizer=normalizers.Sequence([normalizers.Replace(Regex(r"\s{2,}|[\n\r\t]"), " "), normalizers.NFC(),
                                         normalizers.Strip(left=False, right=True)]),
        pre_tokenizer=pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"))
    return DebertaV2TokenizerFast(tokenizer_object=tok, model_max_length=MAX_POSITIONS, bos_token="[CLS]",
                                  eos_token="[SEP]", unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                  cls_token="[CLS]", mask_token="[MASK]")


def _shape_head(model, base, tokenizer, seed: int, null_bias: float, unit_states: bool = False) -> None:
    """A random head gives near-uniform probabilities and never prefers the null answer. Spread the
    logits (spans well separated, so batching noise cannot reorder them) and lean both start and end
    towards [CLS] by `null_bias` along the direction where its hidden state differs from the other
    tokens', so that the null answer wins for some inputs and loses for others. `unit_states` scales
    the head as if the hidden states had unit spread (MobileBERT's are not normalised: tiny when
    random, so its logits would hardly differ)."""
    gen = torch.Generator().manual_seed(seed)
    cls_states, other_states = [], []
    with torch.no_grad():
        for question, context in PAIRS:
            try:
                enc = tokenizer(question, context, truncation="only_second", max_length=48, return_tensors="pt")
            except Exception:  # noqa: BLE001 - the question too long for 48 tokens
                continue
            inputs = {k: v for k, v in enc.items() if k in tokenizer.model_input_names}
            hidden = base(**inputs).last_hidden_state[0]
            cls_states.append(hidden[0])
            other_states.append(hidden[1:].mean(0))
        direction = torch.stack(cls_states).mean(0) - torch.stack(other_states).mean(0)
        direction = direction / direction.norm()
        w = model.qa_outputs.weight
        w.copy_(torch.randn(w.shape, generator=gen) * 0.6 + null_bias * direction)
        if unit_states:
            states = torch.cat([torch.stack(cls_states), torch.stack(other_states)])
            w.div_(states.std())
        model.qa_outputs.bias.zero_()


SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


def _qa_model(model_cls, config_cls, tokenizer, seed: int, null_bias: float, **config):
    """A seeded tiny `model_cls` over `tokenizer`'s vocabulary, its head shaped by `_shape_head`."""
    torch.manual_seed(seed)
    model = model_cls(config_cls(vocab_size=len(tokenizer), **config)).eval()
    _shape_head(model, model.base_model, tokenizer, seed, null_bias=null_bias)
    return model


def _roberta_like(tokenizer) -> dict:
    """RoBERTa / XLM-R config fields: positions numbered from pad_token_id + 1, one token type."""
    return dict(SIZE, max_position_embeddings=MAX_POSITIONS + 2, type_vocab_size=1, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def build_bert_model(tokenizer, seed: int) -> BertForQuestionAnswering:
    return _qa_model(BertForQuestionAnswering, BertConfig, tokenizer, seed, 1.7, **SIZE,
                     max_position_embeddings=MAX_POSITIONS, type_vocab_size=2)


def build_roberta_model(tokenizer, seed: int) -> RobertaForQuestionAnswering:
    return _qa_model(RobertaForQuestionAnswering, RobertaConfig, tokenizer, seed, 1.2, **_roberta_like(tokenizer))


def build_distilbert_model(tokenizer, seed: int) -> DistilBertForQuestionAnswering:
    return _qa_model(DistilBertForQuestionAnswering, DistilBertConfig, tokenizer, seed, 1.4, dim=32, n_layers=2,
                     n_heads=2, hidden_dim=37, max_position_embeddings=MAX_POSITIONS,
                     pad_token_id=tokenizer.pad_token_id)


def build_mobilebert_model(tokenizer, seed: int) -> MobileBertForQuestionAnswering:
    torch.manual_seed(seed)
    config = MobileBertConfig(vocab_size=len(tokenizer), hidden_size=32, embedding_size=16, intermediate_size=32,
                              true_hidden_size=16, intra_bottleneck_size=16, num_hidden_layers=2,
                              num_attention_heads=2, num_feedforward_networks=1,
                              max_position_embeddings=MAX_POSITIONS, type_vocab_size=2,
                              pad_token_id=tokenizer.pad_token_id, initializer_range=0.2)
    model = MobileBertForQuestionAnswering(config).eval()
    # Initialisation zeroes the [PAD] embedding; a trained checkpoint's is not zero (it is never an
    # input in pretraining, so it keeps its random start). Give it one: the trigram embedding reads
    # each token's right neighbour, which for the last token of a right-padded window is [PAD] where
    # the unpadded window has zeros. The wide initializer_range (no LayerNorm: NoNorm) makes the
    # layers mix tokens enough that such a change reaches the context tokens' logits, as it does in
    # a trained model; with the default 0.02 it would stay below 1e-5.
    with torch.no_grad():
        emb = model.mobilebert.embeddings.word_embeddings.weight
        gen = torch.Generator().manual_seed(seed + 1000)
        emb[tokenizer.pad_token_id] = torch.randn(emb.shape[1], generator=gen) * emb.std()
    _shape_head(model, model.mobilebert, tokenizer, seed, null_bias=0.3, unit_states=True)
    return model


def build_xlm_roberta_model(tokenizer, seed: int) -> XLMRobertaForQuestionAnswering:
    return _qa_model(XLMRobertaForQuestionAnswering, XLMRobertaConfig, tokenizer, seed, 1.2,
                     **_roberta_like(tokenizer))


def build_deberta_v2_model(tokenizer, seed: int) -> DebertaV2ForQuestionAnswering:
    return _qa_model(DebertaV2ForQuestionAnswering, DebertaV2Config, tokenizer, seed, 1.4, **SIZE,
                     max_position_embeddings=MAX_POSITIONS, type_vocab_size=0, relative_attention=True,
                     position_buckets=16, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                     norm_rel_ebd="layer_norm", share_att_key=True, pad_token_id=tokenizer.pad_token_id)


def build_electra_model(tokenizer, seed: int) -> ElectraForQuestionAnswering:
    return _qa_model(ElectraForQuestionAnswering, ElectraConfig, tokenizer, seed, 1.7, **SIZE, embedding_size=32,
                     max_position_embeddings=MAX_POSITIONS, type_vocab_size=2, pad_token_id=tokenizer.pad_token_id)


def save(model, tokenizer, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def build_models(root: Path) -> dict[str, Path]:
    dirs = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bert_tok = build_bert_tokenizer(tmp, "right")
        bert = build_bert_model(bert_tok, seed=11)
        dirs["bert"] = root / "bert"
        save(bert, bert_tok, dirs["bert"])
        # The same model with a tokenizer that pads on the left: the pipeline then puts the context
        # first, truncates only_first, and masks nothing out of the spans.
        dirs["bert-left"] = root / "bert-left"
        save(build_bert_model(bert_tok, seed=12), build_bert_tokenizer(tmp, "left"), dirs["bert-left"])
        rob_tok = build_roberta_tokenizer(tmp)
        dirs["roberta"] = root / "roberta"
        save(build_roberta_model(rob_tok, seed=13), rob_tok, dirs["roberta"])
        distil_tok = build_bert_tokenizer(tmp, "right", DistilBertTokenizerFast)
        dirs["distilbert"] = root / "distilbert"
        save(build_distilbert_model(distil_tok, seed=14), distil_tok, dirs["distilbert"])
        mobile_tok = build_bert_tokenizer(tmp, "right", MobileBertTokenizerFast)
        dirs["mobilebert"] = root / "mobilebert"
        save(build_mobilebert_model(mobile_tok, seed=15), mobile_tok, dirs["mobilebert"])
        electra_tok = build_bert_tokenizer(tmp, "right", ElectraTokenizerFast)
        dirs["electra"] = root / "electra"
        save(build_electra_model(electra_tok, seed=16), electra_tok, dirs["electra"])
        xlmr_tok = build_xlm_roberta_tokenizer()
        dirs["xlm-roberta"] = root / "xlm-roberta"
        save(build_xlm_roberta_model(xlmr_tok, seed=17), xlmr_tok, dirs["xlm-roberta"])
        deberta_tok = build_deberta_v2_tokenizer()
        dirs["deberta-v2"] = root / "deberta-v2"
        save(build_deberta_v2_model(deberta_tok, seed=18), deberta_tok, dirs["deberta-v2"])
    return dirs


def _plain(answer: dict) -> dict:
    return {"answer": answer["answer"], "score": float(answer["score"]), "start": int(answer["start"]),
            "end": int(answer["end"])}


def windows_of(tokenizer, question: str, context: str, opts: dict) -> list[list]:
    """The windows the pipeline runs (its preprocess): per window the input ids, the token offsets,
    word ids and sequence ids (None as -1) -- all that span decoding reads from the encoding."""
    question_first = tokenizer.padding_side == "right"
    enc = tokenizer(
        text=question if question_first else context,
        text_pair=context if question_first else question,
        truncation="only_second" if question_first else "only_first",
        max_length=opts["max_seq_len"],
        stride=opts["doc_stride"],
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    return [
        [list(e.ids), [list(o) for o in e.offsets], [-1 if w is None else w for w in e.word_ids],
         [-1 if q is None else q for q in e.sequence_ids]]
        for e in enc.encodings
    ]


def run_cases(name: str, model_dir: Path) -> list[dict]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.is_fast
    qa = pipeline("question-answering", model=str(model_dir), tokenizer=tokenizer, device="cpu")
    cases = []
    for o, opts in enumerate(OPTION_SETS):
        for p, (question, context) in enumerate(PAIRS):
            case = {"model": name, "options": o, "pair": p}
            try:
                out = qa(question=question, context=context, **opts)
            except BaseException as e:  # noqa: BLE001 - tokenizers panics are BaseExceptions
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                case["error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
                cases.append(case)
                continue
            windows = windows_of(tokenizer, question, context, opts)
            case["n_windows"] = len(windows)
            case["windows_sha1"] = windows_digest(windows)  # ids, offsets, word ids, sequence ids
            case["answers"] = [_plain(a) for a in (out if isinstance(out, list) else [out])]
            cases.append(case)
    return cases


def windows_digest(windows: list[list[int]]) -> str:
    """A short fingerprint of the windows (the test recomputes it from its own tokenize stage)."""
    return hashlib.sha1(json.dumps(windows, separators=(",", ":")).encode()).hexdigest()[:16]


def check_coverage(cases: list[dict], tokenizers: dict) -> None:
    """The golden set must exercise what the parity test is for; fail loudly if a change loses it."""
    multi = [c for c in cases if c.get("n_windows", 0) > 1]
    assert len(multi) >= 10, "too few multi-window cases"
    later = 0
    for c in multi:
        tok = tokenizers[c["model"]]
        best = c["answers"][0]
        if best["answer"] == "" or tok.padding_side != "right":
            continue
        question, context = PAIRS[c["pair"]]
        opts = OPTION_SETS[c["options"]]
        enc = tok(question, context, truncation="only_second", max_length=opts["max_seq_len"],
                  stride=opts["doc_stride"], return_overflowing_tokens=True, return_offsets_mapping=True)
        # Where the first window's context ends.
        first_end = max(enc["offset_mapping"][0][i][1] for i, s in enumerate(enc.sequence_ids(0)) if s == 1)
        later += best["start"] >= first_end
    assert later >= 3, f"only {later} cases whose best answer lies beyond the first window"
    nulls = [c for c in cases if c.get("answers") and OPTION_SETS[c["options"]]["handle_impossible_answer"]
             and c["answers"][0]["answer"] == "" and c["answers"][0]["start"] == c["answers"][0]["end"] == 0]
    assert nulls, "no case where handle_impossible_answer yields the empty answer"
    errors = [c for c in cases if "error" in c]
    assert errors, "no case where the question leaves no room for the context"
    print(f"{len(cases)} cases: {len(multi)} multi-window, {later} best beyond window 1, "
          f"{len(nulls)} null answers, {len(errors)} pipeline errors", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models_dir", type=Path, help="where the tiny models go (tests/golden/models)")
    parser.add_argument("--out", type=Path, default=HERE / "qa_golden.json")
    args = parser.parse_args()
    assert transformers.__version__.startswith("4.57."), f"needs transformers 4.57, not {transformers.__version__}"
    dirs = build_models(args.models_dir)
    cases = []
    tokenizers = {}
    for name, d in dirs.items():
        tokenizers[name] = AutoTokenizer.from_pretrained(d)
        cases.extend(run_cases(name, d))
    check_coverage(cases, tokenizers)
    golden = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "max_positions": MAX_POSITIONS,
        "models": {name: d.name for name, d in dirs.items()},
        "option_sets": OPTION_SETS,
        "pairs": [list(p) for p in PAIRS],
        "cases": cases,
    }
    # One case per line: small, and diffs stay readable.
    lines = [json.dumps({k: v for k, v in golden.items() if k != "cases"}, ensure_ascii=False, indent=1)[:-2]]
    lines[0] += ',\n "cases": ['
    body = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)
    args.out.write_text(lines[0] + "\n" + body + "\n ]\n}\n", encoding="utf-8")
    json.loads(args.out.read_text(encoding="utf-8"))  # still valid JSON
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
