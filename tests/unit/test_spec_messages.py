"""Spec mistakes through the real CLI (issue 21, smaller points): a YAML syntax error is one line,
`spec.yaml line L, column C: what is wrong; what to do`, in plain words rather than PyYAML's parser
states; a head named by another name people use (transformers' task names, `sentiment`) gets a
did-you-mean, from `--set` and from the file alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

BASE = "input:\n  path: docs.jsonl\nmodel:\n  path: models/m\n  head: embedding\noutput:\n  path: out\n"

# PyYAML's own words, which no message should show.
PARSER_WORDS = ("while parsing", "while scanning", "<block", "expected <", "but found", "token", "scalar")


def validate(path: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "pipeline", "validate", str(path), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    return lines[0]


@pytest.mark.parametrize(
    "text, where, words",
    [
        # A key indented one space: the model section no longer lines up with input.
        (BASE.replace("\nmodel:", "\n model:"), "line 3, column 2",
         "this line is indented 1 space, which lines up with no key above it; start the keys of one section "
         "in the same column"),
        # An unclosed quote is told where it opens, not at the end of the file.
        (BASE.replace("path: docs.jsonl", 'path: "docs.jsonl'), "line 2, column 9",
         'this " is never closed; end the value with "'),
        (BASE.replace("  path: models/m", "\tpath: models/m"), "line 4, column 1",
         "a tab; YAML indents and separates with spaces only: replace the tab with spaces"),
        (BASE.replace("  head: embedding", "  head: embedding: sentiment"), "line 5, column 18",
         "a second `:` on this line; a value that holds `: ` must be quoted"),
        (BASE.replace("path: docs.jsonl", "path: [docs.jsonl"), "line 3, column 6",
         "a `: ` inside the [ list opened at line 2, column 9"),
        (BASE + "  columns: [id, text\n", "line 8, column 12", "this [ list is never closed; end it with ]"),
        (BASE + "batching:\n  - max_tokens: 512\n  rows_per_batch: 8\n", "line 10, column 3",
         "a `key:` among list items (`- `); a section holds either keys or `- ` items, not both"),
        (BASE.replace("path: out", 'path: "C:\\out"'), "line 7, column 12",
         "a backslash in double quotes starts an escape"),
        (BASE + "---\nmore: 1\n", "line 8, column 1", "a second YAML document (`---`); a spec is one document"),
        (BASE + "storage: !!python/object:os.system x\n", "line 8, column 10",
         "the tag !!python/object:os.system is not supported"),
    ],
    ids=["indentation", "unclosed-quote", "tab", "key-value-value", "bracket-then-key", "unclosed-bracket",
         "keys-among-items", "backslash", "two-documents", "python-tag"],
)
def test_yaml_syntax_errors_are_one_line_in_plain_words(tmp_path, text, where, words):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    line = one_line_error(validate(path))
    assert line.startswith(f"error: {path} {where}: "), line
    assert words in line, line
    assert line.endswith("(not valid YAML)"), line
    assert not any(w in line for w in PARSER_WORDS), line


def test_a_yaml_alias_is_refused_in_the_same_form(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(BASE.replace("path: out", "path: &o out") + "storage: {endpoint_url: *o}\n")
    line = one_line_error(validate(path))
    assert line == f"error: {path} line 8, column 25: YAML aliases (*o) are not supported; write the value out"


HEADS = "token-classification, embedding, sequence-classification, fill-mask, question-answering"


@pytest.mark.parametrize(
    "head, meant",
    [("sentiment", "sequence-classification"), ("sentiment-analysis", "sequence-classification"),
     ("ner", "token-classification"), ("feature-extraction", "embedding"), ("masked", "fill-mask")],
)
def test_a_head_named_as_elsewhere_gets_a_did_you_mean_from_set(head, meant):
    line = one_line_error(validate(REPO_ROOT / "jobs" / "laptop.yaml", f"model.head={head}"))
    assert line == (f"error: {REPO_ROOT / 'jobs' / 'laptop.yaml'}: model.head: '{head}' is not a head; choose one "
                    f"of {HEADS} (did you mean {meant}?)")


def test_a_head_named_as_elsewhere_gets_a_did_you_mean_in_the_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(BASE.replace("head: embedding", "head: sentiment"))
    line = one_line_error(validate(path))
    assert line == (f"error: {path}: model.head: 'sentiment' is not a head; choose one of {HEADS} "
                    "(did you mean sequence-classification?)")


def test_a_head_like_no_other_gets_no_guess(tmp_path):
    line = one_line_error(validate(REPO_ROOT / "jobs" / "laptop.yaml", "model.head=summarization"))
    assert line.endswith(f"choose one of {HEADS}")
