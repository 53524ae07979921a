"""How often this job's entities on long documents equal transformers' `TokenClassificationPipeline`
with `stride`, and where the differences lie.

    python -m tools.long_doc_agreement [--model jobs/models/demo-ner] [--max-length 128] [--stride 32]

Long documents (about 60 sentences each, held-out generated English) go through this job's
LocalRunner and through the pipeline with the same windows. For every aggregation strategy it prints
the share of entities (entity_group, start, end) that are equal, over all entities either side
found, and how many of the differing ones touch a window overlap. By design the two differ only in
overlaps: we take each token's prediction from the window where it has most context and aggregate
after merging; the pipeline aggregates per window and keeps the longest of overlapping entities.
"""

from __future__ import annotations

import argparse

import numpy as np


def overlap_spans(doc) -> list[tuple[int, int]]:
    """Character spans of the tokens that sit in more than one window of an encoded document."""
    counts = np.zeros(len(doc.token_ids), dtype=int)
    for start, n in zip(doc.window_starts, doc.window_lengths):
        counts[start : start + n] += 1
    return [(int(doc.starts[i]), int(doc.ends[i])) for i in np.nonzero(counts > 1)[0]]


def touches(entity: tuple[str, int, int], spans: list[tuple[int, int]]) -> bool:
    """True when the entity touches an overlap token or a token next to one (a word reaching into an
    overlap takes its score from there)."""
    _, start, end = entity
    return any(not (end + 1 < s or start > e + 1) for s, e in spans)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="jobs/models/demo-ner")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--docs", type=int, default=20)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging

    from tools.corpus import sentences
    from pipeline.local import LocalRunner
    from pipeline.spec import spec_from_dict
    from pipeline.windows import encode_windows

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    pool = sentences(60 * args.docs, seed=7, split="test")
    texts = [" ".join(pool[i : i + 60]) for i in range(0, 60 * args.docs, 60)]
    tokenizer = AutoTokenizer.from_pretrained(args.model, model_max_length=args.max_length)
    overlaps = [overlap_spans(doc) for doc in encode_windows(tokenizer, texts, args.max_length, args.stride)]
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    print(f"{len(texts)} documents, {tokens / len(texts):,.0f} tokens each on average; "
          f"windows of {args.max_length} sharing {args.stride}; model {args.model}")

    for strategy in ("simple", "first", "average", "max"):
        spec = spec_from_dict({
            "input": {"path": "unused"},
            "model": {"path": args.model, "head": "token-classification", "max_length": args.max_length,
                      "stride": args.stride},
            "head": {"aggregation_strategy": strategy},
            "output": {"path": "unused"},
        })
        ours, _ = LocalRunner(spec).run([{"id": i, "text": t} for i, t in enumerate(texts)])
        pipe = pipeline("token-classification", model=args.model, tokenizer=tokenizer,
                        aggregation_strategy=strategy, stride=args.stride)
        equal = total = in_overlap = 0
        for text, entities, spans in zip(texts, ours.column("entities").to_pylist(), overlaps):
            mine = {(e["entity_group"], e["start"], e["end"]) for e in entities}
            theirs = {(e["entity_group"], e["start"], e["end"]) for e in pipe(text)}
            equal += len(mine & theirs)
            total += len(mine | theirs)
            in_overlap += sum(touches(e, spans) for e in mine ^ theirs)
        differing = total - equal
        print(f"{strategy:<8} equal {equal}/{total} = {equal / total:.1%}; "
              f"of the {differing} differing, {in_overlap} touch a window overlap")


if __name__ == "__main__":
    main()
