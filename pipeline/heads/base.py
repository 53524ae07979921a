"""What every head provides. A head is one module: how to encode a batch of documents into windows
(CPU), how to run the forward pass and keep only compact per-window arrays (the one place that touches
the device), how to turn those arrays into output rows (CPU), and the output Arrow schema.

Between the stages a batch is a `pyarrow.Table`, one row per document; a document's windows live
inside its row (list columns), so they are never split across blocks or actors. The heads that carry
most volume encode and postprocess whole batches on flat NumPy arrays and Arrow offsets
(`encode_table`, `postprocess_table`); the default implementations go row by row through
`encode_batch` / `postprocess`, with Python dicts, for heads whose work is per row anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from pipeline import columns as C
from pipeline.heads import head_entry
from pipeline.windows import WindowCutter, best_window_positions, offsets_of, ragged_arange, segment_ids, segment_sums

COMMON_ENCODE_FIELDS = [
    pa.field(C.INPUT_IDS, pa.list_(pa.list_(pa.int32()))),
    pa.field(C.TOKEN_TYPE_IDS, pa.list_(pa.list_(pa.int32()))),
    pa.field(C.N_TOKENS, pa.int64()),
    pa.field(C.TRUNCATED, pa.bool_()),
]


class RowError(ValueError):
    """A row that cannot be processed; the message is the reason written to `_errors/`."""


@dataclass
class Context:
    """What a head may know besides its own options: the whole spec, the tokenizer and model config."""

    spec: Any  # pipeline.spec.JobSpec
    tokenizer: Any  # a fast tokenizer
    config: Any  # transformers PretrainedConfig
    extra: dict = field(default_factory=dict)


# ---- Arrow <-> NumPy -----------------------------------------------------------------------------


def column(batch: pa.Table, name: str) -> pa.Array:
    col = batch.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def list_parts(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """A list column's values and its int64 offsets into them, from 0 (a sliced column's share only)."""
    offsets = col.offsets.to_numpy().astype(np.int64)
    values = col.values
    if len(offsets) and (offsets[0] != 0 or offsets[-1] != len(values)):
        values = values.slice(offsets[0], offsets[-1] - offsets[0])
        offsets = offsets - offsets[0]
    return values, offsets


def list_numpy(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list<number> column as (flat NumPy values, int64 offsets)."""
    values, offsets = list_parts(col)
    return values.to_numpy(zero_copy_only=False), offsets


def list_array(values, offsets: np.ndarray, value_type: pa.DataType | None = None) -> pa.ListArray:
    """list<value> from flat values (NumPy or Arrow) and int64 offsets."""
    if not isinstance(values, pa.Array):
        values = pa.array(values, type=value_type)
    return pa.ListArray.from_arrays(pa.array(np.asarray(offsets, dtype=np.int32)), values)


def vector_array(values: np.ndarray, size: int) -> pa.FixedSizeListArray:
    """fixed_size_list<float32, size> from a [rows, size] array."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values, dtype=np.float32).ravel()), size)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _list_views(col: pa.ListArray) -> list:
    """One NumPy view per list (None for a null), without a Python object per element."""
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy(zero_copy_only=False)
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    return [values[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(col))]


def rows_with_array_views(batch: pa.Table) -> list[dict]:
    """Rows as dicts, numeric list columns as NumPy arrays (list<list<...>> as lists of arrays): a
    megabyte document's per-token columns would otherwise become millions of Python objects."""
    columns = {}
    for name in batch.schema.names:
        col = column(batch, name)
        t = col.type
        if pa.types.is_list(t) and _is_number(t.value_type):
            columns[name] = _list_views(col)
        elif pa.types.is_list(t) and pa.types.is_list(t.value_type) and _is_number(t.value_type.value_type):
            inner = _list_views(col.values)
            offsets = col.offsets.to_numpy()
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            columns[name] = [inner[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(col))]
        else:
            columns[name] = col.to_pylist()
    return [{name: values[i] for name, values in columns.items()} for i in range(batch.num_rows)]


@dataclass
class Produced:
    """What `postprocess_table` makes of a batch of documents."""

    document: np.ndarray  # int64 [rows]: the batch row (document) of each output row, non-decreasing
    columns: dict[str, pa.Array]  # the output_schema columns but the id, one value per output row
    errors: dict[int, str] = field(default_factory=dict)  # batch row -> reason; such documents have no rows


