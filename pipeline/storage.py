"""One way to reach files: fsspec filesystems for local paths and `s3://` (s3fs), with the spec's
endpoint. Credentials come from the standard AWS environment variables and chain, never the spec."""

from __future__ import annotations

import functools
import os
import posixpath
from urllib.parse import urlsplit

import fsspec

# Stores throttle (503 SlowDown) and drop connections under load; jobs must ride that out, yet fail
# within a minute when the endpoint is gone. Two retry layers:
# - botocore retries each HTTP request: "standard" mode retries 500/502/503/504, throttling codes
#   (SlowDown included), refused/reset connections and timeouts, after full-jitter backoff of up to
#   1, 2, 4, 8, 16, 20 s. ("adaptive" adds a rate limiter learnt per client, but every worker and
#   call site has its own client, and failures that do not come from a rate would slow it for nothing.)
# - s3fs retries the whole call once more after SlowDown, dropped connections, read timeouts and bodies
#   that break off mid-read (which botocore never sees); not after refused connections or other errors.
#   s3fs 2026.9 takes no `retries=` argument (it would reach AioSession and fail), hence the attribute.
# So 30% failing requests fail a call with odds of 0.3 ** 7 ~ 2e-4 or less, and an endpoint that refuses
# connections fails after at most 51 s of backoff (25 s on average); one that drops packets adds up
# to 7 connect timeouts of 3 s. A reachable store answers a connect in milliseconds.
S3_ATTEMPTS_PER_REQUEST = 7
S3_RETRIES_PER_CALL = 2
S3_CONNECT_TIMEOUT_S = 3
S3_READ_TIMEOUT_S = 15  # s3fs's default: the longest silence allowed within one response
# Best-effort records (progress, lease heartbeats) use an impatient client: when the store is down
# they must not hold the run's exit for a minute each; the next heartbeat tries again anyway.
S3_ATTEMPTS_IMPATIENT = 2


def protocol_of(path: str) -> str:
    return path.split("://", 1)[0] if "://" in path else "file"


def strip_protocol(path: str) -> str:
    return path.split("://", 1)[1] if "://" in path else path


def normal_path(path: str) -> str:
    """The path the job means, spelled one way, for comparing paths and for local roots: a local path
    loses `file://`, gets `~` expanded, `.`, `..` and `//` folded and its symlinks resolved (as far as
    it exists); an object store's keeps its protocol and loses repeated and trailing slashes."""
    protocol, bare = protocol_of(path), strip_protocol(path)
    if protocol == "file":
        return os.path.realpath(os.path.expanduser(bare or "."))
    return f"{protocol}://{posixpath.normpath('/' + bare).lstrip('/')}"


def filesystem_for(path: str, storage=None, patient: bool = True) -> fsspec.AbstractFileSystem:
    protocol = protocol_of(path)
    if protocol in ("s3", "s3a"):
        endpoint = storage.endpoint_url if storage is not None else None
        region = storage.region if storage is not None else None
        credentials = tuple(os.environ.get(name) for name in _CREDENTIAL_ENV)
        return _s3_filesystem(endpoint, region, patient, credentials, os.getpid())
    if protocol == "file":
        return fsspec.filesystem("file")
    return fsspec.filesystem(protocol)


# What botocore reads when it makes a client: a client made under other credentials is another client.
_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                   "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


