"""The job reading a large Parquet shard in pieces (several read tasks, each a run of row groups)
writes exactly what it writes reading the shard whole."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.unit.test_split_reads import _write


@pytest.mark.slow
def test_a_job_reading_a_shard_in_pieces_writes_what_reading_it_whole_writes(tmp_path, tiny_ner_dir, ray_session):
    from pipeline.job import run
    from pipeline.spec import spec_from_dict
    from tests.integration._util import SMALL_RESOURCES, read_outputs

    (tmp_path / "in").mkdir()
    _write(tmp_path / "in" / "big.parquet", rows=400, row_group_size=50)
    outputs = {}
    for split_mb in (0.001, None):  # ~1 kB: one piece per row group; None: one task
        spec = spec_from_dict({
            "input": {"path": str(tmp_path / "in"), "split_mb": split_mb},
            "model": {"path": tiny_ner_dir, "head": "token-classification", "max_length": 32},
            "output": {"path": str(tmp_path / f"out-{split_mb}")},
            "resources": SMALL_RESOURCES,
        })
        summary = run(spec, progress=lambda msg: None)
        assert summary["rows_read"] == 400 and summary["rows_errored"] == len(range(0, 400, 97))
        out = read_outputs(str(tmp_path / f"out-{split_mb}"))
        outputs[split_mb] = {
            # Scores to 4 places: other batch neighbours pad differently, which moves float32's last bits.
            "results": [{**r, "entities": [{**e, "score": round(e["score"], 4)} for e in r["entities"]]}
                        for r in pa.concat_tables([t for _, t in out["results"]]).sort_by("id").to_pylist()],
            "errors": pa.concat_tables([t for _, t in out["errors"]]).sort_by("id").to_pylist(),
        }
    split, whole = outputs[0.001], outputs[None]
    assert len(split["results"]) == 400 - 5 and len({r["id"] for r in split["results"]}) == 395
    assert split == whole
