"""Windows over long documents and the way back from windows to document tokens, for a whole batch
at once: flat NumPy arrays plus offsets, never a Python object per token.

A window is [prefix specials] + a contiguous run of the document's tokens + [suffix specials];
consecutive runs share `stride` tokens. The runs are the ones the fast tokenizer itself cuts with
`return_overflowing_tokens` and `stride` (what transformers' pipelines run): tokenizers truncates an
encoding of n tokens to `max_length - specials` = m content tokens per window by starting a window
every m - stride tokens until one reaches the end (`Encoding::truncate`), then adds the post-processor's
special tokens to each. Here the document is tokenized once, without special tokens, and that cut is
made on the arrays (tests/unit/test_windows.py checks it against the tokenizer's own windows).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ModelError, SpecError


def segment_ids(counts: np.ndarray) -> np.ndarray:
    """For segments of the given lengths laid one after another, the segment of each element."""
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


def ragged_arange(counts: np.ndarray) -> np.ndarray:
    """0..count-1 for each segment, concatenated: an element's position inside its segment."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    starts = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) - np.repeat(starts, counts)


def offsets_of(counts: np.ndarray) -> np.ndarray:
    """[0, c0, c0+c1, ...]: where each segment starts, and the total last."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def segment_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of each segment (empty segments give 0, unlike np.add.reduceat)."""
    cs = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=cs[1:])
    return cs[offsets[1:]] - cs[offsets[:-1]]


