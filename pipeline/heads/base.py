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
