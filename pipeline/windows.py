"""Windows over long documents and the way back from windows to document tokens.

Windows are cut by the fast tokenizer itself (`return_overflowing_tokens` with `stride`), which is
what transformers' pipelines do, so a window here is token-for-token the window the pipeline runs.
Each window is [prefix specials] + a contiguous run of the document's tokens + [suffix specials];
consecutive runs share `stride` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class EncodedDoc:
    input_ids: list[list[int]]  # per window, special tokens included
    token_ids: np.ndarray  # int32 [n]: the document's tokens (no specials), in order
    starts: np.ndarray  # int32 [n]: character offset where each token starts (Python str index)
    ends: np.ndarray  # int32 [n]
    window_starts: np.ndarray  # int32 [w]: document token index of each window's first content token
    window_prefix: np.ndarray  # int32 [w]: special tokens before the content in each window
    window_lengths: np.ndarray  # int32 [w]: content tokens in each window


def encode_windows(tokenizer, texts: list[str], max_length: int, stride: int) -> list[EncodedDoc]:
    """Tokenize a batch of texts into windows of at most `max_length` tokens sharing `stride` tokens."""
    enc = tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    per_doc: list[list[int]] = [[] for _ in texts]
    for i, doc in enumerate(enc["overflow_to_sample_mapping"]):
        per_doc[doc].append(i)

    docs = []
    for window_indices in per_doc:
        input_ids, token_ids, starts, ends = [], [], [], []
        w_starts, w_prefix, w_lengths = [], [], []
        next_doc_token = 0
        for k, i in enumerate(window_indices):
            ids = enc["input_ids"][i]
            special = enc["special_tokens_mask"][i]
            offsets = enc["offset_mapping"][i]
            content = [p for p, s in enumerate(special) if not s]
            first = content[0] if content else len(ids)
            n_content = len(content)
            # Window k (k > 0) starts `stride` tokens before the end of the previous one.
            w_start = 0 if k == 0 else next_doc_token - min(stride, w_lengths[-1])
            w_starts.append(w_start)
            w_prefix.append(first)
            w_lengths.append(n_content)
            # Append only the tokens the previous windows have not covered.
            new_from = next_doc_token - w_start
            for p in content[new_from:]:
                token_ids.append(ids[p])
                starts.append(offsets[p][0])
                ends.append(offsets[p][1])
            next_doc_token = w_start + n_content
            input_ids.append(list(ids))
        docs.append(
            EncodedDoc(
                input_ids=input_ids,
                token_ids=np.asarray(token_ids, dtype=np.int32),
                starts=np.asarray(starts, dtype=np.int32),
                ends=np.asarray(ends, dtype=np.int32),
                window_starts=np.asarray(w_starts, dtype=np.int32),
                window_prefix=np.asarray(w_prefix, dtype=np.int32),
                window_lengths=np.asarray(w_lengths, dtype=np.int32),
            )
        )
    return docs


def best_window_per_token(window_starts: np.ndarray, window_lengths: np.ndarray, n_tokens: int):
    """For each document token, the window that sees it with the most context on both sides.

    A token in an overlap is taken from the window where it sits farther from the window's edge
    (distance to the nearer end of the window's content). Ties go to the earlier window.
    Returns (window index per token, position inside that window's content per token).
    """
    best_window = np.full(n_tokens, -1, dtype=np.int64)
    best_dist = np.full(n_tokens, -1, dtype=np.int64)
    for w, (s, n) in enumerate(zip(window_starts.tolist(), window_lengths.tolist())):
        pos = np.arange(n)
        dist = np.minimum(pos, n - 1 - pos)
        idx = s + pos
        better = dist > best_dist[idx]
        best_window[idx[better]] = w
        best_dist[idx[better]] = dist[better]
    if n_tokens and (best_window < 0).any():
        raise AssertionError("windows do not cover every token")
    position = np.arange(n_tokens) - window_starts[best_window] if n_tokens else np.zeros(0, dtype=np.int64)
    return best_window, position


def surface_offsets(text: str, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets for per-token rows, where every token must show a non-empty `text[start:end]`.

    Byte-level BPE tokenizers trim whitespace from offsets, so a token that *is* whitespace (RoBERTa's
    "Ġ" before a double space or at the end of a text) gets an empty span just after it. Such a token
    is given the character before that position: the whitespace it stands for. Entity aggregation keeps
    the tokenizer's own offsets (transformers' pipeline decides sub-words from them).
    """
    empty = starts == ends
    if not empty.any() or not text:
        return starts, ends
    starts, ends = starts.copy(), ends.copy()
    at_start = empty & (ends == 0)
    ends[at_start] = 1
    starts[empty & ~at_start] = ends[empty & ~at_start] - 1
    return starts, ends
