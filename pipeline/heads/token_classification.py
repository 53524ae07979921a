"""Token classification (NER, POS): per-token label probabilities, merged across windows, then
entities aggregated with transformers' TokenClassificationPipeline semantics."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline import columns as C
from pipeline.heads.base import Produced, WindowedTextHead, column, list_array
from pipeline.windows import offsets_of

ENTITY = pa.struct(
    [("entity_group", pa.string()), ("score", pa.float32()), ("word", pa.string()), ("start", pa.int32()), ("end", pa.int32())]
)


class TokenClassification(WindowedTextHead):
    auto_class = "AutoModelForTokenClassification"
    forward_outputs = {"probs": pa.float32()}

    def __init__(self, ctx):
        super().__init__(ctx)
        from pipeline.aggregation import Aggregation, subword_info

        self.id2label = {int(k): v for k, v in self.config.id2label.items()}
        self.num_labels = len(self.id2label)
        self.aggregation = Aggregation(self.id2label, self.options.aggregation_strategy, self.options.ignore_labels,
                                       *subword_info(self.tokenizer))
        self.granularity = ctx.spec.output.granularity
        self.label_strings = pa.array([self.id2label[i] for i in range(self.num_labels)], pa.string())
        self._token_lengths: np.ndarray | None = None

    def forward(self, model, inputs, lengths):
        logits = self.run_model(model, inputs).logits.float()
        probs = torch.softmax(logits, dim=-1).cpu().numpy()
        return {"probs": [probs[i, : lengths[i]] for i in range(len(lengths))]}

    def output_schema(self, id_type):
        if self.granularity == "token":
            return pa.schema(
                [("id", id_type), ("token_index", pa.int32()), ("token", pa.string()), ("start", pa.int32()),
                 ("end", pa.int32()), ("label", pa.string()), ("score", pa.float32())]
            )
        return pa.schema([("id", id_type), ("entities", pa.list_(ENTITY))])

    def postprocess_table(self, batch):
        from pipeline.aggregation import TokenBatch, aggregate_batch
        from pipeline.windows import surface_offsets

        tokens = self.document_tokens(batch, "probs", self.num_labels)
        probs = tokens.values
        if self.granularity == "token":
            starts, ends = surface_offsets(tokens.starts, tokens.ends)
            best = probs.argmax(axis=1)
            return Produced(tokens.document, {
                "token_index": pa.array(tokens.index, pa.int32()), "token": self.token_strings(tokens.token_ids),
                "start": pa.array(starts, pa.int32()), "end": pa.array(ends, pa.int32()),
                "label": self.label_strings.take(pa.array(best)), "score": pa.array(probs[np.arange(len(best)), best]),
            })
        texts = column(batch, C.TEXT).to_pylist()
        batch_tokens = TokenBatch(texts, self.token_lengths()[tokens.token_ids], tokens.token_ids, tokens.starts,
                                  tokens.ends, tokens.doc_offsets)
        found = aggregate_batch(batch_tokens, probs, self.aggregation)
        entities = pa.StructArray.from_arrays(
            [pa.array(found.names, pa.string()).take(pa.array(found.name)), pa.array(found.score.astype(np.float32)),
             found.words(texts), pa.array(found.start, pa.int32()), pa.array(found.end, pa.int32())],
            fields=list(ENTITY),
        )
        per_doc = np.bincount(found.document, minlength=batch.num_rows)
        return Produced(np.arange(batch.num_rows, dtype=np.int64), {"entities": list_array(entities, offsets_of(per_doc))})

    def token_lengths(self) -> np.ndarray:
        """Length (code points) of every vocabulary token's string, for the sub-word rule."""
        if self._token_lengths is None:
            self._token_lengths = pc.fill_null(pc.utf8_length(self.vocabulary()), 0).to_numpy().astype(np.int64)
        return self._token_lengths
