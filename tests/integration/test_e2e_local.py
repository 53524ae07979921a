"""End to end through Ray on local files (in-process `pipeline.job.run`, one Ray session): bad rows
become error rows with reasons, ids keep their input type, inputs without ids get stable ids, chosen
input columns (output.columns) reach every output row with their types, and a re-run resumes instead
of duplicating."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration._util import SMALL_RESOURCES, check_counts, read_outputs, rows, write_jsonl

pytestmark = pytest.mark.slow

LONG = " ".join(["Carol met Dave in Rome."] * 20)  # ~120 tokens: several 32-token windows

BAD_ROWS_LINES = [
    {"id": 1, "text": "Alice works at Acme in Paris."},
    {"id": 2, "text": None},  # null text
    {"id": 3, "text": ""},  # empty text
    {"id": 4, "text": 42},  # not a string
    '{"id": 5, "text": "broken',  # invalid JSON
    {"id": None, "text": "No id here."},  # null id
    {"id": 7, "text": "Bob visited Berlin."},
    "",  # a blank line is not a row
    {"id": 9, "text": LONG},
]
# Row index (non-blank lines) -> expected reason (a substring).
EXPECTED_ERRORS = {1: "text is null", 2: "text is empty", 3: "not a string", 4: "invalid JSON", 5: "id is null"}


def _spec(input_path, output_path, model_dir, **output):
    from pipeline.spec import spec_from_dict

    return spec_from_dict(
        {
            "input": {"path": str(input_path)},
            "model": {"path": model_dir, "head": "token-classification", "max_length": 32},
            "head": {"aggregation_strategy": "simple"},
            "output": {"path": str(output_path), "max_error_fraction": 1.0, **output},  # deliberate bad rows
            "resources": SMALL_RESOURCES,
        }
    )


def test_jsonl_bad_rows_become_error_rows_and_int_ids_stay_int(tmp_path, tiny_ner_dir, ray_session):
    from pipeline.job import run

    src = write_jsonl(tmp_path / "in" / "docs.jsonl", BAD_ROWS_LINES)
    out_dir = tmp_path / "out"
    summary = run(_spec(src, out_dir, tiny_ner_dir), progress=lambda msg: None)

    out = read_outputs(str(out_dir))
    assert out["summary"] == json.loads(json.dumps(summary))
    check_counts(out, expect_read=8, expect_written=3, expect_errored=5)
    assert summary["windows"] > 3, "the long document should span several windows"
    assert summary["documents_truncated"] == 0

    # Results: one row per good document, ids int64 as in the input.
    for _, table in out["results"]:
        assert table.schema.field("id").type == pa.int64()
        assert table.column_names == ["id", "entities"]
    texts = {line["id"]: line["text"] for line in BAD_ROWS_LINES if isinstance(line, dict)}
    by_id = {r["id"]: r for r in rows(out["results"])}
    assert sorted(by_id) == [1, 7, 9]
    for ident, r in by_id.items():
        for e in r["entities"]:
            assert e["entity_group"] in {"PER", "ORG", "LOC", "MISC"}
            assert 0 <= e["start"] < e["end"] <= len(texts[ident])
            assert 0.0 <= e["score"] <= 1.0

    # Errors: one row per bad input row, with its place and a reason; ids keep their type too.
    for _, table in out["errors"]:
        assert table.schema.field("id").type == pa.int64()
        assert set(table.column_names) >= {"id", "error", "shard", "row"}
    errors = {r["row"]: r for r in rows(out["errors"])}
    assert sorted(errors) == sorted(EXPECTED_ERRORS)
    for row, reason in EXPECTED_ERRORS.items():
        assert reason in errors[row]["error"], errors[row]
        assert errors[row]["shard"] == "docs"
    assert [errors[r]["id"] for r in (1, 2, 3)] == [2, 3, 4]
    assert errors[4]["id"] is None and errors[5]["id"] is None
    assert "line 5" in errors[4]["error"]  # the file's line number, for people to find it


# -- Parquet without an id column; re-running -------------------------------------------------------

PARQUET_TEXTS = {
    "part-0.parquet": ["Alice works at Acme in Paris.", "Bob visited Berlin.", "Short."],
    "part-1.parquet": ["Zoe flew to Tokyo with Nintendo staff.", None],
}
CARRIED = ["day", "lang"]  # output.columns: a date32 and a string column of the input


def _carried(name: str, i: int) -> dict:
    return {"day": dt.date(2024, 5, 1 + i + 10 * name.startswith("part-1")), "lang": f"{name[:6]}-{i}"}


@pytest.fixture(scope="module")
def parquet_job(tmp_path_factory, tiny_ner_dir, ray_session):
    """A token-granularity NER job over two Parquet shards that have no id column, run once."""
    from pipeline.job import run

    base = tmp_path_factory.mktemp("parquet-job")
    (base / "in").mkdir()
    for name, texts in PARQUET_TEXTS.items():
        extra = [_carried(name, i) for i in range(len(texts))]
        pq.write_table(pa.table({"text": pa.array(texts, type=pa.string()),
                                 "day": pa.array([e["day"] for e in extra], type=pa.date32()),
                                 "lang": pa.array([e["lang"] for e in extra]), "unused": pa.array([1] * len(texts))}),
                       base / "in" / name)
    spec = _spec(base / "in", base / "out", tiny_ner_dir, granularity="token", rows_per_file=4, columns=CARRIED)
    summary = run(spec, progress=lambda msg: None)
    return spec, summary, base / "out"


def test_parquet_without_id_column_gets_stable_ids(parquet_job, tiny_ner_dir):
    from transformers import AutoTokenizer

    _, summary, out_dir = parquet_job
    out = read_outputs(str(out_dir))
    check_counts(out, expect_read=5, expect_written=4, expect_errored=1)

    tokenizer = AutoTokenizer.from_pretrained(tiny_ner_dir)
    expected_ids = {f"{name}:{i}": text for name, texts in PARQUET_TEXTS.items() for i, text in enumerate(texts)}
    results = rows(out["results"])
    for _, table in out["results"]:
        assert table.schema.field("id").type == pa.string()
        assert table.column_names == ["id", *CARRIED, "token_index", "token", "start", "end", "label", "score"]
        assert table.schema.field("day").type == pa.date32()
    # Token granularity: one row per non-special token, in order, with offsets into the text.
    for ident, text in expected_ids.items():
        if text is None:
            continue
        mine = sorted((r for r in results if r["id"] == ident), key=lambda r: r["token_index"])
        expected_tokens = tokenizer.tokenize(text)
        assert [r["token"] for r in mine] == expected_tokens, ident
        assert [r["token_index"] for r in mine] == list(range(len(expected_tokens)))
        name, i = ident.rsplit(":", 1)
        assert all({c: r[c] for c in CARRIED} == _carried(name, int(i)) for r in mine), ident  # every token row
        for r in mine:
            assert text[r["start"] : r["end"]].lower().replace(" ", "") == r["token"].removeprefix("##")
    assert summary["output_rows"] == sum(len(tokenizer.tokenize(t)) for t in expected_ids.values() if t)

    (err,) = rows(out["errors"])
    assert err["id"] == "part-1.parquet:1" and err["shard"] == "part-1" and err["row"] == 1
    assert "text is null" in err["error"]


def test_rerun_resumes_instead_of_duplicating(parquet_job):
    from pipeline.job import run

    spec, first, out_dir = parquet_job
    before = read_outputs(str(out_dir))
    keep = out_dir / "NOTES.txt"  # not a file the job writes: left alone
    keep.write_text("mine")

    second = run(spec, progress=lambda msg: None)

    after = read_outputs(str(out_dir))
    for key in ("rows_read", "rows_written", "rows_errored", "output_rows", "tokens"):
        assert second[key] == first[key], key
    assert sum(t.num_rows for _, t in after["results"]) == sum(t.num_rows for _, t in before["results"])
    assert sum(t.num_rows for _, t in after["errors"]) == sum(t.num_rows for _, t in before["errors"]) == 1
    # Both shards were done: resumed from their markers, the same files (names follow the shard).
    assert (second["shards_resumed"], second["shards_run"]) == (2, 0)
    names = [n for n, _ in after["results"]]
    assert names == [n for n, _ in before["results"]]
    per_shard = {s: [n for n in names if n.startswith(f"{s}-")] for s in ("part-0", "part-1")}
    assert all(ns == [f"{s}-{i:05d}.parquet" for i in range(len(ns))] for s, ns in per_shard.items())
    assert sum(map(len, per_shard.values())) == len(names)
    assert max(t.num_rows for _, t in after["results"]) == 4  # output.rows_per_file caps every file
    assert sorted(r["id"] for r in rows(after["results"])) == sorted(r["id"] for r in rows(before["results"]))
    assert keep.read_text() == "mine"
