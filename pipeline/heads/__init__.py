"""Registry: `model.head` -> the head. Adding a head is one entry in `HEADS` (and its module).

Each entry says everything the rest of the job needs to know about a head without importing it:
the spec (pipeline/spec.py) derives `model.head`'s choices, the `head.*` options union, the default
window, the granularity and text-pair checks and the spec reference from `HEADS`; the stages import
the head class from its path only when they build it (torch and transformers load there, not here).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from pipeline import columns as C
from pipeline.heads.options import (
    EmbeddingHead,
    FillMaskHead,
    HeadOptions,
    QuestionAnsweringHead,
    SequenceClassificationHead,
    TokenClassificationHead,
)

# model.max_length when neither the spec nor the entry says otherwise: BERT's position table.
DEFAULT_MAX_LENGTH = 512


# What a head's forward pass keeps, in float32-sized values per window token, from the checkpoint's
# config.json (a dict; {} when unread: BERT-base's sizes), the granularity and the tokens per window:
# pipeline/plan.py sizes the object store with it. A per-window output is spread over its tokens.
ForwardValues = Callable[[dict, str, float], float]


def _labels(config: dict) -> int:
    return len(config.get("id2label") or {}) or int(config.get("num_labels", 2))


def _hidden(config: dict) -> int:
    return int(config.get("hidden_size") or config.get("dim") or 768)  # DistilBERT calls it dim


def _one_value(config: dict, granularity: str, window_tokens: float) -> float:
    return 1.0  # a head that does not say: about one value per token


def _label_probs(config: dict, granularity: str, window_tokens: float) -> float:
    return _labels(config)  # one probability per label and token


def _window_logits(config: dict, granularity: str, window_tokens: float) -> float:
    return _labels(config) / window_tokens  # one logit per label and window


def _vectors(config: dict, granularity: str, window_tokens: float) -> float:
    # A vector per token at token granularity, else one pooled vector per window.
    return _hidden(config) if granularity == "token" else _hidden(config) / window_tokens


def _mask_candidates(config: dict, granularity: str, window_tokens: float) -> float:
    return 2 * 5 / window_tokens  # top-k ids and scores (head.top_k's default) for about one mask a window


def _span_logits(config: dict, granularity: str, window_tokens: float) -> float:
    return 2  # start and end logits per token


@dataclass(frozen=True)
class HeadEntry:
    name: str  # model.head
    path: str  # "module:Class" of the head (a pipeline.heads.base.Head)
    options: type[HeadOptions]  # its `head.*` options; `kind` defaults to `name`
    max_length: int = DEFAULT_MAX_LENGTH  # model.max_length when the spec leaves it out
    # How the spec reference words this head's default window, when it is not plain `max_length`.
    max_length_note: str | None = None
    granularities: tuple[str, ...] = ("document",)  # output.granularity values it writes
    # Input columns (besides the id) it reads, which the reader keeps: internal names (pipeline.columns)
    # -> the InputSpec attribute that names the user's column. Here, so that the input is checked
    # before torch and transformers are imported.
    input_columns: dict[str, str] = field(default_factory=lambda: {C.TEXT: "text_column"})
    text_pairs: bool = False  # reads input.text_pair_column as a second segment
    aliases: tuple[str, ...] = ()  # other names people try for it (transformers' task names): error hints
    forward_values: ForwardValues = _one_value  # sizing only (pipeline/plan.py)

    def __post_init__(self):
        kind = self.options.model_fields.get("kind")
        if kind is None or kind.default != self.name:
            # The spec picks the options model by `kind`, filled in from model.head.
            raise ValueError(f"head {self.name!r}: its options model {self.options.__name__} must have "
                             f"`kind: Literal[{self.name!r}] = {self.name!r}`")


HEADS: tuple[HeadEntry, ...] = (
    HeadEntry(
        "token-classification", "pipeline.heads.token_classification:TokenClassification", TokenClassificationHead,
        granularities=("document", "token"), aliases=("ner", "token_classification", "pos"),
        forward_values=_label_probs,
    ),
    HeadEntry(
        "embedding", "pipeline.heads.embedding:Embedding", EmbeddingHead,
        max_length_note="for embedding, a sentence-transformers checkpoint's `max_seq_length` (its "
        "`sentence_bert_config.json`), else 512",
        granularities=("document", "token"), aliases=("feature-extraction", "embeddings", "sentence-similarity"),
        forward_values=_vectors,
    ),
    HeadEntry(
        "sequence-classification", "pipeline.heads.sequence_classification:SequenceClassification",
        SequenceClassificationHead, text_pairs=True,
        aliases=("text-classification", "sentiment-analysis", "classification"), forward_values=_window_logits,
    ),
    HeadEntry("fill-mask", "pipeline.heads.fill_mask:FillMask", FillMaskHead, aliases=("masked-lm", "mlm"),
              forward_values=_mask_candidates),
    HeadEntry(
        "question-answering", "pipeline.heads.question_answering:QuestionAnswering", QuestionAnsweringHead,
        max_length=384, input_columns={C.QUESTION: "question_column", C.CONTEXT: "context_column"},
        max_length_note="384 for question-answering (the window transformers' QA pipeline uses, "
        "its `max_seq_len`)", aliases=("qa",), forward_values=_span_logits,
    ),
)


def head_entry(name: str) -> HeadEntry:
    return next(entry for entry in HEADS if entry.name == name)


def head_class(name: str):
    module, cls = head_entry(name).path.split(":")
    return getattr(importlib.import_module(module), cls)


def build_head(ctx):
    return head_class(ctx.spec.model.head)(ctx)
