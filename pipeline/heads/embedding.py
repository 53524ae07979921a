"""Embeddings: pooled document vectors (mean as sentence-transformers, [CLS], or the pooler output)
or, at token granularity, the sequence output itself, one row per token."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline import columns as C
from pipeline.heads.base import RowError, WindowedTextHead
from pipeline.windows import surface_offsets


class Embedding(WindowedTextHead):
    name = "embedding"
    auto_class = "AutoModel"
    granularities = ("document", "token")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.granularity = ctx.spec.output.granularity
        self.hidden = int(self.config.hidden_size)
        self.forward_outputs = {"tokens" if self.granularity == "token" else "vector": pa.float32()}
        if self.options.pooling == "pooler" and self.options.layer is not None:
            raise ValueError("head.layer: the pooler reads the last layer only; use pooling cls or mean with head.layer")

    def keep_all_windows(self) -> bool:
        return self.granularity == "token" or self.options.long_document == "mean"

    def head_parameter_prefixes(self):
        # The encoder is the whole model; only the pooler can be missing from a checkpoint.
        return ("pooler.",) if self.options.pooling == "pooler" and self.granularity == "document" else ()

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
        pooling = self.options.pooling
        if pooling == "cls":
            vec = hidden[:, 0]
        elif pooling == "pooler":
            if getattr(out, "pooler_output", None) is None:
                raise RuntimeError("this model has no pooler")
            vec = out.pooler_output.float()
        else:  # mean over real tokens, special tokens included, as sentence-transformers does
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        v = vec.cpu().numpy()
        return {"vector": [v[i] for i in range(len(v))]}

    def output_schema(self, id_type):
        vector = pa.list_(pa.float32())
        if self.granularity == "token":
            return pa.schema(
                [("id", id_type), ("token_index", pa.int32()), ("token", pa.string()), ("start", pa.int32()),
                 ("end", pa.int32()), ("embedding", vector)]
            )
        return pa.schema([("id", id_type), ("embedding", vector)])

    def _normalize(self, v: np.ndarray) -> np.ndarray:
        if not self.options.normalize:
            return v
        norm = np.linalg.norm(v, axis=-1, keepdims=True)
        return v / np.maximum(norm, 1e-12)

    def postprocess(self, row):
        if self.granularity == "token":
            vectors = self._normalize(self.per_token(row, "tokens", self.hidden))
            n = len(vectors)
            token_strs = self.tokenizer.convert_ids_to_tokens(list(row["_tok_ids"][:n]))
            starts, ends = surface_offsets(row[C.TEXT], np.asarray(row["_starts"][:n]), np.asarray(row["_ends"][:n]))
            return [
                {"id": row[C.ID], "token_index": i, "token": token_strs[i], "start": int(starts[i]),
                 "end": int(ends[i]), "embedding": vectors[i]}
                for i in range(len(vectors))
            ]
        windows = [np.asarray(v, dtype=np.float32) for v in row[C.out("vector")]]
        if not windows:
            raise RowError("no window was computed")
        if len(windows) == 1:
            vec = windows[0]
        else:  # long_document: mean — windows weighted by the tokens they hold
            weights = np.array([len(ids) for ids in row[C.INPUT_IDS]], dtype=np.float64)
            vec = (np.stack(windows) * weights[:, None]).sum(0) / weights.sum()
        return [{"id": row[C.ID], "embedding": self._normalize(vec.astype(np.float32))}]
