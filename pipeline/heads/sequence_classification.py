"""Sequence classification (sentiment, topics, NLI with text pairs): one label distribution per
document, with transformers' `TextClassificationPipeline` semantics for `function_to_apply` and
`top_k`.

The forward pass keeps only the per-window logits (num_labels floats); windows are combined and the
function applied on the CPU, so `long_document: mean / max` combine logits, not probabilities.
Text pairs (`input.text_pair_column`) are encoded as the tokenizer's pair (token_type_ids 1 for the
second segment where the model takes them) and truncated `longest_first` to one window, as the
pipeline does with `truncation=True`; a row whose pair is null is classified as a single text.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline import columns as C
from pipeline.heads.base import RowError, WindowedTextHead

LABEL_SCORE = pa.struct([("label", pa.string()), ("score", pa.float32())])

def resolve_function(option: str, config) -> str:
    """`function_to_apply` after `auto`, exactly as TextClassificationPipeline.postprocess decides it."""
    if option != "auto":
        return option
    problem_type = getattr(config, "problem_type", None)
    num_labels = int(config.num_labels)
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    if problem_type == "single_label_classification" or num_labels > 1:
        return "softmax"
    return "none"


def apply_function(logits: np.ndarray, function: str) -> np.ndarray:
    """The pipeline's own NumPy formulas, in float32."""
    x = np.asarray(logits, dtype=np.float32)
    if function == "sigmoid":
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    if function == "softmax":
        shifted = np.exp(x - np.max(x, axis=-1, keepdims=True))
        return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)
    if function == "none":
        return x
    raise ValueError(f"head.function_to_apply: unknown function {function!r}")


class SequenceClassification(WindowedTextHead):
    name = "sequence-classification"
    auto_class = "AutoModelForSequenceClassification"
    forward_outputs = {"logits": pa.float32()}

    def __init__(self, ctx):
        super().__init__(ctx)
        self.num_labels = int(self.config.num_labels)
        id2label = {int(k): v for k, v in (getattr(self.config, "id2label", None) or {}).items()}
        self.labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(self.num_labels)]
        self.function = resolve_function(self.options.function_to_apply, self.config)
        self.multi_label = self.function == "sigmoid"
        top_k = self.options.top_k
        self.top_k = self.num_labels if top_k is None else min(int(top_k), self.num_labels)
        self.long_document = self.options.long_document
        self.emits_token_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", [])

    def keep_all_windows(self) -> bool:
        return self.long_document != "truncate"

    # ---- tokenize --------------------------------------------------------------------------------
    def encode_schema(self):
        return []  # logits per window need no token offsets

    def encode_batch(self, rows):
        out: list[dict | RowError | None] = [None] * len(rows)
        single = [i for i, r in enumerate(rows) if r.get(C.TEXT_PAIR) is None]
        paired = [i for i, r in enumerate(rows) if r.get(C.TEXT_PAIR) is not None]
        if single:
            for i, res in zip(single, self._encode_single([rows[i][C.TEXT] for i in single])):
                out[i] = res
        if paired:
            results = self._encode_pairs([rows[i][C.TEXT] for i in paired], [rows[i][C.TEXT_PAIR] for i in paired])
            for i, res in zip(paired, results):
                out[i] = res
        return out

    def _encode_single(self, texts: list[str]) -> list[dict | RowError]:
        # The windows of WindowedTextHead; the offset columns it adds are not in encode_schema, so
        # the tokenize stage drops them.
        return super().encode_batch([{C.TEXT: t} for t in texts])

    def _encode_pairs(self, texts: list[str], pairs: list[str]) -> list[dict | RowError]:
        """One window per pair: the whole pair when it fits, else truncated longest_first (the longer
        segment loses tokens first), as the pipeline with truncation=True."""
        kwargs = dict(return_attention_mask=False, return_token_type_ids=self.emits_token_types)
        enc = self.tokenizer(texts, pairs, truncation=False, **kwargs)
        ids = list(enc["input_ids"])
        types = list(enc["token_type_ids"]) if self.emits_token_types else None
        too_long = [i for i, w in enumerate(ids) if len(w) > self.max_length]
        if too_long:
            cut = self.tokenizer([texts[i] for i in too_long], [pairs[i] for i in too_long], truncation="longest_first",
                                 max_length=self.max_length, **kwargs)
            for j, i in enumerate(too_long):
                ids[i] = cut["input_ids"][j]
                if types is not None:
                    types[i] = cut["token_type_ids"][j]
        results = []
        long_rows = set(too_long)
        for i, window in enumerate(ids):
            results.append({C.INPUT_IDS: [list(window)], C.TOKEN_TYPE_IDS: [list(types[i])] if types is not None else [],
                            C.N_TOKENS: len(window), C.TRUNCATED: i in long_rows})
        return results

    # ---- model -----------------------------------------------------------------------------------
    def forward(self, model, inputs, lengths):
        logits = self.run_model(model, inputs).logits.float().cpu().numpy()
        return {"logits": [logits[i] for i in range(len(logits))]}

    # ---- postprocess -----------------------------------------------------------------------------
    def output_schema(self, id_type):
        fields = [("id", id_type), ("label", pa.string()), ("score", pa.float32()), ("scores", pa.list_(LABEL_SCORE))]
        if self.multi_label:
            fields.append(("labels", pa.list_(pa.string())))
        return pa.schema(fields)

    def document_logits(self, row) -> np.ndarray:
        windows = [np.asarray(v, dtype=np.float32) for v in row[C.out("logits")]]
        if not windows:
            raise RowError("no window was computed")
        stacked = np.stack(windows).reshape(len(windows), self.num_labels)
        if len(windows) == 1 or self.long_document == "truncate":
            return stacked[0]
        if self.long_document == "max":
            return stacked.max(axis=0)
        return stacked.mean(axis=0)  # "mean": every window counts once

    def postprocess(self, row):
        scores = apply_function(self.document_logits(row), self.function)
        # Best first; ties keep label order (the pipeline's stable sort, reverse=True).
        order = sorted(range(self.num_labels), key=lambda i: float(scores[i]), reverse=True)
        best = order[0]
        out = {
            "id": row[C.ID],
            "label": self.labels[best],
            "score": float(scores[best]),
            "scores": [{"label": self.labels[i], "score": float(scores[i])} for i in order[: self.top_k]],
        }
        if self.multi_label:
            out["labels"] = [self.labels[i] for i in order if scores[i] >= self.options.threshold]
        return [out]
