"""Fill-mask: the top-k candidates for every mask token of a text, with transformers'
`FillMaskPipeline` semantics (scores, `token_str`, `sequence`, `targets`).

Compact on the device: the vocabulary softmax is computed only at mask positions, and only the top-k
token ids and their probabilities per mask leave the model stage (never vocabulary-size logits). For
the usual architectures the language-model head itself runs only at the mask positions (see
`_MASK_ONLY_HEAD`): the encoder's last hidden states are gathered at the masks before the head.

Texts longer than the window are truncated to the first window (the pipeline with truncation=True);
a mask token beyond it makes the row an error rather than silently losing that mask.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import torch

from pipeline import columns as C
from pipeline.errors import ModelError, SpecError
from pipeline.heads.base import RowError, WindowedTextHead, list_array, list_numpy, list_parts
from pipeline.windows import offsets_of, ragged_arange, segment_ids, segment_sums

log = logging.getLogger(__name__)

PREDICTION = pa.struct(
    [("token_id", pa.int32()), ("token_str", pa.string()), ("score", pa.float32()), ("sequence", pa.string())]
)
MASK = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("predictions", pa.list_(PREDICTION))])

# Model types whose *ForMaskedLM forward is `base_model(...)[0]` -> LM head -> logits, position by
# position, so the head may run on the hidden states of the mask positions only (checked by
# tests/unit/test_fill_mask.py against the full forward). Others run the full head, then gather.
_MASK_ONLY_HEAD = frozenset(
    {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "mobilebert", "electra", "albert", "deberta",
     "deberta-v2", "mpnet"}
)


def target_ids(tokenizer, targets: list[str]) -> np.ndarray:
    """FillMaskPipeline.get_target_ids: a target that is not a vocabulary entry is tokenized and its
    first token used (with a warning, logged once here at start-up instead of per call); duplicates
    are dropped in the pipeline's own order (`list(set(ids))`), which decides ties between equal scores."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - as the pipeline
        vocab = {}
    ids = []
    for target in targets:
        id_ = vocab.get(target)
        if id_ is None:
            pieces = tokenizer(target, add_special_tokens=False, return_attention_mask=False,
                               return_token_type_ids=False, max_length=1, truncation=True)["input_ids"]
            if len(pieces) == 0:
                log.warning("head.targets: %r is not in the model vocabulary and has no tokens; ignoring it", target)
                continue
            id_ = pieces[0]
            log.warning("head.targets: %r is not in the model vocabulary; using its first token %r instead",
                        target, tokenizer.convert_ids_to_tokens(id_))
        ids.append(id_)
    ids = list(set(ids))
    if not ids:
        raise SpecError("head.targets: at least one target must map to a token of this tokenizer")
    return np.array(ids, dtype=np.int64)


