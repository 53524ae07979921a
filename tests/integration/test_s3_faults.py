"""The CLI against an S3 store that misbehaves (tests/s3faults.py's proxy in front of moto): one that
throttles and resets connections all through a run loses and duplicates nothing; one that goes down
mid-run makes the job stop with one sentence and exit 1, and the same command, once the store is
back, resumes and completes.

Inputs and the checkpoint are put on S3 through moto directly; the job reaches S3 through the proxy,
whose URL it gets in the spec (`storage.endpoint_url` travels to the Ray workers, environment does
not). Outputs are read back through moto directly and compared, id by id, with a run of the same spec
straight against moto."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration._util import explain, SMALL_RESOURCES, write_spec
from tests.s3faults import faulty_s3  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL_SHARDS, SMALL_DOCS = 6, 40
BIG_SHARDS, BIG_DOCS = 10, 400
DOWN_EXIT_WITHIN_S = 240
WORDS = ["Alice", "Bob", "Carol", "met", "Dave", "in", "Paris", "Berlin", "Rome", "and", "Tokyo", "with", "Acme",
         "staff", "on", "Monday"]


def _docs(tag: str, shard: int, n: int) -> list[dict]:
    return [{"id": f"{tag}{shard}-{i}",
             "text": " ".join(WORDS[(i + k * shard) % len(WORDS)] for k in range(8 + i % 17))}
            for i in range(n)]


def _put_shard(fs, path: str, docs: list[dict]) -> None:
    """JSONL or Parquet by the name's extension, written through moto directly."""
    if path.endswith(".parquet"):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(docs), buf)
        data = buf.getvalue()
    else:
        data = "".join(json.dumps(d) + "\n" for d in docs).encode()
    fs.pipe_file(path, data)


def _upload(fs, local_dir: str, prefix: str) -> None:
    for path in Path(local_dir).rglob("*"):
        if path.is_file():
            fs.put_file(str(path), f"{prefix}/{path.relative_to(local_dir).as_posix()}")


@pytest.fixture(scope="module")
def s3_corpora(s3fs_client, tiny_ner_dir, ray_session):
    """Two corpora and the checkpoint on S3 (through moto directly), under a prefix unique to this module."""
    fs = s3fs_client
    tag = uuid.uuid4().hex[:8]
    small = f"data/faults-{tag}/small"
    big = f"data/faults-{tag}/big"
    for s in range(SMALL_SHARDS):  # half JSONL, half Parquet
        ext = "jsonl" if s % 2 == 0 else "parquet"
        _put_shard(fs, f"{small}/part-{s:02d}.{ext}", _docs("d", s, SMALL_DOCS))
    for s in range(BIG_SHARDS):
        _put_shard(fs, f"{big}/part-{s:02d}.jsonl", _docs("b", s, BIG_DOCS))
    model = f"models/tiny-ner-faults-{tag}"
    _upload(fs, tiny_ner_dir, model)
    return {"tag": tag, "small": f"s3://{small}/", "big": f"s3://{big}/", "model": f"s3://{model}/"}


def _spec(input_path: str, model: str, output: str, endpoint: str, rows_per_batch: int) -> dict:
    return {
        "input": {"path": input_path},
        "model": {"path": model, "head": "token-classification", "max_length": 32},
        "output": {"path": output},
        "storage": {"endpoint_url": endpoint},
        "resources": SMALL_RESOURCES,
        "batching": {"rows_per_batch": rows_per_batch},
    }


def _out(tag: str, name: str) -> str:
    return f"s3://results/faults-{tag}-{name}-{uuid.uuid4().hex[:6]}/"


def _reference(spec: dict) -> dict:
    """An uninterrupted run of `spec` straight against moto, in this process (on the session's Ray)."""
    from pipeline.job import run
    from pipeline.spec import spec_from_dict

    summary = run(spec_from_dict(spec), progress=lambda m: None)
    assert summary["status"] == "complete"
    return summary


def _bare(output: str) -> str:
    return output.split("://", 1)[1].rstrip("/")


def _results(fs, output: str) -> tuple[dict[str, list], int]:
    """(id -> entities over every result file, number of result rows). Read through moto directly."""
    fs.invalidate_cache()
    tables = []
    for p in sorted(fs.glob(f"{_bare(output)}/*.parquet")):
        with fs.open(p, "rb") as f:
            tables.append(pq.read_table(f))
    if not tables:
        return {}, 0
    table = pa.concat_tables(tables)
    ids = table.column("id").to_pylist()
    return dict(zip(ids, table.column("entities").to_pylist())), len(ids)


