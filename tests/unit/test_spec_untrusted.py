"""The spec file is untrusted input (issue 20): a YAML alias bomb, 20,000-deep nesting, an oversized or
undecodable file are refused with exit 2 and one sentence; messages never quote a value longer than about
200 characters, nor a URL's password. The first cases run `python -m pipeline validate` as users do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

from pipeline.spec import (
    MAX_SPEC_BYTES,
    MAX_SPEC_DEPTH,
    SpecError,
    apply_overrides,
    load_spec,
    parse_override,
    spec_from_dict,
)

BASE = "input: {path: docs.jsonl}\nmodel: {path: models/m, head: embedding}\noutput:\n  path: out\n"


def alias_bomb(levels: int = 9) -> str:
    """A "billion laughs" in output.columns: 9 anchors of 9 aliases each stand for 9**9 strings."""
    anchors = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    anchors += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return BASE + f"  columns: [{', '.join(anchors)}]\n"


def validate(tmp_path: Path, text: str | bytes, *overrides: str, timeout: float = 60) -> subprocess.CompletedProcess:
    path = tmp_path / "spec.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    args = [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "pipeline", "validate", str(path), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr and "unexpected" not in proc.stderr
    assert proc.stdout == ""
    return lines[0]


# -- the real CLI ----------------------------------------------------------------------------------


def test_cli_alias_bomb_is_refused_at_once(tmp_path):
    # Before: validate grew to 2.6 GB in 91 s (repr of 9**9 strings for the error message), and kept going.
    line = one_line_error(validate(tmp_path, alias_bomb(), timeout=20))
    assert "YAML aliases (*a0) are not supported; write the value out" in line
    assert len(line) < 400


@pytest.mark.parametrize(
    "nesting",
    ["[" * 20_000 + "]" * 20_000, "{a: " * 20_000 + "1" + "}" * 20_000],
    ids=["lists", "mappings"],
)
def test_cli_20000_deep_nesting_exits_2_with_a_sentence(tmp_path, nesting):
    # Before: exit 1, "unexpected RecursionError".
    line = one_line_error(validate(tmp_path, BASE + f"storage: {nesting}\n"))
    assert f"nested more than {MAX_SPEC_DEPTH} levels deep" in line and "line 5" in line


def test_cli_a_long_value_is_cut_with_its_length(tmp_path):
    line = one_line_error(validate(tmp_path, BASE + f"batching: {{max_tokens: {'x' * 10_000}}}\n"))
    assert "batching.max_tokens: 'xxxx" in line and "(10,000 characters) is not a whole number" in line
    assert len(line) < 400


@pytest.mark.parametrize(
    "storage, overrides",
    [
        ('{endpoint_url: "http://user:secret@host:notaport"}', ()),
        ('{endpoint_url: "http://user:secret@minio:9000"}', ()),
        ("{}", ("storage.endpoint_url=http://user:secret@host:notaport",)),
        ("{}", ("model.path.x=http://user:secret@host",)),  # the --set item quoted in its own error
    ],
    ids=["malformed-url", "well-formed-url", "set-malformed-url", "set-not-a-section"],
)
def test_cli_a_password_in_a_url_is_never_echoed(tmp_path, storage, overrides):
    # Before: `error: input.path: cannot list s3://... (EndpointResolutionError: Custom endpoint
    # `http://user:secret@host:notaport` was not a valid URI)`, the password in the clear.
    spec = BASE.replace("docs.jsonl", "s3://bucket/docs.jsonl") + f"storage: {storage}\n"
    line = one_line_error(validate(tmp_path, spec, *overrides))
    assert "secret" not in line
    assert "user:***@host" in line or "user:***@minio" in line


# -- load_spec in-process --------------------------------------------------------------------------


def _deep_block(depth: int) -> str:
    return "".join(f"{' ' * i}a:\n" for i in range(depth)) + " " * depth + "1\n"


@pytest.mark.parametrize(
    "text, expected",
    [
        (alias_bomb(3), "YAML aliases (*a0) are not supported"),
        (BASE + "base: &b {min: 1, max: 2}\nresources: {model_actors: *b}\n", "YAML aliases (*b) are not supported"),
        (BASE + "x: &b {a: 1}\nbatching:\n  <<: *b\n", "YAML aliases (*b) are not supported"),  # merge keys too
        (BASE + f"  columns: [&{'n' * 5000} x, *{'n' * 5000}]\n", "YAML aliases (*nnnnnnnn"),
        (BASE + "storage: " + "[" * 300 + "]" * 300 + "\n", f"nested more than {MAX_SPEC_DEPTH} levels deep"),
        (BASE + "storage:\n" + _deep_block(200).replace("\n", "\n  ").rstrip(" "), "nested more than"),
        (BASE + "batching: {max_tokens: " + "9" * 5000 + "}\n", "a value cannot be read (Exceeds the limit"),
        (BASE.replace("path: out", "path: 2026-02-30"), "a value cannot be read (day is out of range for month)"),
        (BASE + "# " + "x" * MAX_SPEC_BYTES + "\n", "a spec is a short YAML file"),
        (BASE.encode() + b"# \xff\n", "not UTF-8 text"),
        (BASE + f"  columns: !{'t' * 10_000} x\n", "the tag !tttt"),  # the tag cut to its start and length
        (BASE + f"  columns: !{'t' * 10_000} x\n", "(10,001 characters) is not supported"),
        (BASE + f"  ? {'k' * 10_000}\n  : 1\n", "(10,000 characters): unknown key; output takes path"),
        (BASE + f"resources: {{model_actors: {{min: {'9' * 4000}, max: 1}}}}\n", "(4,000 characters)) is larger than max (1)"),
        (BASE + "  columns: [" + ", ".join(["1"] * 1000) + "]\n", "(and up to 990 more problems)"),
        (BASE + "storage: {endpoint_url: 'https://token-secret@host'}\n", "'https://***@host' holds a user name"),
        (BASE + "storage: {endpoint_url: 'ftp://host'}\n", "is not an endpoint URL"),
        (BASE + f"output2: {{x: 'http://me:secret@{'h' * 500}'}}\n", "output2: unknown key"),
    ],
    ids=["alias-bomb", "alias", "merge-key", "long-alias-name", "deep-lists", "deep-block", "huge-int", "bad-date",
         "too-large", "not-utf8", "long-tag", "long-tag-length", "long-key", "huge-int-in-a-message", "a-thousand-problems",
         "token-in-url", "not-http", "password-in-an-unknown-section"],
)
def test_load_spec_refuses_with_one_short_sentence(tmp_path, text, expected):
    path = tmp_path / "spec.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert expected in msg, msg
    assert "\n" not in msg and "secret" not in msg
    assert len(msg) < 800 and max(len(word) for word in msg.split()) <= 200, msg


def test_a_deep_dict_given_to_spec_from_dict_is_a_spec_error():
    data = {"input": {"path": "d"}, "model": {"path": "m", "head": "embedding"}, "output": {"path": "o"}}
    deep: dict = {}
    node = deep
    for _ in range(20_000):
        node["a"] = node = {}
    data["storage"] = deep
    with pytest.raises(SpecError) as info:
        spec_from_dict(data)
    assert "RecursionError" not in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize(
    "item",
    ["input.path=*foo", "input.path=&a [*a]", "input.path=" + "[" * 20_000 + "]" * 20_000,
     "model.max_length=" + "9" * 5000, "output.path=2026-02-30"],
    ids=["alias-is-a-glob", "self-reference", "deep", "huge-int", "bad-date"],
)
def test_override_values_yaml_cannot_hold_stay_text(item):
    key, value = item.split("=", 1)
    assert parse_override(item) == (key.split("."), value)


@pytest.mark.parametrize(
    "item, expected",
    [
        ("http://user:secret@host", "--set 'http://user:***@host': expected key.path=value"),
        ("model.path.x=http://user:secret@host", "--set 'model.path.x=http://user:***@host': path is not a section"),
        ("model.path.x=" + "y" * 10_000, "(10,013 characters): path is not a section"),
    ],
)
def test_override_errors_mask_passwords_and_cut_long_items(item, expected):
    with pytest.raises(SpecError) as info:
        apply_overrides({"model": {"path": "m"}}, [item])
    assert expected in str(info.value) and "secret" not in str(info.value) and len(str(info.value)) < 200


def test_well_formed_endpoints_still_validate():
    data = {"input": {"path": "d"}, "model": {"path": "m", "head": "embedding"}, "output": {"path": "o"}}
    for url in ("http://127.0.0.1:9000", "https://s3.eu-west-1.amazonaws.com", "http://minio:9000/"):
        assert spec_from_dict({**data, "storage": {"endpoint_url": url}}).storage.endpoint_url == url
