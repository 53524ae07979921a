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

import itertools

import numpy as np
import pyarrow as pa

from pipeline import columns as C
from pipeline.heads.base import COMMON_ENCODE_FIELDS, Produced, WindowedTextHead, column, list_array, list_numpy, list_parts
from pipeline.windows import offsets_of, ordered_segment_sums, segment_ids

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
    auto_class = "AutoModelForSequenceClassification"
    forward_outputs = {"logits": pa.float32()}

    def __init__(self, ctx):
        super().__init__(ctx)
        self.num_labels = int(self.config.num_labels)
        id2label = {int(k): v for k, v in (getattr(self.config, "id2label", None) or {}).items()}
        self.label_strings = pa.array([str(id2label.get(i, f"LABEL_{i}")) for i in range(self.num_labels)], pa.string())
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

    def encode_table(self, batch):
        pairs = column(batch, C.TEXT_PAIR) if C.TEXT_PAIR in batch.schema.names else None
        # Single texts: the windows of WindowedTextHead (cut without offsets: encode_schema keeps none).
        if pairs is None or pairs.null_count == len(pairs):
            return super().encode_table(batch)
        paired = np.flatnonzero(pairs.is_valid().to_numpy(zero_copy_only=False))
        single = np.flatnonzero(pairs.is_null().to_numpy(zero_copy_only=False))
        single_columns, single_errors = super().encode_table(batch.take(single)) if len(single) else ({}, {})
        pair_columns = self._encode_pairs(column(batch, C.TEXT).take(paired).to_pylist(), pairs.take(paired).to_pylist())
        # Back to the batch's order: singles first, then pairs, taken by each row's place among them.
        place = np.empty(batch.num_rows, dtype=np.int64)
        place[single] = np.arange(len(single))
        place[paired] = len(single) + np.arange(len(paired))
        columns = {}
        for f in COMMON_ENCODE_FIELDS:
            parts = [single_columns[f.name].cast(f.type)] if len(single) else []
            columns[f.name] = pa.concat_arrays(parts + [pair_columns[f.name]]).take(pa.array(place))
        return columns, {int(single[i]): reason for i, reason in single_errors.items()}

    def _encode_pairs(self, texts: list[str], pairs: list[str]) -> dict[str, pa.Array]:
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
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        window_offsets = offsets_of(lengths)
        one_each = np.arange(len(ids) + 1, dtype=np.int64)
        chain = itertools.chain.from_iterable
        flat_ids = np.fromiter(chain(ids), dtype=np.int32, count=int(lengths.sum()))
        if types is not None:
            flat_types = np.fromiter(chain(types), dtype=np.int32, count=int(lengths.sum()))
            token_types = list_array(list_array(flat_types, window_offsets, pa.int32()), one_each)
        else:  # the model takes none: an empty list per row
            token_types = list_array(list_array(np.zeros(0, np.int32), np.zeros(1, np.int64), pa.int32()),
                                     np.zeros(len(ids) + 1, np.int64))
        truncated = np.zeros(len(ids), dtype=bool)
        truncated[too_long] = True
        return {C.INPUT_IDS: list_array(list_array(flat_ids, window_offsets, pa.int32()), one_each),
                C.TOKEN_TYPE_IDS: token_types, C.N_TOKENS: pa.array(lengths, pa.int64()), C.TRUNCATED: pa.array(truncated)}

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

    def document_logits(self, batch) -> tuple[np.ndarray, np.ndarray]:
        """Per document with windows, its combined logits [D', num_labels]; and which documents those are."""
        per_window, doc_windows = list_parts(column(batch, C.out("logits")))
        flat, _ = list_numpy(per_window)
        logits = flat.reshape(-1, self.num_labels).astype(np.float32, copy=False)
        n_windows = np.diff(doc_windows)
        has = np.flatnonzero(n_windows > 0)
        combined = logits[doc_windows[:-1][has]]  # the first window: truncate, or one window
        multi = n_windows > 1
        if self.long_document != "truncate" and multi.any():
            mine = multi[segment_ids(n_windows)]  # the windows of those documents, which lie together
            counts = n_windows[multi]
            if self.long_document == "max":
                combined[multi[has]] = np.maximum.reduceat(logits[mine], offsets_of(counts)[:-1], axis=0)
            else:  # "mean": every window counts once; float32 sums divided in float32, as ndarray.mean
                combined[multi[has]] = ordered_segment_sums(logits[mine], counts) / counts[:, None].astype(np.float32)
        return combined, has

    def postprocess_table(self, batch):
        logits, has = self.document_logits(batch)
        errors = {int(d): "no window was computed" for d in np.setdiff1d(np.arange(batch.num_rows), has)}
        scores = apply_function(logits, self.function)
        # Best first; ties keep label order (the pipeline's stable sort, reverse=True).
        order = np.argsort(-scores, axis=1, kind="stable")
        ranked = np.take_along_axis(scores, order, axis=1)
        n = len(scores)
        top = order[:, : self.top_k]
        columns = {
            "label": self.label_strings.take(pa.array(order[:, 0])),
            "score": pa.array(ranked[:, 0]),
            "scores": list_array(
                pa.StructArray.from_arrays([self.label_strings.take(pa.array(top.ravel())),
                                            pa.array(ranked[:, : self.top_k].ravel())], fields=list(LABEL_SCORE)),
                np.arange(n + 1, dtype=np.int64) * self.top_k),
        }
        if self.multi_label:
            above = ranked >= self.options.threshold
            columns["labels"] = list_array(self.label_strings.take(pa.array(order[above])), offsets_of(above.sum(axis=1)))
        return Produced(has.astype(np.int64), columns, errors)
