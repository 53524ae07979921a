"""Token classification (NER, POS): per-token label probabilities, merged across windows, then
entities aggregated with transformers' TokenClassificationPipeline semantics."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from pipeline import columns as C
from pipeline.heads.base import WindowedTextHead

ENTITY = pa.struct(
    [("entity_group", pa.string()), ("score", pa.float32()), ("word", pa.string()), ("start", pa.int32()), ("end", pa.int32())]
)


class TokenClassification(WindowedTextHead):
    name = "token-classification"
    auto_class = "AutoModelForTokenClassification"
    granularities = ("document", "token")
    forward_outputs = {"probs": pa.float32()}

    def __init__(self, ctx):
        super().__init__(ctx)
        from pipeline.aggregation import subword_info

        self.id2label = {int(k): v for k, v in self.config.id2label.items()}
        self.num_labels = len(self.id2label)
        self.subword_prefix, self.unk_token_id = subword_info(self.tokenizer)
        self.granularity = ctx.spec.output.granularity

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

    def postprocess(self, row):
        from pipeline.aggregation import aggregate_entities
        from pipeline.windows import surface_offsets

        probs = self.per_token(row, "probs", self.num_labels)
        n = len(probs)
        token_ids = np.asarray(row["_tok_ids"][:n])
        starts = np.asarray(row["_starts"][:n])
        ends = np.asarray(row["_ends"][:n])
        token_strs = self.tokenizer.convert_ids_to_tokens(token_ids.tolist())
        if self.granularity == "token":
            starts, ends = surface_offsets(row[C.TEXT], starts, ends)
            best = probs.argmax(axis=1)
            return [
                {"id": row[C.ID], "token_index": i, "token": token_strs[i], "start": int(starts[i]), "end": int(ends[i]),
                 "label": self.id2label[int(best[i])], "score": float(probs[i, best[i]])}
                for i in range(n)
            ]
        entities = aggregate_entities(
            row[C.TEXT], token_strs, token_ids, starts, ends, probs, self.id2label,
            self.options.aggregation_strategy, list(self.options.ignore_labels), self.subword_prefix, self.unk_token_id,
        )
        return [{"id": row[C.ID], "entities": [
            {"entity_group": e["entity_group"], "score": float(e["score"]), "word": e["word"],
             "start": int(e["start"]), "end": int(e["end"])} for e in entities]}]
