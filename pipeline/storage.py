"""One way to reach files: fsspec filesystems for local paths and `s3://` (s3fs), with the spec's
endpoint. Credentials come from the standard AWS environment variables and chain, never the spec."""

from __future__ import annotations

import fsspec


def protocol_of(path: str) -> str:
    return path.split("://", 1)[0] if "://" in path else "file"


def strip_protocol(path: str) -> str:
    return path.split("://", 1)[1] if "://" in path else path


def filesystem_for(path: str, storage=None) -> fsspec.AbstractFileSystem:
    protocol = protocol_of(path)
    if protocol in ("s3", "s3a"):
        client_kwargs = {}
        if storage is not None and storage.endpoint_url:
            client_kwargs["endpoint_url"] = storage.endpoint_url
        if storage is not None and storage.region:
            client_kwargs["region_name"] = storage.region
        # skip_instance_cache: a fresh client per call site, so a changed endpoint is never reused stale.
        return fsspec.filesystem("s3", client_kwargs=client_kwargs, skip_instance_cache=True)
    if protocol == "file":
        return fsspec.filesystem("file")
    return fsspec.filesystem(protocol)


def join(prefix: str, *parts: str) -> str:
    return "/".join([prefix.rstrip("/"), *[p.strip("/") for p in parts]])


def with_protocol(path: str, original: str) -> str:
    protocol = protocol_of(original)
    return path if protocol == "file" or "://" in path else f"{protocol}://{path}"
