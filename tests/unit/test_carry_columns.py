"""output.columns: chosen input columns ride along to every output row, after the id, with their
Arrow type (Parquet) or JSON's (JSONL); per-token rows repeat their document's values; a column that
is missing from the input or clashes with an output column is refused before any work."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import columns as C
from pipeline.preflight import check_columns
from pipeline.sources import reader_columns
from pipeline.local import LocalRunner
from pipeline.sources import InputError, ShardReader, carry_key, list_shards
from pipeline.spec import InputSpec, SpecError, spec_from_dict
from tests.models import build_bert

TEXTS = ["Alice works at Acme in Paris.", "Bob visited Berlin.", "Short."]
# Arrow types a JSON reader would lose: they must come out as they went in.
CARRIED = {
    "day": pa.array([dt.date(2024, 1, d) for d in (1, 2, 3)], type=pa.date32()),
    "views": pa.array([7, None, 9], type=pa.int16()),
    "tags": pa.array([["a", "b"], [], None], type=pa.list_(pa.string())),
    "price": pa.array([Decimal("1.25"), Decimal("2.50"), None], type=pa.decimal128(9, 2)),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_bert(tmp_path_factory.mktemp("tiny-encoder"), head="base", seed=1)


def _spec(model_dir, input_path="unused", columns=(), head="embedding", **output):
    return spec_from_dict({"input": {"path": str(input_path)}, "model": {"path": str(model_dir), "head": head,
                                                                          "max_length": 16},
                           "output": {"path": "unused", "columns": list(columns), **output}})


def _parquet(path, n_docs=3, **extra):
    table = pa.table({"id": pa.array(range(10, 10 + n_docs), type=pa.int64()),
                      "text": pa.array((TEXTS + [None])[:n_docs]), **extra})
    pq.write_table(table, path)
    return path


def _stages(runner, table):
    return runner.postprocess(runner.predict(runner.tokenize(table)))


@pytest.mark.parametrize("granularity", ["document", "token"])
def test_parquet_columns_keep_their_arrow_type_and_follow_the_id(tmp_path, model_dir, granularity):
    path = _parquet(tmp_path / "in.parquet", **CARRIED, other=pa.array(["x", "y", "z"]))
    spec = _spec(model_dir, path, CARRIED, granularity=granularity)
    columns, optional = reader_columns(spec)
    (shard,) = list_shards(spec.input)
    check_columns(spec, [shard])
    (table,) = ShardReader(columns, "id", None, optional).read(shard)
    assert table.column(carry_key("day")).type == pa.date32()
    out = _stages(LocalRunner(spec), table)
    head_columns = ["embedding"] if granularity == "document" else ["token_index", "token", "start", "end", "embedding"]
    assert [n for n in out.column_names if not n.startswith("_")] == ["id", *CARRIED, *head_columns]
    for name, values in CARRIED.items():
        assert out.schema.field(name).type == values.type, name
    ids = out.column("id").to_pylist()
    by_doc = {10 + i: {name: values[i].as_py() for name, values in CARRIED.items()} for i in range(3)}
    for k, ident in enumerate(ids):  # per-token rows repeat their document's values
        assert {name: out.column(name)[k].as_py() for name in CARRIED} == by_doc[ident]
    if granularity == "token":
        assert len(ids) > 3 and sorted(set(ids)) == [10, 11, 12]
    assert "other" not in out.column_names


def test_jsonl_missing_keys_are_null_and_json_types_are_kept(tmp_path, model_dir):
    lines = [{"id": 1, "text": TEXTS[0], "url": "u1", "rank": 3, "meta": {"a": 1}},
             {"id": 2, "text": TEXTS[1], "rank": 4},  # no url, no meta
             "not json",
             {"id": 4, "text": None, "url": "u4"},  # an error row: carries nothing that matters
             {"id": 5, "text": TEXTS[2], "url": "u5", "rank": 5.5, "meta": {"a": 2}}]
    path = tmp_path / "in.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    spec = _spec(model_dir, path, ["url", "rank", "meta"])
    (shard,) = list_shards(spec.input)
    check_columns(spec, [shard])  # url is missing from the second object: still a column of the input
    columns, optional = reader_columns(spec)
    table = pa.concat_tables(ShardReader(columns, "id", None, optional).read(shard))
    out = _stages(LocalRunner(spec), table)
    good = out.filter(pa.compute.is_null(out.column(C.ERROR)))
    assert good.column_names[:4] == ["id", "url", "rank", "meta"]
    assert good.schema.field("rank").type == pa.float64()  # 3, 4 and 5.5: JSON numbers, one Arrow type
    assert good.schema.field("meta").type == pa.struct([("a", pa.int64())])
    rows = {r["id"]: r for r in good.select(["id", "url", "rank", "meta"]).to_pylist()}
    assert rows == {1: {"id": 1, "url": "u1", "rank": 3.0, "meta": {"a": 1}},
                    2: {"id": 2, "url": None, "rank": 4.0, "meta": None},
                    5: {"id": 5, "url": "u5", "rank": 5.5, "meta": {"a": 2}}}
    assert out.num_rows == 5 and len(out.filter(pa.compute.is_valid(out.column(C.ERROR)))) == 2


def test_values_of_no_one_type_are_written_as_json_text(model_dir):
    runner = LocalRunner(_spec(model_dir, columns=["source"]))
    results, _ = runner.run([{"id": 1, "text": "a b", "source": "web"}, {"id": 2, "text": "c d", "source": 42},
                             {"id": 3, "text": "e f", "source": [1, 2]}])
    assert results.schema.field("source").type == pa.string()
    assert results.column("source").to_pylist() == ["web", "42", "[1, 2]"]


def test_a_column_missing_from_the_input_is_refused_naming_output_columns_and_the_shard(tmp_path, model_dir):
    path = _parquet(tmp_path / "in.parquet", url=pa.array(["a", "b", "c"]))
    spec = _spec(model_dir, path, ["url", "date"])
    with pytest.raises(InputError, match=r"^output\.columns: column 'date' not in in\.parquet \(it has: id, text, url\)"):
        check_columns(spec, list_shards(spec.input))
    # A later shard without it (validation looks at the first): its rows become error rows, none is lost.
    columns, optional = reader_columns(spec)
    (shard,) = list_shards(InputSpec(path=str(path)))
    (table,) = ShardReader(columns, "id", None, optional).read(shard)
    assert all("column 'date' not in in.parquet" in e for e in table.column(C.ERROR).to_pylist())


@pytest.mark.parametrize("columns,granularity,clash", [
    (["embedding"], "document", "'embedding' is also an output column"),
    (["id"], "document", "'id' is also an output column"),
    (["token"], "token", "'token' is also an output column"),
    (["_row"], "document", "'_row' starts with '_'"),
    (["url", "url"], "document", "'url' is listed twice"),
])
def test_a_column_that_clashes_is_refused_before_any_work(model_dir, columns, granularity, clash):
    from pipeline.preflight import validate

    spec = _spec(model_dir, columns=columns, granularity=granularity)
    with pytest.raises(SpecError, match=rf"^output\.columns: {clash}"):
        LocalRunner(spec)
    with pytest.raises(SpecError, match=r"^output\.columns: "):
        validate(spec.model_copy(update={"input": InputSpec(path=str(_write_jsonl_with(model_dir, columns)))}))


def _write_jsonl_with(model_dir, columns):
    """A one-row input holding every carried column, next to the model (validate reads the input first)."""
    path = model_dir.parent / f"in-{'-'.join(columns)}.jsonl"
    path.write_text(json.dumps({"id": 1, "text": "x", **{c: 1 for c in columns}}) + "\n")
    return path
