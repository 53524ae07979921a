"""Token-budget micro-batches: sort windows by length, cut where padded size would pass the budget,
pad each micro-batch only to its own longest window. Pure NumPy."""

from __future__ import annotations

import numpy as np


def plan_micro_batches(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Indices into `lengths`, grouped so that len(group) * max(length in group) <= max_tokens.

    Longest first: the largest forward pass comes first, so an out-of-memory surfaces at once rather
    than after most of the batch has run. A window longer than the budget runs alone.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    groups: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = int(lengths[order[start]])
        # Sorted descending, so the first window of a group is its longest: the group may take
        # max_tokens // longest windows.
        size = max(1, max_tokens // max(longest, 1))
        groups.append(order[start : start + size])
        start += size
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