class Head:
    """Base class. Subclasses set the class attributes and override the four steps. A head's name and
    granularities are its registry entry's (pipeline.heads.HEADS), written there only."""

    auto_class: ClassVar[str]  # e.g. "AutoModelForTokenClassification"
    # Name -> Arrow value type of each per-window output of `forward`, stored as list<list<type>>.
    forward_outputs: ClassVar[dict[str, pa.DataType]] = {}

    def __init__(self, ctx: Context):
        entry = head_entry(ctx.spec.model.head)
        self.name, self.granularities = entry.name, entry.granularities
        self.ctx = ctx
        self.spec = ctx.spec
        self.options = ctx.spec.head
        self.tokenizer = ctx.tokenizer
        self.config = ctx.config

    # ---- CPU: tokenize stage -------------------------------------------------------------------
    def encode_schema(self) -> list[pa.Field]:
        """Head-specific columns `encode_table` adds, besides INPUT_IDS, TOKEN_TYPE_IDS, N_TOKENS, TRUNCATED."""
        return []

    def encode_batch(self, rows: list[dict]) -> list[dict | RowError]:
        """One entry per row: a dict of columns (INPUT_IDS, TOKEN_TYPE_IDS, N_TOKENS, TRUNCATED and the
        encode_schema columns) or a RowError with the reason. Used by the default `encode_table`."""
        raise NotImplementedError

    def encode_table(self, batch: pa.Table) -> tuple[dict[str, pa.Array], dict[int, str]]:
        """Encode a batch of good rows: each encode column (COMMON_ENCODE_FIELDS and encode_schema), one
        value per row, and the rows that failed (batch row -> reason; their values are ignored).
        Default: row by row through `encode_batch`."""
        results = self.encode_batch(batch.to_pylist())
        errors = {i: str(r) for i, r in enumerate(results) if isinstance(r, RowError)}
        return {f.name: pa.array([None if i in errors else r[f.name] for i, r in enumerate(results)], type=f.type)
                for f in COMMON_ENCODE_FIELDS + self.encode_schema()}, errors

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
        the row to `_errors/`. Used by the default `postprocess_table`."""
        raise NotImplementedError

    def postprocess_table(self, batch: pa.Table) -> Produced:
        """The output rows of a batch of good documents. Default: row by row through `postprocess`."""
        schema = self.output_schema(batch.schema.field(C.ID).type)
        names = [n for n in schema.names if n != C.ID]
        values: dict[str, list] = {n: [] for n in names}
        document: list[int] = []
        errors: dict[int, str] = {}
        for d, row in enumerate(rows_with_array_views(batch)):
            try:
                produced = self.postprocess(row)
            except RowError as e:
                errors[d] = str(e)
                continue
            for out_row in produced:
                document.append(d)
                for n in names:
                    values[n].append(out_row.get(n))
        columns = {n: pa.array(values[n], type=schema.field(n).type) for n in names}
        return Produced(np.asarray(document, dtype=np.int64), columns, errors)

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


@dataclass
class DocumentTokens:
    """The tokens a batch's windows cover, documents one after another, each with the per-position
    model output of the window that sees it best."""

    doc_offsets: np.ndarray  # int64 [D+1]
    document: np.ndarray  # int64 [N]: batch row of each token
    index: np.ndarray  # int64 [N]: token index in its document
    token_ids: np.ndarray  # int32 [N]
    starts: np.ndarray  # int32 [N]: character offsets into the document's text
    ends: np.ndarray  # int32 [N]
    values: np.ndarray  # float32 [N, width]


class WindowedTextHead(Head):
    """A head over one text column, cut into windows by `pipeline.windows.WindowCutter`.

    Encode columns: the document's tokens and their character offsets, and where each window sits
    among them; heads that read only the first window set `keep_all_windows` False.
    """

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.max_length = model_max_length(ctx.spec, ctx.tokenizer, ctx.config)
        self.stride = min(ctx.spec.model.effective_stride, self.max_length // 2)
        self._cutter: WindowCutter | None = None
        self._vocab: pa.Array | None = None

    def keep_all_windows(self) -> bool:
        return True

    def encode_schema(self) -> list[pa.Field]:
        ints = pa.list_(pa.int32())
        return [pa.field(n, ints) for n in ("_tok_ids", "_starts", "_ends", "_window_starts", "_window_prefix", "_window_lengths")]

    def cut(self, texts: list[str]):
        # Built on first use: a subclass may set max_length / stride after this __init__.
        if self._cutter is None:
            offsets = "_starts" in {f.name for f in self.encode_schema()}
            self._cutter = WindowCutter(self.tokenizer, self.max_length, self.stride, offsets=offsets)
        return self._cutter(texts)

    def encode_table(self, batch):
        windows = self.cut(column(batch, C.TEXT).to_pylist())
        n_windows = np.diff(windows.doc_windows)
        keep = n_windows if self.keep_all_windows() else np.minimum(n_windows, 1)
        if not self.keep_all_windows():  # only each document's first window goes on
            first = windows.doc_windows[:-1]
            windows.window_starts = windows.window_starts[first]
            windows.window_lengths = windows.window_lengths[first]
            windows.doc_windows = offsets_of(keep)
        ids, window_offsets = windows.window_tokens()
        n_docs = len(n_windows)
        ints = pa.int32()
        doc_tokens = windows.doc_tokens
        doc_windows = windows.doc_windows
        counts = np.diff(doc_tokens)
        columns = {
            C.INPUT_IDS: list_array(list_array(ids, window_offsets, ints), doc_windows),
            C.TOKEN_TYPE_IDS: list_array(list_array(np.zeros(0, np.int32), np.zeros(1, np.int64), ints),
                                         np.zeros(n_docs + 1, np.int64)),
            C.N_TOKENS: pa.array(segment_sums(np.diff(window_offsets), doc_windows), pa.int64()),
            C.TRUNCATED: pa.array(keep < n_windows),
        }
        if windows.starts is not None:  # the head keeps the document's tokens (encode_schema)
            columns.update({
                "_tok_ids": list_array(windows.token_ids, doc_tokens, ints),
                "_starts": list_array(windows.starts, doc_tokens, ints),
                "_ends": list_array(windows.ends, doc_tokens, ints),
                "_window_starts": list_array(windows.window_starts, doc_windows, ints),
                "_window_prefix": list_array(np.full(len(windows.window_starts), len(windows.prefix), np.int32),
                                             doc_windows, ints),
                "_window_lengths": list_array(windows.window_lengths, doc_windows, ints),
            })
        errors = {int(d): "the text has no tokens for this tokenizer" for d in np.flatnonzero(counts == 0)}
        return columns, errors

    def document_tokens(self, batch: pa.Table, name: str, width: int) -> DocumentTokens:
        """Every covered token of the batch with its [width] row of the per-position output `name`,
        taken from the window where it has the most context (pipeline.windows.best_window_positions)."""
        starts, doc_windows = list_numpy(column(batch, "_window_starts"))
        lengths, _ = list_numpy(column(batch, "_window_lengths"))
        prefix, _ = list_numpy(column(batch, "_window_prefix"))
        window, position, doc_offsets = best_window_positions(starts, lengths, doc_windows)
        per_window, _ = list_parts(column(batch, C.out(name)))
        flat, value_offsets = list_numpy(per_window)
        rows = flat.reshape(-1, width)
        values = rows[value_offsets[window] // width + prefix[window] + position]
        document = segment_ids(np.diff(doc_offsets))
        index = ragged_arange(np.diff(doc_offsets))
        tok_ids, tok_offsets = list_numpy(column(batch, "_tok_ids"))
        at = tok_offsets[:-1][document] + index
        return DocumentTokens(
            doc_offsets=doc_offsets, document=document, index=index, token_ids=tok_ids[at],
            starts=list_numpy(column(batch, "_starts"))[0][at], ends=list_numpy(column(batch, "_ends"))[0][at],
            values=np.asarray(values, dtype=np.float32),
        )

    def token_strings(self, token_ids: np.ndarray) -> pa.Array:
        """`convert_ids_to_tokens` of many ids at once: one lookup table of the vocabulary, built once."""
        return self.vocabulary().take(pa.array(token_ids))

    def vocabulary(self) -> pa.Array:
        """Token string of every id (`convert_ids_to_tokens` of each), as an Arrow string array."""
        if self._vocab is None:
            size = self.tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True)
            self._vocab = pa.array(self.tokenizer.convert_ids_to_tokens(list(range(size))), type=pa.string())
        return self._vocab
