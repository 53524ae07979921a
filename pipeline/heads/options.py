"""The options of each head (`head.*` in the spec), one pydantic model per head.

Light on purpose: pydantic only, no torch or transformers, so that `pipeline.spec` stays cheap to
import. Each model's `kind` is its head's name (`model.head`): the spec fills it in from model.head and
picks the model by it (a discriminated union); users never write it. A head is registered with its
options model in pipeline/heads/__init__.py (`HEADS`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class HeadOptions(BaseModel):
    """Base of every head's options: unknown keys refused, values frozen, as every spec section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def check(self, spec) -> None:
        """Refuse combinations of these options with the rest of the spec (a `pipeline.spec.JobSpec`):
        raise ValueError with a message that starts with the dotted key."""


class TokenClassificationHead(HeadOptions):
    kind: Literal["token-classification"] = "token-classification"
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] = Field(
        "simple", description="How tokens become entities; transformers' `TokenClassificationPipeline` semantics."
    )
    ignore_labels: list[str] = Field(["O"], description="Labels never reported as entities.")


class EmbeddingHead(HeadOptions):
    kind: Literal["embedding"] = "embedding"
    pooling: Literal["mean", "cls", "pooler"] | None = Field(
        None,
        description="`mean`: attention-masked mean of the token vectors (sentence-transformers); `cls`: the [CLS] "
        "vector; `pooler`: the model's pooler_output, tanh(dense([CLS])). Default: a sentence-transformers "
        "checkpoint's own pooling (its `1_Pooling/config.json`), else `mean`. Ignored at token granularity.",
    )
    normalize: bool | None = Field(
        None,
        description="L2-normalise each embedding. Default: true when a sentence-transformers checkpoint ends in a "
        "`Normalize` module (its `modules.json`), else false.",
    )
    layer: int | None = Field(
        None, description="Hidden layer to pool (negative counts from the end; default the last)."
    )
    long_document: Literal["truncate", "mean"] = Field(
        "truncate",
        description="Documents longer than max_length: `truncate` to the first window (counted in the summary) or "
        "`mean`, the token-weighted mean of the windows' embeddings.",
    )


class SequenceClassificationHead(HeadOptions):
    kind: Literal["sequence-classification"] = "sequence-classification"
    function_to_apply: Literal["auto", "softmax", "sigmoid", "none"] = Field(
        "auto",
        description="`auto`: sigmoid when the config's problem_type is multi_label_classification or there is one "
        "label, softmax otherwise (transformers' semantics).",
    )
    top_k: int | None = Field(1, ge=1, description="Labels kept in `scores`, best first; null keeps all.")
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Multi-label: labels whose sigmoid score is at least this go to `labels`."
    )
    long_document: Literal["truncate", "mean", "max"] = Field(
        "truncate",
        description="Documents longer than max_length: `truncate` to the first window, or `mean` / `max` of the "
        "windows' logits.",
    )


class FillMaskHead(HeadOptions):
    kind: Literal["fill-mask"] = "fill-mask"
    top_k: int = Field(5, ge=1, description="Candidates per mask token.")
    targets: list[str] | None = Field(None, description="Restrict candidates to these words.")


class QuestionAnsweringHead(HeadOptions):
    kind: Literal["question-answering"] = "question-answering"
    doc_stride: int = Field(128, ge=0, description="Tokens shared by consecutive context windows.")
    max_answer_len: int = Field(15, ge=1, description="Longest answer, in tokens.")
    max_question_len: int = Field(
        64,
        ge=1,
        description="Longest question expected, in tokens; only checks doc_stride (doc_stride < max_length - "
        "max_question_len - 3). Questions are not truncated (as transformers' pipeline with a fast tokenizer); a "
        "question that leaves no room for the context is an error row.",
    )
    top_k: int = Field(1, ge=1, description="Answers per question; `answers` is written when above 1.")
    handle_impossible_answer: bool = Field(False, description="Allow the empty answer (the null score) to win.")

    def check(self, spec) -> None:
        if self.doc_stride >= spec.model.max_length - self.max_question_len - 3:
            raise ValueError(
                "head.doc_stride: must leave room for new context in each window "
                "(doc_stride < max_length - max_question_len - 3)"
            )