def ordered_segment_sums(rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sum of each segment of `rows` (segments of `counts` >= 1 rows, one after another), rows added
    first to last, as `segment.sum(axis=0)` adds them: np.add.reduceat adds in another order and can
    differ in the last bit. One vectorised step per row of the longest segment."""
    starts = offsets_of(counts)[:-1]
    sums = rows[starts].copy()
    for j in range(1, int(counts.max(initial=1))):
        longer = np.flatnonzero(counts > j)
        sums[longer] += rows[starts[longer] + j]
    return sums


@dataclass
class Windows:
    """A batch of documents cut into windows. Documents and windows lie one after another."""

    token_ids: np.ndarray  # int32 [T]: every document's tokens (no specials)
    starts: np.ndarray | None  # int32 [T]: character offset where each token starts (Python str index)
    ends: np.ndarray | None  # int32 [T]; both None when cut without offsets
    doc_tokens: np.ndarray  # int64 [D+1]: offsets of each document's tokens
    window_starts: np.ndarray  # int32 [W]: index, in its document, of each window's first content token
    window_lengths: np.ndarray  # int32 [W]: content tokens in each window
    doc_windows: np.ndarray  # int64 [D+1]: offsets of each document's windows
    prefix: np.ndarray  # int32: special tokens before the content of every window
    suffix: np.ndarray  # int32: after it

    def window_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """Every window's input ids, specials included: (flat int32 values, int64 offsets [W+1])."""
        n_prefix, n_suffix = len(self.prefix), len(self.suffix)
        lengths = self.window_lengths.astype(np.int64) + n_prefix + n_suffix
        offsets = offsets_of(lengths)
        window = segment_ids(lengths)
        local = ragged_arange(lengths)
        content = local - n_prefix
        length = self.window_lengths.astype(np.int64)[window]
        doc_of_window = segment_ids(np.diff(self.doc_windows))
        first_token = self.doc_tokens[:-1][doc_of_window] + self.window_starts
        source = first_token[window] + content
        is_content = (content >= 0) & (content < length)
        values = np.empty(len(local), dtype=np.int32)
        values[is_content] = self.token_ids[source[is_content]]
        if n_prefix:
            at = content < 0
            values[at] = self.prefix[local[at]]
        if n_suffix:
            at = content >= length
            values[at] = self.suffix[(content - length)[at]]
        return values, offsets


class WindowCutter:
    """Cuts batches of texts into windows with one tokenizer; built once per stage.

    Tokenizes with a copy of the fast tokenizer's backend (`tokenizers.Tokenizer`): transformers
    leaves the padding and truncation of its last call set on the backend, and the copy must run
    without either, as the whole document."""

    def __init__(self, tokenizer, max_length: int, stride: int, offsets: bool = True):
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.backend.no_padding()
        self.backend.no_truncation()
        # transformers' call sets this flag on the backend from the tokenizer before encoding.
        self.backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
        self.max_length = max_length
        self.stride = stride
        # Without offsets the tokenizer skips their bookkeeping (`encode_batch_fast`): ~20% less time.
        self.offsets = offsets
        self.prefix, self.suffix = self._specials()
        self.content_length = max_length - len(self.prefix) - len(self.suffix)

    def _specials(self) -> tuple[np.ndarray, np.ndarray]:
        """The special tokens the post-processor puts around a single sequence's content."""
        probe = self.backend.encode("a", add_special_tokens=False)
        processed = self.backend.post_process(probe, None, True)
        mask = np.asarray(processed.special_tokens_mask, dtype=bool)
        ids = np.asarray(processed.ids, dtype=np.int32)
        content = np.flatnonzero(~mask)
        if len(content) != len(probe.ids):
            raise ModelError("model.path: the tokenizer's post-processor changes a text's own tokens; windows cannot "
                             "be cut here")
        return ids[: content[0]], ids[content[-1] + 1 :]

    def __call__(self, texts: list[str]) -> Windows:
        encode = self.backend.encode_batch if self.offsets else self.backend.encode_batch_fast
        encodings = encode(texts, add_special_tokens=False)
        counts = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
        total = int(counts.sum())
        chain = itertools.chain.from_iterable
        token_ids = np.fromiter(chain(e.ids for e in encodings), dtype=np.int32, count=total)
        offsets = None
        if self.offsets:
            offsets = np.fromiter(chain(chain(e.offsets for e in encodings)), dtype=np.int32, count=2 * total)
        m, stride = self.content_length, self.stride
        long = counts > m
        if long.any() and stride >= m:
            raise SpecError(f"model.stride ({stride}) must be smaller than the {m} content tokens of a window "
                             f"(model.max_length {self.max_length} less the special tokens)")
        step = max(m - stride, 1)
        # Windows of a document: 1, or one every `step` tokens until one reaches the end.
        n_windows = np.where(long, 1 + -(-(counts - m) // step), 1)
        k = ragged_arange(n_windows)
        window_starts = k * step
        doc_of_window = segment_ids(n_windows)
        window_lengths = np.minimum(m, counts[doc_of_window] - window_starts)
        return Windows(
            token_ids=token_ids,
            starts=None if offsets is None else offsets[0::2].copy(),
            ends=None if offsets is None else offsets[1::2].copy(),
            doc_tokens=offsets_of(counts),
            window_starts=window_starts.astype(np.int32),
            window_lengths=window_lengths.astype(np.int32),
            doc_windows=offsets_of(n_windows),
            prefix=self.prefix,
            suffix=self.suffix,
        )


@dataclass
class EncodedDoc:
    """One document of a `Windows` batch, as lists and arrays of its own."""

    input_ids: list[list[int]]  # per window, special tokens included
    token_ids: np.ndarray  # int32 [n]: the document's tokens (no specials), in order
    starts: np.ndarray  # int32 [n]: character offset where each token starts (Python str index)
    ends: np.ndarray  # int32 [n]
    window_starts: np.ndarray  # int32 [w]: document token index of each window's first content token
    window_prefix: np.ndarray  # int32 [w]: special tokens before the content in each window
    window_lengths: np.ndarray  # int32 [w]: content tokens in each window


def encode_windows(tokenizer, texts: list[str], max_length: int, stride: int) -> list[EncodedDoc]:
    """Tokenize texts into windows of at most `max_length` tokens sharing `stride` tokens, one
    `EncodedDoc` per text (for tools that look at single documents' windows)."""
    windows = WindowCutter(tokenizer, max_length, stride)(texts)
    values, offsets = windows.window_tokens()
    docs = []
    for d in range(len(texts)):
        t0, t1 = windows.doc_tokens[d], windows.doc_tokens[d + 1]
        w0, w1 = windows.doc_windows[d], windows.doc_windows[d + 1]
        docs.append(EncodedDoc(
            input_ids=[values[offsets[w] : offsets[w + 1]].tolist() for w in range(w0, w1)],
            token_ids=windows.token_ids[t0:t1], starts=windows.starts[t0:t1], ends=windows.ends[t0:t1],
            window_starts=windows.window_starts[w0:w1],
            window_prefix=np.full(w1 - w0, len(windows.prefix), dtype=np.int32),
            window_lengths=windows.window_lengths[w0:w1],
        ))
    return docs


def best_window_positions(window_starts: np.ndarray, window_lengths: np.ndarray, doc_windows: np.ndarray):
    """For each document token the windows cover (documents one after another), the window that sees
    it with the most context on both sides.

    A token in an overlap is taken from the window where it sits farther from the window's edge
    (distance to the nearer end of the window's content). Ties go to the earlier window.
    Returns (window index in the batch per token, position inside that window's content per token,
    int64 [D+1] offsets of each document's covered tokens).
    """
    starts = np.asarray(window_starts, dtype=np.int64)
    lengths = np.asarray(window_lengths, dtype=np.int64)
    doc_windows = np.asarray(doc_windows, dtype=np.int64)
    has_windows = np.diff(doc_windows) > 0
    last = doc_windows[1:][has_windows] - 1
    covered = np.zeros(len(doc_windows) - 1, dtype=np.int64)
    covered[has_windows] = starts[last] + lengths[last]
    doc_offsets = offsets_of(covered)
    window = segment_ids(lengths)
    position = ragged_arange(lengths)
    doc_of_window = segment_ids(np.diff(doc_windows))
    token = doc_offsets[:-1][doc_of_window][window] + starts[window] + position
    if len(token) == doc_offsets[-1]:  # no overlap: every token is in exactly one window, in order
        return window, position, doc_offsets
    # A stable sort by token keeps, among a token's candidates, the window order; the runs of each
    # window are already sorted, which a stable sort merges in near-linear time.
    order = np.argsort(token, kind="stable")
    token, window, position = token[order], window[order], position[order]
    dist = np.minimum(position, lengths[window] - 1 - position)
    group = np.flatnonzero(np.r_[True, token[1:] != token[:-1]])
    if len(group) != doc_offsets[-1]:
        raise AssertionError("windows do not cover every token")
    best_dist = np.maximum.reduceat(dist, group)
    group_of = segment_ids(np.diff(np.append(group, len(token))))
    # The first candidate (earliest window) reaching the token's best distance.
    candidate = np.where(dist == best_dist[group_of], np.arange(len(token)), len(token))
    pick = np.minimum.reduceat(candidate, group)
    return window[pick], position[pick], doc_offsets


def surface_offsets(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets for per-token rows, where every token must show a non-empty `text[start:end]`.

    Byte-level BPE tokenizers trim whitespace from offsets, so a token that *is* whitespace (RoBERTa's
    "Ġ" before a double space or at the end of a text) gets an empty span just after it. Such a token
    is given the character before that position: the whitespace it stands for. Entity aggregation keeps
    the tokenizer's own offsets (transformers' pipeline decides sub-words from them). Offsets are into
    each token's own text; a text with tokens is never empty.
    """
    empty = starts == ends
    if not empty.any():
        return starts, ends
    starts, ends = starts.copy(), ends.copy()
    at_start = empty & (ends == 0)
    ends[at_start] = 1
    starts[empty & ~at_start] = ends[empty & ~at_start] - 1
    return starts, ends
