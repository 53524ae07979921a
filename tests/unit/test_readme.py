"""The code in README.md and docs/*.md agrees with the code.

Conventions (also in docs/development.md, "These docs"):

- **Runnable blocks.** A fenced code block on the line right after a line that is exactly
  `<!-- runnable -->` (an HTML comment: invisible on GitHub and in the MkDocs site) is executed:
  ```python blocks with this test's Python (the project's venv) as a script in an empty temporary
  folder; ```bash blocks with `bash -e` from the repository root, this Python's bin folder first on
  PATH. Mark only blocks that are quick (seconds), need no network, install, model or cluster, and
  write nothing into the repository. A block passes when it exits 0: put the checks in the block
  (an `assert` in Python).
- **Spec snippets.** Every ```yaml block is a job spec, or a fragment of one: a mapping of spec
  sections, completed with a placeholder input path, model (token-classification unless the fragment
  names model.head) and output path, and it must load through `pipeline.spec`. YAML that is not a spec
  goes in a block of another language (```text).
- **The spec reference** is filled into docs/spec.md at build time by docs/hooks.py (a MkDocs hook);
  the test calls the hook and compares with `pipeline.spec.spec_reference()`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipeline.spec import JobSpec, load_spec, spec_from_dict, spec_reference

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = "<!-- runnable -->"
RUNNERS = ("python", "bash")
BLOCK_TIMEOUT_S = 60  # a runnable block takes seconds; this only stops a hung one

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)[^`]*$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    runnable: bool

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order (indented ones, in lists, dedented)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        close = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        assert j < len(lines), f"{page.relative_to(REPO)}:{i + 1}: code block never closed"
        body = "\n".join(line[indent:] if line.startswith(" " * indent) else line.lstrip() for line in lines[i + 1 : j])
        runnable = i > 0 and lines[i - 1].strip() == MARKER
        blocks.append(Block(page, i + 1, m["lang"].lower(), body + "\n", runnable))
        i = j + 1
    return blocks


BLOCKS = [b for page in PAGES for b in code_blocks(page)]
RUNNABLE = [b for b in BLOCKS if b.runnable]
SPECS = [b for b in BLOCKS if b.lang in ("yaml", "yml")]


def test_every_runnable_marker_marks_a_block_it_can_run():
    stray = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if line.strip() == MARKER and not (n + 1 < len(lines) and _FENCE.match(lines[n + 1])):
                stray.append(f"{page.relative_to(REPO)}:{n + 1}: {MARKER} not right before a code block")
    stray += [f"{b.where}: a runnable block must be one of {', '.join(RUNNERS)}, not {b.lang or 'no language'}"
              for b in RUNNABLE if b.lang not in RUNNERS]
    assert not stray, "\n".join(stray)
    # The README and the docs keep runnable blocks; an extraction that finds none is broken.
    assert any(b.page.name == "README.md" for b in RUNNABLE)
    assert len(RUNNABLE) >= 6, [b.where for b in RUNNABLE]


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.where for b in RUNNABLE])
def test_runnable_block_runs(block: Block, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if block.lang == "python":
        script = tmp_path / "block.py"
        script.write_text(block.code, encoding="utf-8")
        argv, cwd = [sys.executable, str(script)], tmp_path
    else:
        argv, cwd = ["bash", "-e", "-c", block.code], REPO
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S,
                          check=False)
    assert proc.returncode == 0, (
        f"{block.where}: the {block.lang} block exited {proc.returncode}\n--- block\n{block.code}"
        f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    )
    assert time.monotonic() - started < 30, f"{block.where}: too slow to be marked runnable"


# What a fragment is completed with: a spec section it leaves out, or a required key of one.
_PLACEHOLDER = {"input": {"path": "corpus/shards/"}, "model": {"path": "models/checkpoint", "head": "token-classification"},
                "output": {"path": "out/results/"}}


def _complete(fragment: dict) -> dict:
    spec = {}
    for section in dict.fromkeys([*_PLACEHOLDER, *fragment]):
        given = fragment.get(section)
        spec[section] = {**_PLACEHOLDER.get(section, {}), **given} if isinstance(given, dict) else \
            given if section in fragment else _PLACEHOLDER[section]
    return spec


def test_the_spec_snippets_are_found():
    pages = {b.page.name for b in SPECS}
    assert {"README.md", "spec.md", "heads.md"} <= pages, pages
    assert len([b for b in SPECS if b.page.name == "README.md"]) >= 7  # the spec and one per head, multi-label too


@pytest.mark.parametrize("block", SPECS, ids=[b.where for b in SPECS])
def test_yaml_block_is_a_spec(block: Block, tmp_path):
    data = yaml.safe_load(block.code)
    assert isinstance(data, dict), f"{block.where}: a yaml block is a spec or spec sections (use ```text otherwise)"
    unknown = set(data) - set(JobSpec.model_fields)
    assert not unknown, f"{block.where}: {sorted(unknown)} not spec sections (use ```text for other YAML)"
    if {"input", "model", "output"} <= set(data):
        path = tmp_path / "spec.yaml"
        path.write_text(block.code, encoding="utf-8")
        load_spec(path)  # the CLI's own loader: raises SpecError with the problem
    else:
        spec_from_dict(_complete(data), source=block.where)


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _page(src_uri: str):
    return SimpleNamespace(file=SimpleNamespace(src_uri=src_uri))


def test_the_docs_build_the_spec_reference_from_the_code():
    hooks = _hooks()
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert "docs/hooks.py" in config["hooks"]
    markdown = (REPO / "docs" / "spec.md").read_text()
    assert markdown.count(hooks.PLACEHOLDER) == 1
    built = hooks.on_page_markdown(markdown, page=_page("spec.md"), config=None, files=None)
    assert hooks.PLACEHOLDER not in built
    before, _, after = markdown.partition(hooks.PLACEHOLDER)
    assert built == before + spec_reference() + after
    # Other pages pass through; a spec.md without the placeholder fails the build.
    assert hooks.on_page_markdown(markdown, page=_page("heads.md"), config=None, files=None) == markdown
    from mkdocs.exceptions import PluginError

    with pytest.raises(PluginError, match="spec-reference"):
        hooks.on_page_markdown("# Job spec\n", page=_page("spec.md"), config=None, files=None)


def test_the_readme_links_name_files_that_exist():
    readme = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [t.split("#")[0] for t in targets if "://" not in t and not t.startswith("#")]
    assert local, "no relative links found"
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, missing


def test_the_readme_carries_the_ci_test_command():
    # .ci/run runs "the README's test command"; the README shows the same line.
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    [command] = [line.strip() for line in ci if line.strip().startswith("python -m pytest")]
    assert command in (REPO / "README.md").read_text()
