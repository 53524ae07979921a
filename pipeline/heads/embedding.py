"""Embeddings: pooled document vectors (mean as sentence-transformers, [CLS], or the pooler output)
or, at token granularity, the sequence output itself, one row per token.

A sentence-transformers checkpoint brings its own defaults, read from its files (see
`sentence_transformers_defaults`): the pooling of its Pooling module, normalisation when it ends in a
Normalize module, and its max_seq_length as the window when the spec does not set model.max_length.
With them, the document vectors equal `SentenceTransformer(path).encode(texts)`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pyarrow as pa

from pipeline import columns as C
from pipeline.heads.base import (Produced, WindowedTextHead, column, list_numpy, list_parts, model_max_length,
                                 vector_array)
from pipeline.errors import ModelError, SpecError
from pipeline.windows import ordered_segment_sums, segment_ids, surface_offsets

# sentence-transformers' pooling modes (`pooling_mode` in 1_Pooling/config.json; older checkpoints
# have one `pooling_mode_<x>` flag per mode) -> ours; the others are not computed here.
_ST_POOLING = {"mean": "mean", "cls": "cls"}
_ST_LEGACY_FLAGS = {
    "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class STDefaults:
    """What a sentence-transformers checkpoint says about its embeddings (all None when it is not one)."""

    pooling: str | None = None  # ours ("mean", "cls"), or None
    unsupported: str | None = None  # why its pipeline cannot be reproduced here, one clause
    normalize: bool | None = None
    max_seq_length: int | None = None


def _read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sentence_transformers_defaults(model_dir: str | None) -> STDefaults:
    """The defaults in a local sentence-transformers checkpoint: `modules.json` lists its modules
    (Transformer, Pooling, Normalize, ...); the Pooling module's `config.json` names the pooling; the
    Transformer module's `sentence_bert_config.json` holds `max_seq_length`."""
    if not model_dir or not os.path.isfile(os.path.join(model_dir, "modules.json")):
        return STDefaults()
    modules = _read_json(os.path.join(model_dir, "modules.json"))
    kinds = [(str(m.get("type", "")).rsplit(".", 1)[-1], m.get("path", "")) for m in modules]
    pooling = unsupported = max_seq_length = None
    for kind, path in kinds:
        folder = os.path.join(model_dir, path)
        if kind == "Transformer":
            config = os.path.join(folder, "sentence_bert_config.json")
            if os.path.isfile(config):
                max_seq_length = _read_json(config).get("max_seq_length")
        elif kind == "Pooling":
            config = _read_json(os.path.join(folder, "config.json"))
            modes = config.get("pooling_mode")
            if modes is None:
                modes = [mode for flag, mode in _ST_LEGACY_FLAGS.items() if config.get(flag)] or ["mean"]
            modes = [modes] if isinstance(modes, str) else list(modes)
            if len(modes) == 1 and modes[0] in _ST_POOLING:
                pooling = _ST_POOLING[modes[0]]
            else:
                unsupported = f"its pooling is {' + '.join(modes)} ({path}/config.json)"
        elif kind != "Normalize" and unsupported is None:
            unsupported = f"it has a {kind} module ({path or 'modules.json'})"
    if pooling is None and unsupported is None:
        unsupported = "it has no Pooling module"
    return STDefaults(pooling=pooling, unsupported=unsupported,
                      normalize=any(kind == "Normalize" for kind, _ in kinds),
                      max_seq_length=int(max_seq_length) if max_seq_length else None)