class FillMask(WindowedTextHead):
    auto_class = "AutoModelForMaskedLM"
    forward_outputs = {"token_ids": pa.int32(), "scores": pa.float32()}

    def __init__(self, ctx):
        super().__init__(ctx)
        tok = self.tokenizer
        if tok.mask_token_id is None:
            raise ModelError(f"model.path: the tokenizer of {ctx.spec.model.path} defines no mask token; fill-mask needs one")
        self.mask_id = int(tok.mask_token_id)
        self.mask_token = str(tok.mask_token)
        self.pad_id = tok.pad_token_id
        self.targets = None if self.options.targets is None else target_ids(tok, list(self.options.targets))
        vocab = int(getattr(self.config, "vocab_size", 0) or len(tok))
        candidates = len(self.targets) if self.targets is not None else vocab
        self.top_k = min(int(self.options.top_k), candidates)
        self.mask_only_head = getattr(self.config, "model_type", None) in _MASK_ONLY_HEAD
        self._token_strs: dict[int, str] = {}
        self._target_tensors: dict[torch.device, torch.Tensor] = {}

    def keep_all_windows(self) -> bool:
        return False

    # ---- tokenize --------------------------------------------------------------------------------
    def encode_table(self, batch):
        columns, errors = super().encode_table(batch)
        tok_ids, tok_offsets = list_numpy(columns["_tok_ids"])
        doc_masks = segment_sums(tok_ids == self.mask_id, tok_offsets)
        first_windows, _ = list_parts(columns[C.INPUT_IDS])  # one window per document
        window_ids, window_offsets = list_numpy(first_windows)
        window_masks = segment_sums(window_ids == self.mask_id, window_offsets)
        for d in np.flatnonzero(window_masks < doc_masks).tolist():
            errors.setdefault(d, f"{doc_masks[d] - window_masks[d]} of the text's {doc_masks[d]} {self.mask_token} tokens "
                                 f"lie beyond the first {self.max_length} tokens (model.max_length); fill-mask reads only "
                                 "the first window")
        for d in np.flatnonzero(doc_masks == 0).tolist():
            errors.setdefault(d, f"text has no {self.mask_token} token (the mask token of this model)")
        # Only the first window's tokens are needed afterwards.
        lengths, _ = list_numpy(columns["_window_lengths"])
        at = tok_offsets[:-1][segment_ids(lengths)] + ragged_arange(lengths)
        for key in ("_tok_ids", "_starts", "_ends"):
            values, _ = list_numpy(columns[key])
            columns[key] = list_array(values[at], offsets_of(lengths), pa.int32())
        return columns, errors

    # ---- model -----------------------------------------------------------------------------------
    def forward(self, model, inputs, lengths):
        input_ids = inputs["input_ids"]
        is_mask = input_ids == self.mask_id
        counts = is_mask.sum(dim=1).tolist()
        if sum(counts) == 0:
            empty_i, empty_f = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
            return {"token_ids": [empty_i] * len(counts), "scores": [empty_f] * len(counts)}
        logits = self.mask_logits(model, inputs, is_mask)  # [n masks, vocab], masks in row-major order
        probs = torch.softmax(logits.float(), dim=-1)
        if self.targets is not None:
            targets = self._targets_on(probs.device)
            values, idx = probs[:, targets].topk(self.top_k, dim=-1)
            idx = targets[idx]
        else:
            values, idx = probs.topk(self.top_k, dim=-1)
        values = values.cpu().numpy().astype(np.float32)
        idx = idx.cpu().numpy().astype(np.int32)
        token_ids, scores, at = [], [], 0
        for n in counts:
            token_ids.append(idx[at : at + n].ravel())
            scores.append(values[at : at + n].ravel())
            at += n
        return {"token_ids": token_ids, "scores": scores}

    def mask_logits(self, model, inputs, is_mask: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits at the mask positions only, [n masks, vocab]. Where the architecture allows
        it, the encoder's output is gathered at the masks before the LM head, so the head (a
        hidden x vocab matmul per position) runs on the masks alone."""
        base = getattr(model, "base_model", model)
        if self.mask_only_head and base is not model:
            applied = []

            def gather_masks(module, args, output):
                hidden = output[0]
                gathered = hidden[is_mask].unsqueeze(0)  # [1, n masks, hidden]
                applied.append(True)
                if isinstance(output, tuple):
                    return (gathered,) + tuple(output[1:])
                output.last_hidden_state = gathered
                return output

            handle = base.register_forward_hook(gather_masks)
            try:
                logits = self.run_model(model, inputs).logits
            finally:
                handle.remove()
            n_masks = int(is_mask.sum())
            if applied and logits.dim() == 3 and logits.shape[0] == 1 and logits.shape[1] == n_masks:
                return logits[0]
            log.warning("fill-mask: %s does not apply its LM head to the encoder output as expected; running the "
                        "head over every position instead", type(model).__name__)
            self.mask_only_head = False
        return self.run_model(model, inputs).logits[is_mask]

    def _targets_on(self, device) -> torch.Tensor:
        t = self._target_tensors.get(device)
        if t is None:
            t = self._target_tensors[device] = torch.as_tensor(self.targets, dtype=torch.long, device=device)
        return t

    # ---- postprocess -----------------------------------------------------------------------------
    def output_schema(self, id_type):
        return pa.schema([("id", id_type), ("masks", pa.list_(MASK))])

    def token_str(self, token_id: int) -> str:
        s = self._token_strs.get(token_id)
        if s is None:
            s = self._token_strs[token_id] = self.tokenizer.decode([token_id])
        return s

    def postprocess(self, row):
        window = np.asarray(row[C.INPUT_IDS][0], dtype=np.int64)
        positions = np.flatnonzero(window == self.mask_id)
        n = len(positions)
        token_ids = np.asarray(row[C.out("token_ids")][0], dtype=np.int64)
        scores = np.asarray(row[C.out("scores")][0], dtype=np.float32)
        if n == 0 or len(token_ids) != n * self.top_k:
            raise RowError(f"fill-mask: expected {self.top_k} candidates for each of {n} masks, got {len(token_ids)}")
        token_ids = token_ids.reshape(n, self.top_k)
        scores = scores.reshape(n, self.top_k)
        doc_pos = positions - int(row["_window_prefix"][0])
        starts, ends = row["_starts"], row["_ends"]
        # As the pipeline: one mask -> the filled text without special tokens; several -> each
        # candidate filled into its own mask only, decoded with special tokens (the other masks show).
        single = n == 1
        masks = []
        for i, pos in enumerate(positions):
            predictions = []
            for token_id, score in zip(token_ids[i].tolist(), scores[i].tolist()):
                tokens = window.copy()
                tokens[pos] = token_id
                if self.pad_id is not None:
                    tokens = tokens[tokens != self.pad_id]
                sequence = self.tokenizer.decode(tokens.tolist(), skip_special_tokens=single)
                predictions.append({"token_id": token_id, "token_str": self.token_str(token_id), "score": score,
                                    "sequence": sequence})
            masks.append({"start": int(starts[doc_pos[i]]), "end": int(ends[doc_pos[i]]), "predictions": predictions})
        return [{"id": row[C.ID], "masks": masks}]

    # ---- loading ---------------------------------------------------------------------------------
    def head_parameter_prefixes(self):
        """Every parameter of the masked-LM model except those tied to another one: transformers 5 may
        list a tied decoder (tied to the input embeddings) as missing although the checkpoint is whole,
        while a checkpoint without the LM head (a bare encoder) misses the head's own transform/bias."""
        import transformers

        try:
            with torch.device("meta"):
                model = transformers.AutoModelForMaskedLM.from_config(
                    self.config, trust_remote_code=self.spec.model.trust_remote_code)
        except Exception:  # noqa: BLE001 - unknown architecture: every missing key counts
            return ("",)
        tied = getattr(model, "all_tied_weights_keys", None)  # transformers 5: the ties this config makes
        if tied is None:  # transformers 4: the ties the class may make, made when the embeddings are tied
            tie = getattr(self.config, "tie_word_embeddings", True)
            tied = (getattr(model, "_tied_weights_keys", None) or ()) if tie else ()
        tied = set(tied)
        return tuple(sorted(k for k in model.state_dict() if k not in tied))
