"""A SentencePiece-style Unigram vocabulary derived from a corpus by counting, for tiny XLM-R and
DeBERTa-v2 test tokenizers. Dependency-free, so both the test helpers (transformers 5) and
make_qa_golden.py (run in a transformers 4.57 venv) use it.

Counting rather than `tokenizers`' Unigram trainer: that trainer is not deterministic (two runs give
different vocabularies, even on one thread), and committed golden models must be rebuildable."""

from __future__ import annotations

import math
from collections import Counter


def unigram_vocab(texts: list[str], specials: list[str], skip: frozenset[str] = frozenset()) -> list[tuple[str, float]]:
    """[(piece, log-probability)]: `specials` first (score 0), then the pieces by frequency. Pieces are
    "▁"-marked words seen twice or more, the two halves of every word, and every character ("▁" on its
    own too, so words can split off their marker as real SentencePiece models do). A piece holding a
    character of `skip` is left out: that character becomes unknown."""
    words = Counter("▁" + w for text in texts for w in text.split())
    pieces: Counter[str] = Counter()
    for word, n in words.items():
        if n >= 2:
            pieces[word] += n
        half = max(2, len(word) // 2)
        pieces[word[:half]] += n
        pieces[word[half:]] += n
        for char in word:
            pieces[char] += n
    pieces = Counter({p: n for p, n in pieces.items() if p and p not in specials and not set(p) & skip})
    total = sum(pieces.values())
    ranked = sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(s, 0.0) for s in specials] + [(p, math.log(n / total)) for p, n in ranked]
