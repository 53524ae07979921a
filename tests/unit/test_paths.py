"""Paths read from the spec and the disk are checked, not trusted: the output and the input compared
as the folders they name, the output's root resolved, symlinked input files followed or refused."""

from __future__ import annotations

import os

import pytest

from pipeline.preflight import check_paths_apart
from pipeline.output import OutputDir
from pipeline.sources import InputError, list_shards
from pipeline.spec import InputSpec, SpecError
from pipeline.storage import normal_path


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.parquet").write_bytes(b"PAR1")
    (tmp_path / "link-to-in").symlink_to(tmp_path / "in")
    return tmp_path


@pytest.mark.parametrize("output", [
    "{t}/link-to-in",  # a symlink to the input folder: its Parquet files would be overwritten
    "{t}/link-to-in/",
    "file://{t}/in",
    "{t}//in",
    "{t}/in/../in",
    "{t}/in/./results",
    "{t}",  # contains the input
    "file://{t}/link-to-in/out",
])
def test_an_output_that_is_inside_or_contains_the_input_is_refused_however_it_is_spelt(tree, output):
    with pytest.raises(SpecError, match="is, lies inside or contains input.path"):
        check_paths_apart(f"{tree}/in", output.format(t=tree))
    with pytest.raises(SpecError):
        check_paths_apart(f"{tree}/link-to-in/*.parquet", output.format(t=tree))


def test_paths_apart_pass_and_home_and_relative_parts_resolve(tree, monkeypatch):
    check_paths_apart(f"{tree}/in", f"{tree}/out")
    check_paths_apart(f"{tree}/in/*.parquet", f"file://{tree}/in2")
    check_paths_apart("s3://bucket/in/", "s3://bucket/out")
    with pytest.raises(SpecError):
        check_paths_apart("s3://bucket//in/*.jsonl", "s3://bucket/in/out/")
    monkeypatch.setenv("HOME", str(tree))
    monkeypatch.chdir(tree / "in")
    with pytest.raises(SpecError):
        check_paths_apart("~/in", "./results")
    assert normal_path("~/in") == str(tree / "in") == normal_path("file://" + str(tree / "link-to-in"))


def test_a_file_url_output_writes_to_that_folder_not_to_one_named_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = OutputDir(f"file://{tmp_path}/results")
    out.write_bytes("x.json", b"{}")
    assert (tmp_path / "results" / "x.json").exists() and not (tmp_path / "file:").exists()


def test_a_symlinked_input_file_is_read_under_its_own_name_with_its_targets_identity(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    target = tmp_path / "elsewhere" / "real.jsonl"
    target.write_text('{"id": 1, "text": "Alice"}\n')
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"id": 2, "text": "Bob"}\n')
    (tmp_path / "in" / "b.jsonl").symlink_to(target)
    shards = list_shards(InputSpec(path=str(tmp_path / "in")))
    assert [(s.name, s.key) for s in shards] == [("a.jsonl", "a"), ("b.jsonl", "b")]
    assert shards[1].identity["inode"] == os.stat(target).st_ino and shards[1].identity["size"] == target.stat().st_size
    (single,) = list_shards(InputSpec(path=str(tmp_path / "in" / "b.jsonl")))
    assert single.identity == shards[1].identity


@pytest.mark.parametrize("make, why", [
    (lambda d: (d / "gone.jsonl").symlink_to(d / "missing.jsonl"), "gone.jsonl .* symbolic link to .*cannot be read"),
    (lambda d: (d / "sub").symlink_to(d.parent / "other"), "sub .* symbolic link to a folder"),
])
def test_a_link_to_nothing_or_to_a_folder_is_refused_in_one_sentence(tmp_path, make, why):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "c.jsonl").write_text('{"id": 3, "text": "Carol"}\n')
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"id": 2, "text": "Bob"}\n')
    make(tmp_path / "in")
    with pytest.raises(InputError, match=f"input.path: {why}"):
        list_shards(InputSpec(path=str(tmp_path / "in")))
