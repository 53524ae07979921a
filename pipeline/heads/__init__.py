"""Registry: `model.head` -> the head class. One module per head."""

from __future__ import annotations

import importlib

_HEADS = {
    "token-classification": "pipeline.heads.token_classification:TokenClassification",
    "embedding": "pipeline.heads.embedding:Embedding",
    "sequence-classification": "pipeline.heads.sequence_classification:SequenceClassification",
    "fill-mask": "pipeline.heads.fill_mask:FillMask",
    "question-answering": "pipeline.heads.question_answering:QuestionAnswering",
}


def head_class(name: str):
    module, cls = _HEADS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_head(ctx):
    return head_class(ctx.spec.model.head)(ctx)
