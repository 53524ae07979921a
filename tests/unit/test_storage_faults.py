"""S3 through a store that throttles, resets connections and goes away (tests/s3faults.py in front of
moto): filesystem_for's retries ride out a share of failures, give up in bounded time on persistent
ones, and describe_storage_error names the cause."""

from __future__ import annotations

import io
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.retries.standard import ExponentialBackoff

from pipeline import storage
from pipeline.spec import StorageSpec
from pipeline.storage import describe_storage_error, filesystem_for
from tests.s3faults import faulty_s3  # noqa: F401  (the fixture)


@pytest.fixture
def fast_backoff(monkeypatch):
    """botocore's backoff a tenth as long (attempts unchanged), so that many retries fit in a test."""
    delay_amount = ExponentialBackoff.delay_amount
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: delay_amount(self, context) / 10)


def _fs(proxy):
    return filesystem_for("s3://results/", StorageSpec(endpoint_url=proxy.url))


def _prefix() -> str:
    return f"results/faults-{uuid.uuid4().hex[:8]}"


def test_writes_lists_and_reads_survive_slowdowns_and_resets(faulty_s3, fast_backoff):  # noqa: F811
    fs, prefix = _fs(faulty_s3), _prefix()
    faulty_s3.slowdown_share, faulty_s3.reset_share = 0.3, 0.1
    # One call at a time: the seeded fault sequence then meets the requests in the same order every run.
    small = {f"{prefix}/small-{i:02d}.bin": f"object {i}\n".encode() * (i + 1) for i in range(20)}
    for path, data in small.items():
        fs.pipe_file(path, data)
    big = bytes(range(256)) * (12 * 2**20 // 256)
    with fs.open(f"{prefix}/big.bin", "wb", block_size=5 * 2**20) as f:  # multipart: 3 parts of <= 5 MiB
        for start in range(0, len(big), 2**20):  # s3fs sends one part per flush, i.e. per full block
            f.write(big[start : start + 2**20])
    table = pa.table({"id": list(range(1000)), "text": [f"document {i}" for i in range(1000)]})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=100)
    fs.pipe_file(f"{prefix}/table.parquet", buf.getvalue())

    assert sorted(fs.ls(prefix, detail=False)) == sorted([*small, f"{prefix}/big.bin", f"{prefix}/table.parquet"])
    for path, data in small.items():
        assert fs.cat_file(path) == data
    with fs.open(f"{prefix}/big.bin", "rb", block_size=4 * 2**20) as f:  # ranged GETs
        assert b"".join(iter(lambda: f.read(2**20), b"")) == big
    with fs.open(f"{prefix}/table.parquet", "rb") as f:
        assert pq.read_table(f).equals(table)
    assert faulty_s3.faults["slowdown"] >= 10 and faulty_s3.faults["reset"] >= 3, faulty_s3.faults


def test_a_key_that_always_throttles_fails_in_bounded_time(faulty_s3, fast_backoff):  # noqa: F811
    fs, path = _fs(faulty_s3), f"{_prefix()}/hot.bin"
    fs.pipe_file(path, b"hot")
    faulty_s3.match = lambda method, request_path: method == "GET" and request_path.startswith(f"/{path}")
    faulty_s3.slowdown_share = 1.0
    start = time.monotonic()
    with pytest.raises(OSError) as caught:
        fs.cat_file(path)
    assert time.monotonic() - start < 20  # production backoff: up to 2 x 51 s
    assert describe_storage_error(caught.value) == "S3 answered 503 SlowDown after retries"
    # Both layers retried: s3fs around the call, botocore around each request.
    assert faulty_s3.faults["slowdown"] == storage.S3_RETRIES_PER_CALL * storage.S3_ATTEMPTS_PER_REQUEST


def test_an_endpoint_that_is_down_fails_within_a_minute_then_recovers(faulty_s3):  # noqa: F811
    # Production backoff: this is the bound the job's users get.
    fs, path = _fs(faulty_s3), f"{_prefix()}/a.bin"
    fs.pipe_file(path, b"a")  # leaves an idle keep-alive connection behind, which down() must close too
    faulty_s3.down()
    start = time.monotonic()
    with pytest.raises(EndpointConnectionError) as caught:  # botocore's own: not an OSError
        fs.ls(path.rsplit("/", 1)[0], refresh=True)
    assert time.monotonic() - start < 60
    assert describe_storage_error(caught.value) == f"S3 endpoint {faulty_s3.url} unreachable (connection refused)"
    faulty_s3.up()
    assert fs.ls(path.rsplit("/", 1)[0], detail=False, refresh=True) == [path]


def test_missing_buckets_and_denied_access_are_named(faulty_s3):  # noqa: F811
    with pytest.raises(FileNotFoundError) as caught:
        _fs(faulty_s3).ls("no-such-bucket-here/x")
    assert describe_storage_error(caught.value) == "no such bucket 'no-such-bucket-here'"
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")
    try:
        raise PermissionError("Access Denied") from denied
    except PermissionError as e:
        assert describe_storage_error(e) == "access denied (check the AWS credentials)"


def test_the_impatient_client_reads_and_writes_and_names_a_failure(faulty_s3):  # noqa: F811
    # Best-effort records (progress, lease heartbeats) go through it: it must do the call, once.
    fs, prefix = filesystem_for("s3://results/", StorageSpec(endpoint_url=faulty_s3.url), patient=False), _prefix()
    fs.pipe(f"{prefix}/_PROGRESS.json", b"{}")
    assert fs.cat(f"{prefix}/_PROGRESS.json") == b"{}"
    with pytest.raises(FileNotFoundError):
        fs.cat(f"{prefix}/missing.json")
