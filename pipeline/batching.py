"""Token-budget micro-batches: sort windows by length, cut where padded size would pass the budget,
pad each micro-batch only to its own longest window. Pure NumPy."""

from __future__ import annotations

import numpy as np


def plan_micro_batches(lengths: np.ndarray, max_tokens: int, max_padding: float = 0.1) -> list[np.ndarray]:
    """Indices into `lengths`, grouped so that len(group) * max(length in group) <= max_tokens.

    Longest first: the largest forward pass comes first, so an out-of-memory surfaces at once rather
    than after most of the batch has run. A window longer than the budget runs alone. A group is also
    closed early when the next window would push its pad slots above `max_padding` of its real tokens
    -- but only once the group holds a sixteenth of the budget, so short windows still form batches
    large enough to keep the device busy.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    min_real = max_tokens // 16
    groups: list[np.ndarray] = []
    start, n = 0, len(order)
    while start < n:
        # Sorted descending: the group's first window is its longest.
        longest = int(lengths[order[start]])
        capacity = max(1, max_tokens // max(longest, 1))
        end, real = start + 1, longest
        while end < n and end - start < capacity:
            length = int(lengths[order[end]])
            padded = longest * (end - start + 1)
            if real >= min_real and padded - (real + length) > max_padding * (real + length):
                break
            real += length
            end += 1
        groups.append(order[start:end])
        start = end
    return groups


def plan_by_segment(lengths: np.ndarray, segments: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """`plan_micro_batches` over each segment's windows on its own (`segments`: one id per window), so
    no micro-batch mixes two segments. The job's segments are input shards: a shard's results then do
    not depend on which other shards share its batch, and a resumed run, whose batches hold other
    neighbours, computes each document exactly as the full run did."""
    segments = np.asarray(segments)
    if segments.size == 0 or (segments == segments[0]).all():
        return plan_micro_batches(lengths, max_tokens)
    lengths = np.asarray(lengths)
    groups = []
    for segment in dict.fromkeys(segments.tolist()):  # in order of first appearance
        mine = np.flatnonzero(segments == segment)
        groups += [mine[g] for g in plan_micro_batches(lengths[mine], max_tokens)]
    return groups


def pad_batch(sequences: list[np.ndarray], pad_value: int, ids_out: np.ndarray | None = None,
              mask_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest sequence: (ids [b, L], attention mask [b, L]).

    With `ids_out` / `mask_out` (flat int64 buffers of at least b * L values) the result is written
    into their first b * L values and returned as [b, L] views of them: the model stage reuses
    the same (on CUDA page-locked) host buffers for every micro-batch instead of allocating new ones.
    """
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    shape = (len(sequences), int(lengths.max()))
    ids = _array(ids_out, shape)
    mask = _array(mask_out, shape)
    real = np.arange(shape[1]) < lengths[:, None]
    ids.fill(pad_value)
    # A boolean mask assigns in row-major order: each row's real positions take its own tokens.
    ids[real] = np.concatenate(sequences)
    np.copyto(mask, real, casting="unsafe")
    return ids, mask


def _array(out: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    size = shape[0] * shape[1]
    if out is None:
        return np.empty(shape, dtype=np.int64)
    if out.size < size:
        raise ValueError(f"buffer of {out.size} values cannot hold a {shape[0]} x {shape[1]} micro-batch")
    return out[:size].reshape(shape)


def padded_slots(groups: list[np.ndarray], lengths: np.ndarray) -> np.ndarray:
    """Pad positions computed for each window (its group's longest minus its own length)."""
    pads = np.zeros(len(lengths), dtype=np.int64)
    for g in groups:
        pads[g] = lengths[g].max() - lengths[g]
    return pads
