"""MkDocs hook (mkdocs.yml `hooks:`): fills the spec reference into docs/spec.md at build time.

The table is `pipeline.spec.spec_reference()`, generated from the pydantic models' field descriptions,
so the built page always says what the installed code accepts; nobody pastes it. A spec.md without the
placeholder fails the build instead of publishing a page without its table.
"""

from __future__ import annotations

PLACEHOLDER = "<!-- spec-reference -->"
PAGE = "spec.md"


def fill_spec_reference(markdown: str) -> str:
    """`markdown` with the placeholder replaced by the current spec reference table."""
    from pipeline.spec import spec_reference

    if PLACEHOLDER not in markdown:
        raise ValueError(f"docs/{PAGE} has no {PLACEHOLDER} line for the spec reference")
    return markdown.replace(PLACEHOLDER, spec_reference(), 1)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    try:
        return fill_spec_reference(markdown)
    except ValueError as e:
        from mkdocs.exceptions import PluginError

        raise PluginError(str(e)) from None
