"""Extractive question answering with the semantics of transformers 4.57's `QuestionAnsweringPipeline`
(the last release that has it; transformers 5 removed it).

Encode (CPU): the question and the context go to the fast tokenizer as one pair, the context cut into
windows of `max_length` tokens sharing `head.doc_stride` tokens (`truncation="only_second"`; a
tokenizer that pads on the left gets the context first and `only_first`, as the pipeline does). Per
window we keep what span decoding needs: the token offsets, word ids and sequence ids of the
`tokenizers.Encoding`, and the pipeline's p_mask (question and special tokens cannot be answers; every
[CLS] stays, for the null answer). The question is never truncated: with a fast tokenizer the
pipeline ignores `max_question_len`, so a question that leaves no room for context is an error row.

Forward (device): the start and end logits of each window, float32, trimmed to the window (a
MobileBERT-style trigram embedding gets its padded positions zeroed, so that padding cannot reach the
window's last token: the pipeline runs windows unpadded).

Postprocess (CPU): the pipeline's `select_starts_ends` / `decode_spans` per window (softmax over the
window's unmasked tokens, score = P(start) x P(end), `max_answer_len`, `top_k * 2 + 10` candidates as
align_to_words asks), each span widened to whole words (`token_to_word` / `word_to_chars` of the
window's encoding, replayed from the stored word ids), answers with the same text (case-insensitive)
merged by adding their scores, the null answer (the smallest P(start=[CLS]) x P(end=[CLS]) over the
windows) added with `handle_impossible_answer`, then sorted by score and cut to `top_k`.

The span decoding below is a port of transformers 4.57 `pipelines/question_answering.py`
(Apache License 2.0, Copyright The HuggingFace Team), kept operation for operation, quirks included,
so that ties and near-ties resolve the same way.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline import columns as C
from pipeline.errors import SpecError
from pipeline.heads.base import Head, RowError, model_max_length

ANSWER = pa.struct([("answer", pa.string()), ("score", pa.float32()), ("start", pa.int32()), ("end", pa.int32())])

_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)


class QuestionAnswering(Head):
    auto_class = "AutoModelForQuestionAnswering"
    forward_outputs = {"start": pa.float32(), "end": pa.float32()}

    def __init__(self, ctx):
        super().__init__(ctx)
        self.max_length = model_max_length(ctx.spec, ctx.tokenizer, ctx.config)
        self.doc_stride = self.options.doc_stride
        self.top_k = self.options.top_k
        self.handle_impossible_answer = self.options.handle_impossible_answer
        if self.doc_stride >= self.max_length - self.options.max_question_len - 3:
            # The spec checks this against model.max_length; the model or tokenizer may cap it lower.
            raise SpecError(
                f"head.doc_stride: {self.doc_stride} leaves no room for new context in windows of {self.max_length} "
                f"tokens (model.max_length capped by the model) with head.max_question_len "
                f"{self.options.max_question_len}; lower head.doc_stride"
            )
        tok = self.tokenizer
        # The pipeline's choice: question first unless the tokenizer pads on the left.
        self.question_first = getattr(tok, "padding_side", "right") == "right"
        self.context_sequence = 1 if self.question_first else 0
        self.cls_token_id = tok.cls_token_id
        self.pad_token_id = tok.pad_token_id
        self.uses_token_types = "token_type_ids" in getattr(tok, "model_input_names", [])

    # ---- CPU: tokenize stage -------------------------------------------------------------------
    def encode_schema(self):
        nested32 = pa.list_(pa.list_(pa.int32()))
        nested8 = pa.list_(pa.list_(pa.int8()))
        return [
            pa.field("_tok_starts", nested32),  # per window, per token: character offsets (into its own text)
            pa.field("_tok_ends", nested32),
            pa.field("_word_ids", nested32),  # word index inside its sequence; -1 for special tokens
            pa.field("_seq_ids", nested8),  # 0 first text, 1 second text, -1 special tokens
            pa.field("_p_mask", nested8),  # 1: cannot be part of an answer
        ]

    def _tokenize(self, questions: list[str], contexts: list[str]):
        return self.tokenizer(
            text=questions if self.question_first else contexts,
            text_pair=contexts if self.question_first else questions,
            truncation="only_second" if self.question_first else "only_first",
            max_length=self.max_length,
            stride=self.doc_stride,
            return_overflowing_tokens=True,
            return_token_type_ids=True,
            return_attention_mask=False,
            padding=False,
        )

    def _no_room(self, questions: list[str], contexts: list[str]) -> list[RowError | None]:
        """Rows the tokenizer would refuse, told apart before it runs (it fails the whole batch, and
        for a stride that does not fit it panics): with `room` tokens left for the context in a
        window, a context that does not fit whole needs room > 0 and room > doc_stride."""
        n_special = self.tokenizer.num_special_tokens_to_add(pair=True)
        q_lens = [len(ids) for ids in self.tokenizer(questions, add_special_tokens=False, verbose=False)["input_ids"]]
        out: list[RowError | None] = [None] * len(questions)
        for i, n_question in enumerate(q_lens):
            room = self.max_length - n_question - n_special
            if room > self.doc_stride:
                continue
            n_context = len(self.tokenizer(contexts[i], add_special_tokens=False, verbose=False)["input_ids"])
            if n_question + n_context + n_special <= self.max_length:
                continue  # fits one window whole: no truncation, no stride
            if room <= 0:
                why = (f"the question ({n_question} tokens) leaves no room for the context in windows of "
                       f"{self.max_length} tokens")
            else:
                why = (f"the question ({n_question} tokens) leaves {room} tokens per window for the context, "
                       f"not more than head.doc_stride ({self.doc_stride})")
            out[i] = RowError(why + "; shorten the question, raise model.max_length or lower head.doc_stride")
        return out

    def encode_batch(self, rows):
        questions = [r[C.QUESTION] for r in rows]
        contexts = [r[C.CONTEXT] for r in rows]
        out: list = self._no_room(questions, contexts)
        todo = [i for i, e in enumerate(out) if e is None]
        if not todo:
            return out
        try:
            batches = [(self._tokenize([questions[i] for i in todo], [contexts[i] for i in todo]), todo)]
        except _FATAL:
            raise
        except BaseException:  # noqa: BLE001 - tokenizers panics are BaseExceptions; find the row per row
            batches = []
            for i in todo:
                try:
                    batches.append((self._tokenize([questions[i]], [contexts[i]]), [i]))
                except _FATAL:
                    raise
                except BaseException as e:  # noqa: BLE001
                    first_line = (str(e).splitlines() or [""])[0]
                    out[i] = RowError(f"cannot tokenize the question and context ({type(e).__name__}: {first_line})")
        for enc, row_indices in batches:
            per_row: list[list] = [[] for _ in row_indices]
            for w, sample in enumerate(enc["overflow_to_sample_mapping"]):
                per_row[sample].append(enc.encodings[w])
            for i, windows in zip(row_indices, per_row):
                out[i] = self._encode_row(windows)
        return out

    def _encode_row(self, windows) -> dict | RowError:
        if not windows:
            return RowError("the tokenizer produced no window for this question and context")
        input_ids, type_ids, starts, ends, word_ids, seq_ids, p_masks = [], [], [], [], [], [], []
        for e in windows:
            ids = list(e.ids)
            seq = [-1 if s is None else s for s in e.sequence_ids]
            # p_mask: 1 for tokens that cannot be in the answer: everything but the context when the
            # question comes first, nothing otherwise (the pipeline's rule) -- and never a [CLS].
            if self.question_first:
                p_mask = [0 if s == 1 else 1 for s in seq]
            else:
                p_mask = [0] * len(ids)
            if self.cls_token_id is not None:
                for k, t in enumerate(ids):
                    if t == self.cls_token_id:
                        p_mask[k] = 0
            input_ids.append(ids)
            type_ids.append(list(e.type_ids))
            starts.append([o[0] for o in e.offsets])
            ends.append([o[1] for o in e.offsets])
            word_ids.append([-1 if w is None else w for w in e.word_ids])
            seq_ids.append(seq)
            p_masks.append(p_mask)
        return {
            C.INPUT_IDS: input_ids,
            C.TOKEN_TYPE_IDS: type_ids if self.uses_token_types else [],
            C.N_TOKENS: sum(len(w) for w in input_ids),
            C.TRUNCATED: False,
            "_tok_starts": starts,
            "_tok_ends": ends,
            "_word_ids": word_ids,
            "_seq_ids": seq_ids,
            "_p_mask": p_masks,
        }

    # ---- device: model stage -------------------------------------------------------------------
    def forward(self, model, inputs, lengths):
        out = self.run_model(model, inputs)
        start = out.start_logits.float().cpu().numpy()
        end = out.end_logits.float().cpu().numpy()
        return {
            "start": [start[i, : lengths[i]] for i in range(len(lengths))],
            "end": [end[i, : lengths[i]] for i in range(len(lengths))],
        }

    # ---- CPU: postprocess stage ----------------------------------------------------------------
    def output_schema(self, id_type):
        fields = [("id", id_type), ("answer", pa.string()), ("score", pa.float32()), ("start", pa.int32()),
                  ("end", pa.int32())]
        if self.top_k > 1:
            fields.append(("answers", pa.list_(ANSWER)))
        return pa.schema(fields)

    def postprocess(self, row):
        answers = self.decode(row)
        if not answers:
            raise RowError("no answer span could be decoded")
        best = answers[0]
        out = {"id": row[C.ID], "answer": best["answer"], "score": best["score"], "start": best["start"],
               "end": best["end"]}
        if self.top_k > 1:
            out["answers"] = answers
        return [out]

    def decode(self, row: dict) -> list[dict]:
        """The pipeline's postprocess over one question's windows: answers, best first."""
        context = row[C.CONTEXT]
        top_k = self.top_k
        pre_topk = top_k * 2 + 10  # align_to_words drops some candidates
        min_null_score = 1000000  # large and positive
        answers: list[dict] = []
        windows = zip(row[C.out("start")], row[C.out("end")], row["_p_mask"], row[C.INPUT_IDS], row["_tok_starts"],
                      row["_tok_ends"], row["_word_ids"], row["_seq_ids"])
        for start_logits, end_logits, p_mask, ids, tok_starts, tok_ends, words, seqs in windows:
            start = np.asarray(start_logits, dtype=np.float32)[None]
            end = np.asarray(end_logits, dtype=np.float32)[None]
            p_mask = np.asarray(p_mask, dtype=np.int64)[None]
            starts, ends, scores, min_null_score = select_starts_ends(start, end, p_mask, min_null_score, pre_topk,
                                                                      self.options)
            # A left-padding tokenizer: the pipeline shifts indices by the pad tokens in the window
            # (none unless the text itself holds the pad token).
            offset = 0
            if not self.question_first and self.pad_token_id is not None:
                offset = sum(1 for t in ids if t == self.pad_token_id)
            offsets = list(zip(tok_starts, tok_ends))
            span = _sequence_span(seqs, self.context_sequence)
            for s, e, score in zip(starts, ends, scores):
                s = int(s) - offset
                e = int(e) - offset
                start_index, end_index = _indices(offsets, words, span, s, e)
                target = context[start_index:end_index]
                found = _same_answer(answers, target)
                if found:
                    found["score"] += score.item()
                else:
                    answers.append({"score": score.item(), "start": start_index, "end": end_index, "answer": target})
        if self.handle_impossible_answer:
            answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]
        return [{"answer": a["answer"], "score": float(a["score"]), "start": int(a["start"]), "end": int(a["end"])}
                for a in answers]


def _same_answer(answers: list[dict], target: str) -> dict | None:
    for answer in answers:
        if answer["answer"].lower() == target.lower():
            return answer
    return None


def _token_to_word(words: list[int], i: int) -> int | None:
    if i < 0:  # the pipeline passes it to Rust as usize: an OverflowError, caught like a missing word
        raise OverflowError("negative token index")
    if i >= len(words) or words[i] < 0:
        return None
    return words[i]


def _sequence_span(seqs: list[int], sequence: int) -> tuple[int, int] | None:
    """Token range [lo, hi) of `sequence` (0 or 1) in a pair encoding; None when the window holds no
    token of it (tokenizers' `sequence_ranges`)."""
    positions = [k for k, s in enumerate(seqs) if s == sequence]
    return (positions[0], positions[-1] + 1) if positions else None


def _word_to_chars(offsets, words, span, word: int) -> tuple[int, int] | None:
    """tokenizers' `Encoding.word_to_chars(word, sequence_index)`: the tokens of the sequence's
    `span`, scanned while word ids are <= `word`; the span from the first to the last token of that
    word."""
    if span is None:
        return None
    lo, hi = span
    first = last = None
    for k in range(lo, hi):
        w = words[k]  # -1 (None) sorts before every word, as Rust's Option does
        if w > word:
            break
        if w == word:
            if first is None:
                first = k
            last = k
    if first is None:
        return None
    return offsets[first][0], offsets[last][1]


def _indices(offsets, words, span, s: int, e: int) -> tuple[int, int]:
    """The pipeline's `get_indices` with align_to_words: the span widened to the words of its first
    and last tokens; where a token has no word (a special token), the tokens' own offsets."""
    try:
        start_word = _token_to_word(words, s)
        end_word = _token_to_word(words, e)
        if start_word is None or end_word is None:
            raise TypeError("no word")
        first = _word_to_chars(offsets, words, span, start_word)
        last = _word_to_chars(offsets, words, span, end_word)
        if first is None or last is None:
            raise TypeError("no chars")
        return first[0], last[1]
    except Exception:  # noqa: BLE001 - as the pipeline: keep to offsets then
        return offsets[s][0], offsets[e][1]


def decode_spans(start: np.ndarray, end: np.ndarray, topk: int, max_answer_len: int, undesired_tokens: np.ndarray):
    """transformers 4.57 `decode_spans`, unchanged: the `topk` best (start, end) pairs of one window
    with start <= end < start + max_answer_len, both allowed by `undesired_tokens` ([1, L], 1 = allowed)."""
    # Compute the score of each tuple(start, end) to be the real answer
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    # Remove candidate with end < start and end - start > max_answer_len
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    scores_flat = candidates.flatten()
    if topk == 1:
        idx_sort = [np.argmax(scores_flat)]
    elif len(scores_flat) < topk:
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, topk)[0:topk]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    # `nonzero()` of a [1, L] array is (rows, columns); isin flattens both, so index 0 always counts
    # as allowed -- the pipeline's quirk, kept.
    desired_spans = np.isin(starts, undesired_tokens.nonzero()) & np.isin(ends, undesired_tokens.nonzero())
    starts = starts[desired_spans]
    ends = ends[desired_spans]
    scores = candidates[0, starts, ends]
    return starts, ends, scores


def select_starts_ends(start, end, p_mask, min_null_score, top_k, options):
    """transformers 4.57 `select_starts_ends` for one unpadded window ([1, L] float32 logits and p_mask);
    `options` (the spec's head) carries `handle_impossible_answer` and `max_answer_len`."""
    # Ensure padded tokens & question tokens cannot belong to the set of candidate answers.
    undesired_tokens = np.abs(np.array(p_mask) - 1)
    undesired_tokens = undesired_tokens & np.ones_like(undesired_tokens)  # the attention mask: no padding
    undesired_tokens_mask = undesired_tokens == 0.0
    # Make sure non-context indexes in the tensor cannot contribute to the softmax
    start = np.where(undesired_tokens_mask, -10000.0, start)
    end = np.where(undesired_tokens_mask, -10000.0, end)
    # Normalize logits and spans to retrieve the answer
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if options.handle_impossible_answer:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
    # Mask CLS
    start[0, 0] = end[0, 0] = 0.0
    starts, ends, scores = decode_spans(start, end, top_k, options.max_answer_len, undesired_tokens)
    return starts, ends, scores, min_null_score