def _markers(fs, output: str) -> list[str]:
    fs.invalidate_cache()
    try:
        names = fs.ls(f"{_bare(output)}/_shards", detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(n.rsplit("/", 1)[-1] for n in names if n.endswith(".json") and not n.endswith(".pending.json"))


def _tail(err_lines: list[tuple[float, str]], since: float, n: int = 15) -> str:
    """The last n stderr lines from `since` on, each with its time since then, without S3 request logs."""
    shown = [(t, line) for t, line in err_lines if t >= since and line.strip() and '" 200 -' not in line]
    return "\n".join(f"  [{t - since:+6.1f}s] {line[:400]}" for t, line in shown[-n:])


def _cmd(spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", str(spec_path)]


def _env(ray_session: str) -> dict:
    return {**os.environ, "RAY_ADDRESS": ray_session}


def _check_complete(fs, output: str, stdout: str, reference: dict, n_rows: int) -> dict:
    """Exit-0 output: summary complete, every id once, equal to the reference. Returns the summary."""
    summary = json.loads(stdout)
    assert summary["status"] == "complete"
    assert summary["rows_read"] == summary["rows_written"] == n_rows and summary["rows_errored"] == 0
    with fs.open(f"{_bare(output)}/_SUMMARY.json") as f:
        assert json.load(f) == summary
    assert fs.exists(f"{_bare(output)}/_SUCCESS")
    got, n_result_rows = _results(fs, output)
    duplicated, lost = n_result_rows - len(got), len(set(reference) - set(got))
    print(f"rows in {n_rows}, rows out {n_result_rows}, duplicated {duplicated}, lost {lost}")
    assert duplicated == 0 and lost == 0 and len(got) == n_rows
    assert got == reference
    return summary


@pytest.fixture(scope="module")
def small_reference(s3_endpoint, s3fs_client, s3_corpora) -> dict:
    """id -> entities of an uninterrupted run over the small corpus, straight against moto."""
    c = s3_corpora
    ref_out = _out(c["tag"], "small-ref")
    started = time.time()
    _reference(_spec(c["small"], c["model"], ref_out, s3_endpoint, rows_per_batch=16))
    print(f"\nreference run {time.time() - started:.1f} s")
    reference, n_ref = _results(s3fs_client, ref_out)
    assert n_ref == len(reference) == SMALL_SHARDS * SMALL_DOCS
    return reference


def test_s3_that_throttles_and_resets_connections_loses_nothing(
    tmp_path, s3fs_client, s3_corpora, small_reference, ray_session, faulty_s3  # noqa: F811
):
    fs, c, reference = s3fs_client, s3_corpora, small_reference
    n_rows = SMALL_SHARDS * SMALL_DOCS

    faulty_s3.slowdown_share, faulty_s3.reset_share = 0.15, 0.05
    out = _out(c["tag"], "small")
    spec_path = write_spec(tmp_path / "job.yaml", _spec(c["small"], c["model"], out, faulty_s3.url, rows_per_batch=16))
    started = time.time()
    proc = subprocess.run(_cmd(spec_path), cwd=REPO_ROOT, env=_env(ray_session), capture_output=True, text=True,
                          check=False, timeout=240)
    seconds = time.time() - started
    faults = dict(faulty_s3.faults)
    print(f"throttling S3: {faulty_s3.requests} requests through the proxy, faults injected {faults}, "
          f"run {seconds:.1f} s, exit {proc.returncode}")
    assert proc.returncode == 0, explain(proc.stderr)
    summary = _check_complete(fs, out, proc.stdout, reference, n_rows)
    assert summary["shards"] == SMALL_SHARDS and summary["shards_run"] == SMALL_SHARDS
    assert faults.get("slowdown", 0) > 0 and faults.get("reset", 0) > 0


def test_s3_endpoint_down_mid_run_stops_with_one_sentence_and_the_rerun_resumes(
    tmp_path, s3_endpoint, s3fs_client, s3_corpora, ray_session, faulty_s3  # noqa: F811
):
    fs, c = s3fs_client, s3_corpora
    n_rows = BIG_SHARDS * BIG_DOCS
    out = _out(c["tag"], "big")
    spec_path = write_spec(tmp_path / "job.yaml", _spec(c["big"], c["model"], out, faulty_s3.url, rows_per_batch=64))
    env = _env(ray_session)
    first = subprocess.Popen(_cmd(spec_path), cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    pool = ThreadPoolExecutor(1)
    launched = time.time()
    err_lines: list[tuple[float, str]] = []  # (arrival time, line): when the CLI said what
    reader = threading.Thread(
        target=lambda: err_lines.extend((time.time(), line.rstrip("\n")) for line in first.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 180
        while not _markers(fs, out) and first.poll() is None:
            assert time.time() < deadline, "no shard finished within 180 s"
            time.sleep(0.2)
        first_marker_s = time.time() - launched
        assert first.poll() is None, "the run ended before the endpoint went down:\n" + _tail(err_lines, 0)
        faulty_s3.down()
        down_at = time.time()
        done_before = _markers(fs, out)
        # The reference run meanwhile: it gets the CPUs once the failing run's dataset has stopped.
        ref_out = _out(c["tag"], "big-ref")
        ref_run = pool.submit(_reference, _spec(c["big"], c["model"], ref_out, s3_endpoint, rows_per_batch=64))
        ref_run.add_done_callback(lambda f: setattr(f, "done_at", time.time()))
        try:
            first.wait(timeout=DOWN_EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the CLI did not exit within {DOWN_EXIT_WITHIN_S} s of the endpoint going down "
                        f"({len(done_before)} shard(s) done then); stderr tail:\n" + _tail(err_lines, down_at))
        time_to_fail = time.time() - down_at
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    reader.join(timeout=10)
    stdout, stderr = first.stdout.read(), "\n".join(line for _, line in err_lines)
    done_after = _markers(fs, out)
    lines = [line for line in stderr.splitlines() if line.strip()]
    print(f"\nfirst marker {first_marker_s:.1f} s after the start; endpoint down after "
          f"{len(done_before)}/{BIG_SHARDS} shards; CLI exit {first.returncode} {time_to_fail:.1f} s later "
          f"({len(done_after)} marker(s) then); stderr after the endpoint went down:\n" + _tail(err_lines, down_at))
    assert first.returncode == 1, f"exit {first.returncode}; stdout {stdout[-1000:]!r}; stderr:\n{stderr[-3000:]}"
    last = lines[-1]
    assert last.startswith("error: "), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not fs.exists(f"{_bare(out)}/_SUCCESS")
    ref_run.result(timeout=240)
    pool.shutdown()
    print(f"reference run (started when the endpoint went down) done {ref_run.done_at - down_at:.1f} s after that")
    reference, n_ref = _results(fs, ref_out)
    assert n_ref == len(reference) == n_rows

    faulty_s3.up()
    started = time.time()
    rerun = subprocess.run(_cmd(spec_path), cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           check=False, timeout=240)
    print(f"rerun with the endpoint back: exit {rerun.returncode} after {time.time() - started:.1f} s")
    assert rerun.returncode == 0, explain(rerun.stderr)
    summary = _check_complete(fs, out, rerun.stdout, reference, n_rows)
    print(f"shards resumed {summary['shards_resumed']}, run {summary['shards_run']}")
    assert summary["shards_resumed"] >= len(done_before)
    assert summary["shards_resumed"] + summary["shards_run"] == BIG_SHARDS
    # Checked last, so that the resume is checked even when this fails: one sentence that names the
    # cause (the endpoint, unreachable) and what to do.
    assert "rerun the same command" in last, last
    assert f"S3 endpoint {faulty_s3.url} unreachable" in last, last


def test_a_shard_s3_never_serves_fails_alone_and_the_rerun_completes(
    tmp_path, s3fs_client, s3_corpora, small_reference, ray_session, faulty_s3  # noqa: F811
):
    """Every GET of one Parquet shard answered 503 SlowDown: after the retries that shard is a failed
    shard named in the message (not an error row), the others complete, exit 1; with the store healthy
    again the same command does just that shard."""
    fs, c = s3fs_client, s3_corpora
    victim = f"{_bare(c['small'])}/part-01.parquet"
    faulty_s3.slowdown_share = 1.0
    faulty_s3.match = lambda method, path: method == "GET" and path.split("?")[0].endswith(victim)
    out = _out(c["tag"], "one-bad")
    spec_path = write_spec(tmp_path / "job.yaml", _spec(c["small"], c["model"], out, faulty_s3.url, rows_per_batch=16))
    first = subprocess.run(_cmd(spec_path), cwd=REPO_ROOT, env=_env(ray_session), capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 1, explain(first.stderr)
    last = [line for line in first.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: 1 of 6 shard(s) did not finish (part-01.parquet: cannot be read (S3 answered 503 "
                           "SlowDown after retries))"), last
    assert faulty_s3.faults["slowdown"] > 0
    assert _markers(fs, out) == [f"part-{s:02d}.json" for s in range(SMALL_SHARDS) if s != 1]
    assert not fs.exists(f"{_bare(out)}/_SUMMARY.json")

    faulty_s3.slowdown_share, faulty_s3.match = 0.0, None
    rerun = subprocess.run(_cmd(spec_path), cwd=REPO_ROOT, env=_env(ray_session), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, explain(rerun.stderr)
    summary = _check_complete(fs, out, rerun.stdout, small_reference, SMALL_SHARDS * SMALL_DOCS)
    assert (summary["shards_resumed"], summary["shards_run"]) == (SMALL_SHARDS - 1, 1)
