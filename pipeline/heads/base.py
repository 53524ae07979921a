"""What every head provides. A head is one module: how to encode a document into windows (CPU), how
to run the forward pass and keep only compact per-window arrays (the one place that touches the
device), how to turn those arrays into output rows (CPU), and the output Arrow schema.

Rows travel as Python dicts between `encode_batch` and `postprocess`; the stages turn them into Arrow.
A document's windows live inside its row, so they are never split across blocks or actors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from pipeline import columns as C


class RowError(ValueError):
    """A row that cannot be processed; the message is the reason written to `_errors/`."""


@dataclass
class Context:
    """What a head may know besides its own options: the whole spec, the tokenizer and model config."""

    spec: Any  # pipeline.spec.JobSpec
    tokenizer: Any  # a fast tokenizer
    config: Any  # transformers PretrainedConfig
    extra: dict = field(default_factory=dict)


class Head:
    """Base class. Subclasses set the class attributes and override the four steps."""

    name: ClassVar[str]
    auto_class: ClassVar[str]  # e.g. "AutoModelForTokenClassification"
    granularities: ClassVar[tuple[str, ...]] = ("document",)
    # Input columns (besides the id) this head reads; the reader keeps only these.
    # Keys are internal names from pipeline.columns, values the InputSpec attribute naming the user column.
    input_columns: ClassVar[dict[str, str]] = {C.TEXT: "text_column"}
    # Name -> Arrow value type of each per-window output of `forward`, stored as list<list<type>>.
    forward_outputs: ClassVar[dict[str, pa.DataType]] = {}

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.spec = ctx.spec
        self.options = ctx.spec.head
        self.tokenizer = ctx.tokenizer
        self.config = ctx.config

    # ---- CPU: tokenize stage -------------------------------------------------------------------
    def encode_schema(self) -> list[pa.Field]:
        """Head-specific columns `encode_batch` adds, besides INPUT_IDS, TOKEN_TYPE_IDS, N_TOKENS, TRUNCATED."""
        return []

    def encode_batch(self, rows: list[dict]) -> list[dict | RowError]:
        """One entry per row: a dict of columns (INPUT_IDS, TOKEN_TYPE_IDS, N_TOKENS, TRUNCATED and the
        encode_schema columns) or a RowError with the reason."""
        raise NotImplementedError

    # ---- device: model stage -------------------------------------------------------------------
    def forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], lengths: np.ndarray) -> dict[str, list[np.ndarray]]:
        """Run one padded micro-batch; return, for each name of `forward_outputs`, one flat NumPy array
        per window (in micro-batch order). Keep them compact: probabilities over labels, pooled vectors,
        top-k ids, never logits over the vocabulary."""
        raise NotImplementedError

    def run_model(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], **kwargs):
        """`model(**inputs)` for a right-padded micro-batch, giving each window what it would get alone."""
        return model(**unpadded_trigram_inputs(model, inputs), **kwargs)

    # ---- CPU: postprocess stage ----------------------------------------------------------------
    def output_schema(self, id_type: pa.DataType) -> pa.Schema:
        raise NotImplementedError

    def postprocess(self, row: dict) -> list[dict]:
        """Turn one document's row (its input columns, encode columns and `_out_*` columns, each a list
        with one entry per window) into output rows matching `output_schema`. Raise RowError to send
        the row to `_errors/`."""
        raise NotImplementedError

    # ---- loading -------------------------------------------------------------------------------
    def head_parameter_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes that belong to the head rather than the encoder. A checkpoint missing
        any of them would run with random weights. Default: every missing key counts."""
        return ("",)


def unpadded_trigram_inputs(model, inputs: dict) -> dict:
    """MobileBERT's trigram embedding (`trigram_input`) concatenates each token's word embedding with
    its neighbours', zeros past the ends. transformers' pipelines run each window alone, unpadded; in a
    right-padded micro-batch the last token's right neighbour is the [PAD] embedding instead (not
    zero in a trained checkpoint), which shifts every logit of the window. Pass the word embeddings
    with the padded positions zeroed instead: the model then sees what it sees unpadded."""
    config = getattr(model, "config", None)
    if not getattr(config, "trigram_input", False) or "attention_mask" not in inputs:
        return inputs
    mask = inputs["attention_mask"]
    if bool(mask.all()):
        return inputs
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    embeds = embeds * mask.unsqueeze(-1).to(embeds.dtype)
    return {k: v for k, v in inputs.items() if k != "input_ids"} | {"inputs_embeds": embeds}



