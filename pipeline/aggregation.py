"""Token probabilities of one document -> entities, exactly as transformers' token-classification pipeline.

The job cannot call `TokenClassificationPipeline` itself: it runs documents as windows, merges the
windows back into one sequence of document tokens, and then needs the pipeline's post-processing on
that merged sequence. This module re-implements that post-processing (`gather_pre_entities`,
`aggregate`, `aggregate_words`/`aggregate_word`, `group_entities`/`group_sub_entities`/`get_tag`,
then the `ignore_labels` filter) for one document whose tokens carry no special tokens and no
window overlap, so results match what users get from `pipeline("token-classification", ...)` on
texts short enough for one window.

Two deliberate differences from the pipeline's output:

* `word` is the original surface `text[start:end]` rather than the tokenizer's decoded string
  (decoding lower-cases, strips accents and turns [UNK] into a literal "[UNK]", so it is a poor
  thing to store), and
* strategy "none" reports the token's label under `entity_group` (the pipeline calls it `entity`
  and adds `index`), so every strategy yields rows of one shape.

`aggregate_batch` works on a whole batch of documents at once (tokens of all documents one after
another, words and groups never crossing a document's start); `aggregate_entities` is one document.
The per-token, per-word and per-entity steps are NumPy array operations over the batch; the one
Python-level loop is, for "average", one vectorised step per token of the batch's longest word.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.windows import offsets_of, ragged_arange, segment_ids, segment_sums

STRATEGIES = ("none", "simple", "first", "average", "max")


def subword_info(tokenizer) -> tuple[str | None, int | None]:
    """What `Aggregation` needs from the tokenizer, read the way the pipeline reads it.

    The pipeline trusts `len(token) != len(surface)` to spot continuation pieces only when the
    backing `tokenizers` model has a truthy `continuing_subword_prefix` (WordPiece "##", some BPEs);
    otherwise it falls back to a whitespace heuristic. An empty prefix counts as none, as there.
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    prefix = getattr(backend.model, "continuing_subword_prefix", None) if backend else None
    return (prefix or None), getattr(tokenizer, "unk_token_id", None)


@dataclass(frozen=True)
class Aggregation:
    """The pipeline's post-processing settings: the head's labels and options, and what
    `subword_info` read from its tokenizer."""

    id2label: dict[int, str]
    strategy: str
    ignore_labels: tuple[str, ...]
    continuing_subword_prefix: str | None = None
    unk_token_id: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "strategy", self.strategy.lower())
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown aggregation strategy {self.strategy!r}; expected one of {STRATEGIES}")
        object.__setattr__(self, "ignore_labels", tuple(self.ignore_labels))


@dataclass
class TokenBatch:
    """The documents' tokens in order without special tokens, documents one after another:
    `doc_offsets` [D+1] says where each starts; `lengths` are the lengths of the tokens' strings
    (`convert_ids_to_tokens`), `starts`/`ends` character offsets into their document's text."""

    texts: list[str]
    lengths: np.ndarray
    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    doc_offsets: np.ndarray

    def __post_init__(self):
        self.lengths, self.ids = np.asarray(self.lengths), np.asarray(self.ids)
        self.starts = np.asarray(self.starts, dtype=np.int64)
        self.ends = np.asarray(self.ends, dtype=np.int64)
        self.doc_offsets = np.asarray(self.doc_offsets, dtype=np.int64)


def _is_subword(tokens: TokenBatch, document: np.ndarray, how: Aggregation) -> np.ndarray:
    """Which tokens continue the previous token's word (mirrors `gather_pre_entities`).

    Word-aware tokenizers: a token is a continuation when its string length (`tokens.lengths`) differs
    from its surface length (the prefix makes "##ing" longer than "ing"). This also fires whenever
    normalisation changes the length (e.g. a decomposed accent that the uncased tokenizer strips),
    which the pipeline does too, so it is kept.
    Otherwise: a token is a continuation unless it starts the text or touches a plain space
    (" " only: tabs and newlines do not count) on either side of its start, i.e. the pipeline's
    `start > 0 and " " not in text[start - 1 : start + 1]`.
    [UNK] tokens never continue a word, whichever rule applies.
    """
    texts, starts = tokens.texts, tokens.starts
    if how.continuing_subword_prefix:
        sub = tokens.lengths != (tokens.ends - starts)
    else:
        # Code points of all texts, one after another, indexed like Python str positions;
        # surrogatepass keeps lone surrogates 1:1.
        text_lens = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        base = offsets_of(text_lens)[document]
        is_space = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32) == 32
        sub = starts > 0
        prev = np.where(sub, base + starts - 1, 0)
        sub &= ~is_space[prev]
        inside = starts < text_lens[document]
        here = np.where(inside, base + starts, 0)
        sub &= ~(is_space[here] & inside)
    if how.unk_token_id is not None:
        sub &= tokens.ids != how.unk_token_id
    return sub