class Embedding(WindowedTextHead):
    auto_class = "AutoModel"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.granularity = ctx.spec.output.granularity
        self.hidden = int(self.config.hidden_size)
        self.forward_outputs = {"tokens" if self.granularity == "token" else "vector": pa.float32()}
        st = sentence_transformers_defaults(ctx.extra.get("model_dir"))
        document = self.granularity == "document"
        self.pooling = self.options.pooling or st.pooling or "mean"
        if self.options.pooling is None and document and st.unsupported:
            raise ModelError(f"head.pooling: {ctx.spec.model.path} is a sentence-transformers checkpoint whose "
                             f"embeddings this job cannot reproduce ({st.unsupported}); set head.pooling to mean, cls "
                             "or pooler to pool the encoder's output instead")
        # Normalize acts on the pooled vector: per-token vectors stay raw unless head.normalize says so.
        self.normalize = self.options.normalize if self.options.normalize is not None else bool(document and st.normalize)
        if st.max_seq_length and "max_length" not in ctx.spec.model.model_fields_set:
            # The window the checkpoint was trained with (sentence-transformers truncates there).
            shim = SimpleNamespace(model=SimpleNamespace(max_length=st.max_seq_length))
            self.max_length = model_max_length(shim, ctx.tokenizer, ctx.config)
            stride = ctx.spec.model.stride if ctx.spec.model.stride is not None else self.max_length // 4
            self.stride = min(stride, self.max_length // 2)
        if self.pooling == "pooler" and self.options.layer is not None:
            raise SpecError("head.layer: the pooler reads the last layer only; use pooling cls or mean with head.layer")

    def keep_all_windows(self) -> bool:
        return self.granularity == "token" or self.options.long_document == "mean"

    def encode_schema(self):
        # A document's vector needs no token offsets (and without them the tokenizer skips their
        # bookkeeping); per-token rows need them for their text spans.
        return super().encode_schema() if self.granularity == "token" else []

    def head_parameter_prefixes(self):
        # The encoder is the whole model; only the pooler can be missing from a checkpoint.
        return ("pooler.",) if self.pooling == "pooler" and self.granularity == "document" else ()

    def _hidden(self, model, inputs):
        layer = self.options.layer
        out = self.run_model(model, inputs, output_hidden_states=layer is not None)
        hidden = out.last_hidden_state if layer is None else out.hidden_states[layer]
        return out, hidden.float()

    def forward(self, model, inputs, lengths):
        out, hidden = self._hidden(model, inputs)
        if self.granularity == "token":
            h = hidden.cpu().numpy()
            return {"tokens": [h[i, : lengths[i]] for i in range(len(lengths))]}
        pooling = self.pooling
        if pooling == "cls":
            vec = hidden[:, 0]
        elif pooling == "pooler":
            if getattr(out, "pooler_output", None) is None:
                # A checkpoint missing only the pooler's weights is refused before any work
                # (head_parameter_prefixes); an architecture without a pooler at all gets here.
                raise ModelError(f"head.pooling: {self.ctx.spec.model.path} has no pooler (its output has no "
                                 "pooler_output); set head.pooling to cls or mean")
            vec = out.pooler_output.float()
        else:  # mean over real tokens, special tokens included, as sentence-transformers does
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        v = vec.cpu().numpy()
        return {"vector": [v[i] for i in range(len(v))]}

    def output_schema(self, id_type):
        vector = pa.list_(pa.float32(), self.hidden)  # fixed_size_list: vector stores read it as a vector
        if self.granularity == "token":
            return pa.schema(
                [("id", id_type), ("token_index", pa.int32()), ("token", pa.string()), ("start", pa.int32()),
                 ("end", pa.int32()), ("embedding", vector)]
            )
        return pa.schema([("id", id_type), ("embedding", vector)])

    def _normalize(self, v: np.ndarray) -> np.ndarray:
        if not self.normalize:
            return v
        norm = np.linalg.norm(v, axis=-1, keepdims=True)
        return v / np.maximum(norm, 1e-12)

    def postprocess_table(self, batch):
        if self.granularity == "token":
            tokens = self.document_tokens(batch, "tokens", self.hidden)
            starts, ends = surface_offsets(tokens.starts, tokens.ends)
            return Produced(tokens.document, {
                "token_index": pa.array(tokens.index, pa.int32()), "token": self.token_strings(tokens.token_ids),
                "start": pa.array(starts, pa.int32()), "end": pa.array(ends, pa.int32()),
                "embedding": vector_array(self._normalize(tokens.values), self.hidden),
            })
        per_window, doc_windows = list_parts(column(batch, C.out("vector")))
        flat, _ = list_numpy(per_window)
        vectors = flat.reshape(-1, self.hidden).astype(np.float32, copy=False)
        n_windows = np.diff(doc_windows)
        errors = {int(d): "no window was computed" for d in np.flatnonzero(n_windows == 0)}
        has = np.flatnonzero(n_windows > 0)
        docs = vectors[doc_windows[:-1][has]]  # one window: its vector
        multi = n_windows > 1
        if multi.any():  # long_document: mean -- windows weighted by the tokens they hold
            _, window_offsets = list_parts(column(batch, C.INPUT_IDS).values)
            weights = np.diff(window_offsets).astype(np.float64)
            mine = multi[segment_ids(n_windows)]  # the windows of those documents, which lie together
            counts = n_windows[multi]
            sums = ordered_segment_sums(vectors[mine] * weights[mine][:, None], counts)
            totals = ordered_segment_sums(weights[mine], counts)
            docs[multi[has]] = (sums / totals[:, None]).astype(np.float32)
        return Produced(has.astype(np.int64), {"embedding": vector_array(self._normalize(docs), self.hidden)}, errors)