_POSITION_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert", "longformer", "bart", "mpnet")


def model_max_length(spec, tokenizer, config) -> int:
    """Tokens per window: the spec's max_length, capped by what the model's position table holds."""
    limit = spec.model.max_length
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        # RoBERTa-style models number positions from pad_token_id + 1.
        if any(t in getattr(config, "model_type", "") for t in _POSITION_OFFSET_MODELS):
            positions -= (getattr(config, "pad_token_id", 1) or 0) + 1
        limit = min(limit, positions)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if tok_limit and tok_limit < 1_000_000:
        limit = min(limit, tok_limit)
    return limit


class WindowedTextHead(Head):
    """A head over one text column, cut into windows by `pipeline.windows.encode_windows`.

    Encode columns: the document's tokens and their character offsets, and where each window sits
    among them; heads that read only the first window set `keep_all_windows` False.
    """

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.max_length = model_max_length(ctx.spec, ctx.tokenizer, ctx.config)
        self.stride = min(ctx.spec.model.effective_stride, self.max_length // 2)

    def keep_all_windows(self) -> bool:
        return True

    def encode_schema(self) -> list[pa.Field]:
        ints = pa.list_(pa.int32())
        return [pa.field(n, ints) for n in ("_tok_ids", "_starts", "_ends", "_window_starts", "_window_prefix", "_window_lengths")]

    def encode_batch(self, rows: list[dict]) -> list[dict | RowError]:
        from pipeline.windows import encode_windows

        docs = encode_windows(self.tokenizer, [r[C.TEXT] for r in rows], self.max_length, self.stride)
        keep_all = self.keep_all_windows()
        out = []
        for doc in docs:
            if len(doc.token_ids) == 0:
                out.append(RowError("the text has no tokens for this tokenizer"))
                continue
            n_windows = len(doc.input_ids) if keep_all else 1
            input_ids = doc.input_ids[:n_windows]
            out.append(
                {
                    C.INPUT_IDS: input_ids,
                    C.TOKEN_TYPE_IDS: [],
                    C.N_TOKENS: sum(len(w) for w in input_ids),
                    C.TRUNCATED: n_windows < len(doc.input_ids),
                    "_tok_ids": doc.token_ids,
                    "_starts": doc.starts,
                    "_ends": doc.ends,
                    "_window_starts": doc.window_starts[:n_windows],
                    "_window_prefix": doc.window_prefix[:n_windows],
                    "_window_lengths": doc.window_lengths[:n_windows],
                }
            )
        return out

    @staticmethod
    def covered_tokens(row: dict) -> int:
        """Document tokens the kept windows cover (all of them unless truncated)."""
        return int(row["_window_starts"][-1] + row["_window_lengths"][-1])

    def per_token(self, row: dict, name: str, width: int) -> np.ndarray:
        """[n_tokens, width] rows of the per-position output `name`, each token taken from the window
        where it has the most context (pipeline.windows.best_window_per_token)."""
        from pipeline.windows import best_window_per_token

        starts = np.asarray(row["_window_starts"], dtype=np.int64)
        lengths = np.asarray(row["_window_lengths"], dtype=np.int64)
        prefix = np.asarray(row["_window_prefix"], dtype=np.int64)
        n = self.covered_tokens(row)
        window, position = best_window_per_token(starts, lengths, n)
        per_window = [np.asarray(v, dtype=np.float32).reshape(-1, width) for v in row[C.out(name)]]
        out = np.empty((n, width), dtype=np.float32)
        for w in np.unique(window):
            sel = window == w
            out[sel] = per_window[w][prefix[w] + position[sel]]
        return out