def _aggregate_words(
    probs: np.ndarray, word_starts: np.ndarray, strategy: str
) -> tuple[np.ndarray, np.ndarray]:
    """One (label id, score) per word, with the pipeline's `aggregate_word` arithmetic.

    Ties resolve to the first candidate as in the pipeline (`argmax`, Python `max`). "average"
    reproduces `np.nanmean` bit for bit on NaN-free input (rows added one after another in the
    input dtype, then a float64 division by the count rounded back), so an averaged argmax cannot
    flip on a last-bit tie. The sum runs one vectorised step per token position of the longest word
    (np.add.reduceat would be one call, but it does not add in order and can differ in the last bit).
    """
    n = probs.shape[0]
    if strategy == "first":
        rows = probs[word_starts]
    elif strategy == "max":
        token_max = probs.max(axis=1)
        word_max = np.maximum.reduceat(token_max, word_starts)
        word_of_token = np.repeat(np.arange(word_starts.shape[0]), np.diff(word_starts, append=n))
        # First token of each word reaching the word's maximum.
        candidates = np.where(token_max == word_max[word_of_token], np.arange(n), n)
        rows = probs[np.minimum.reduceat(candidates, word_starts)]
    else:  # average
        if np.isnan(probs).any():
            # Rare (broken logits); keep nanmean's exact NaN semantics rather than approximate them.
            bounds = np.append(word_starts, n)
            rows = np.stack([np.nanmean(probs[a:b], axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
        else:
            # Step j adds the j-th token of every word longer than j (see docstring for why).
            counts = np.diff(word_starts, append=n)
            sums = probs[word_starts]  # fancy indexing: a copy
            longest_first = np.argsort(-counts, kind="stable")
            # n_longer[j - 1]: how many words have more than j tokens (a prefix of longest_first).
            n_longer = np.searchsorted(-counts[longest_first], -np.arange(1, counts.max()), side="left")
            for j, k in enumerate(n_longer.tolist(), start=1):
                words = longest_first[:k]
                sums[words] += probs[word_starts[words] + j]
            rows = (sums / counts[:, None]).astype(probs.dtype, copy=False)
    label_ids = rows.argmax(axis=1)
    return label_ids, rows[np.arange(rows.shape[0]), label_ids]


@dataclass
class Entities:
    """The entities of a batch of documents, in document order, then text order."""

    document: np.ndarray  # int64 [E]: the document of each entity
    name: np.ndarray  # int64 [E]: index into `names`
    names: list[str]  # entity_group strings
    score: np.ndarray  # [E]
    start: np.ndarray  # int64 [E]: character offsets into the document's text
    end: np.ndarray  # int64 [E]

    def words(self, texts: list[str]) -> pa.Array:
        """The surface `text[start:end]` of each entity, as an Arrow string array: cut from the
        code points of all texts at once, then encoded to UTF-8 in one call."""
        counts = self.end - self.start
        base = offsets_of(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)))
        code_points = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        chars = code_points[np.repeat(base[self.document] + self.start, counts) + ragged_arange(counts)]
        utf8 = chars.tobytes().decode("utf-32-le", "surrogatepass").encode("utf-8", "surrogatepass")
        byte_lengths = 1 + (chars >= 0x80).astype(np.int64) + (chars >= 0x800) + (chars >= 0x10000)
        offsets = offsets_of(segment_sums(byte_lengths, offsets_of(counts)))
        return pa.StringArray.from_buffers(len(counts), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(utf8))


def aggregate_batch(tokens: TokenBatch, probs: np.ndarray, how: Aggregation) -> Entities:
    """Entities of a batch of documents, each identical to `TokenClassificationPipeline` with `strategy`
    on that document.

    `probs` are the tokens' softmax probabilities, one row per token of `tokens`.

    Pipeline behaviours kept on purpose because users compare against it:

    * grouping happens before `ignore_labels` filtering, so ignored tokens (usually "O") still
      split groups, and consecutive "O" words form one "O" group when "O" is not ignored;
    * a group continues while the tag (label without a "B-"/"I-" prefix) is unchanged and the
      next unit is not "B-"; labels without a prefix behave as "I-"; the group is named by its first
      label with everything up to the first "-" dropped;
    * for grouped strategies only the group name is checked against `ignore_labels` (so "B-PER"
      there ignores nothing), for "none" only the full token label is checked;
    * the group score is the plain mean of its units' scores.
    """
    strategy, id2label = how.strategy, how.id2label
    probs = np.asarray(probs)
    doc_offsets = tokens.doc_offsets
    n = int(doc_offsets[-1])
    # Configs loaded from JSON by hand can carry string keys; transformers converts them to int.
    labels = [id2label[i] if i in id2label else id2label[str(i)] for i in range(probs.shape[1])]
    # The pipeline's filter also tests a missing key (None) against ignore_labels.
    if n == 0 or None in how.ignore_labels:
        empty = np.zeros(0, dtype=np.int64)
        return Entities(empty, empty, labels, np.zeros(0, dtype=np.float64), empty, empty)

    document = segment_ids(np.diff(doc_offsets))
    starts, ends = tokens.starts, tokens.ends
    ignored = set(how.ignore_labels)

    if strategy in ("none", "simple"):
        unit_labels = probs.argmax(axis=1)
        unit_scores = probs[np.arange(n), unit_labels]
        unit_starts, unit_ends, unit_docs = starts, ends, document
    else:
        sub = _is_subword(tokens, document, how)
        sub[doc_offsets[:-1][np.diff(doc_offsets) > 0]] = False  # a document's first token always opens a word
        word_starts = np.flatnonzero(~sub)
        unit_labels, unit_scores = _aggregate_words(probs, word_starts, strategy)
        unit_starts = starts[word_starts]
        unit_ends = ends[np.append(word_starts[1:], n) - 1]
        unit_docs = document[word_starts]

    if strategy == "none":
        keep = ~np.array([lab in ignored for lab in labels])[unit_labels]
        return Entities(unit_docs[keep], unit_labels[keep], labels, unit_scores[keep], starts[keep], ends[keep])

    # group_entities: per-label tables, then a boundary mask over units.
    is_b = np.array([lab.startswith("B-") for lab in labels])
    tag_names = [lab[2:] if lab.startswith(("B-", "I-")) else lab for lab in labels]
    tag_codes = {t: k for k, t in enumerate(dict.fromkeys(tag_names))}
    tag_of = np.array([tag_codes[t] for t in tag_names])
    group_names = list(dict.fromkeys(lab.split("-", 1)[-1] for lab in labels))
    name_of = np.array([group_names.index(lab.split("-", 1)[-1]) for lab in labels])
    name_ignored = np.array([name in ignored for name in group_names])

    unit_tags = tag_of[unit_labels]
    opens = np.empty(unit_labels.shape[0], dtype=bool)
    opens[0] = True
    opens[1:] = (unit_tags[1:] != unit_tags[:-1]) | is_b[unit_labels[1:]] | (unit_docs[1:] != unit_docs[:-1])
    group_starts = np.flatnonzero(opens)
    group_ends = np.append(group_starts[1:], unit_labels.shape[0]) - 1
    counts = group_ends - group_starts + 1
    group_scores = np.add.reduceat(unit_scores.astype(np.float64), group_starts) / counts
    group_name = name_of[unit_labels[group_starts]]
    keep = ~name_ignored[group_name]
    return Entities(unit_docs[group_starts][keep], group_name[keep], group_names, group_scores[keep],
                    unit_starts[group_starts][keep], unit_ends[group_ends][keep])


def aggregate_entities(text: str, token_strs: list[str], token_ids: np.ndarray, spans: tuple[np.ndarray, np.ndarray],
                       probs: np.ndarray, how: Aggregation) -> list[dict]:
    """`aggregate_batch` for one document, as the pipeline's dicts (entity_group, score, word, start,
    end); `token_strs` are its tokens' strings, `spans` their (starts, ends)."""
    token_lens = np.fromiter(map(len, token_strs), dtype=np.int64, count=len(token_strs))
    found = aggregate_batch(TokenBatch([text], token_lens, token_ids, *spans, np.array([0, len(token_strs)])), probs, how)
    return [{"entity_group": found.names[k], "score": score, "word": word, "start": a, "end": b}
            for k, score, word, a, b in zip(found.name.tolist(), found.score.tolist(), found.words([text]).to_pylist(),
                                            found.start.tolist(), found.end.tolist())]
