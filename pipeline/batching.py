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


def pad_batch(sequences: list[np.ndarray], pad_value: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest sequence: (ids [b, L], attention mask [b, L])."""
    longest = max(len(s) for s in sequences)
    ids = np.full((len(sequences), longest), pad_value, dtype=np.int64)
    mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def padded_slots(groups: list[np.ndarray], lengths: np.ndarray) -> np.ndarray:
    """Pad positions computed for each window (its group's longest minus its own length)."""
    pads = np.zeros(len(lengths), dtype=np.int64)
    for g in groups:
        pads[g] = lengths[g].max() - lengths[g]
    return pads