@functools.lru_cache(maxsize=16)
def _s3_filesystem(endpoint: str | None, region: str | None, patient: bool, credentials: tuple, pid: int):
    """One S3 client per process for each endpoint, region, patience and set of credentials (and pid: a
    forked child makes its own). Making a client costs about 0.14 s of CPU (botocore loads its endpoint
    and service data), more than reading a small shard: a client per file opened made per-shard CPU the
    bound of a run over many small S3 shards. Listings are never cached (`use_listings_cache=False`):
    other processes write where the job lists, and a shared client must not answer from an old listing."""
    client_kwargs = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if region:
        client_kwargs["region_name"] = region
    config_kwargs = {  # a fresh dict each time: botocore normalises the retries entry in place
        "retries": {"total_max_attempts": S3_ATTEMPTS_PER_REQUEST if patient else S3_ATTEMPTS_IMPATIENT,
                    "mode": "standard"},
        "connect_timeout": S3_CONNECT_TIMEOUT_S,
        "read_timeout": S3_READ_TIMEOUT_S,
    }
    # skip_instance_cache: this cache, keyed as above, decides which calls share a client.
    # max_concurrency=1: s3fs fetches a whole file in concurrent ranges only after asking its size (a
    # HEAD per file); the files the job fetches whole (markers, records, parts) take one GET each.
    fs = fsspec.filesystem("s3", client_kwargs=client_kwargs, config_kwargs=config_kwargs,
                           use_listings_cache=False, max_concurrency=1, skip_instance_cache=True)
    # s3fs's `retries` counts attempts of a call, not retries: 0 would make none at all (and raise
    # a TypeError instead of the error); 1 is one attempt, botocore's retries inside it.
    fs.retries = S3_RETRIES_PER_CALL if patient else 1
    return fs


_THROTTLING_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}
_CREDENTIAL_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}


_SET_CREDENTIALS = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run where an instance role provides them"
)


def storage_cause(exc: BaseException) -> str | None:
    """A short sentence fragment for a failed storage call, for one-line job errors. s3fs turns botocore
    errors into OSErrors and botocore wraps aiohttp's, so the telling exception can sit anywhere in the
    chain: the first botocore one wins. None when no storage client error is in the chain."""
    from botocore.exceptions import ClientError, ConnectTimeoutError, CredentialRetrievalError, HTTPClientError
    from botocore.exceptions import ConnectionError as EndpointError
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError, ProfileNotFound

    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for e in chain:
        if isinstance(e, ClientError):
            return _describe_client_error(e)
        if isinstance(e, NoCredentialsError):
            return f"no AWS credentials found; {_SET_CREDENTIALS}"
        if isinstance(e, PartialCredentialsError):
            return f"incomplete AWS credentials ({e}); {_SET_CREDENTIALS}"
        if isinstance(e, ProfileNotFound):
            return f"{e}; set AWS_PROFILE to a profile in ~/.aws/config, or unset it"
        if isinstance(e, CredentialRetrievalError):
            return f"cannot get AWS credentials ({e}); {_SET_CREDENTIALS}"
        if isinstance(e, (EndpointError, HTTPClientError)):
            url = urlsplit(e.kwargs.get("endpoint_url") or "")
            endpoint = f"S3 endpoint {url.scheme}://{url.netloc}" if url.netloc else "S3 endpoint"
            if isinstance(e, ConnectTimeoutError):
                return f"{endpoint} unreachable (connect timed out)"
            if any(isinstance(c, ConnectionRefusedError) for c in chain):
                return f"{endpoint} unreachable (connection refused)"
            if any(isinstance(c, ConnectionResetError) for c in chain):
                return f"{endpoint} reset the connection, also on retries"
            return f"{endpoint} failed: {e}"
    return None


def describe_storage_error(exc: BaseException) -> str:
    """storage_cause, or else the exception's own message."""
    return storage_cause(exc) or str(exc) or type(exc).__name__


def _describe_client_error(e) -> str:
    error = e.response.get("Error", {})
    code = error.get("Code", "")
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code in _THROTTLING_CODES or status >= 500:
        return f"S3 answered {status} {code} after retries"
    if code in _CREDENTIAL_CODES or status == 403:
        return "access denied (check the AWS credentials)"
    if code == "NoSuchBucket":
        return f"no such bucket {error['BucketName']!r}" if error.get("BucketName") else "no such bucket"
    if code in ("NoSuchKey", "404"):
        return f"no such object {error['Key']!r}" if error.get("Key") else "no such object"
    return f"S3 error {code or status}: {error.get('Message', e)}"


def with_protocol(path: str, original: str) -> str:
    protocol = protocol_of(original)
    return path if protocol == "file" or "://" in path else f"{protocol}://{path}"
