"""The README's spec reference is the code's: regenerate it with `python -m pipeline spec-reference`."""

from pathlib import Path

from pipeline.spec import spec_reference


def test_readme_carries_the_current_spec_reference():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [line for line in spec_reference().splitlines() if line not in readme]
    assert not missing, "README.md spec reference is stale; paste `python -m pipeline spec-reference`:\n" + "\n".join(missing)
