"""A fault-injecting HTTP proxy in front of an S3 endpoint (moto's server), for testing how the job's
S3 client copes with a store that throttles, drops connections or goes away.

    with FaultyS3(upstream_url) as proxy:
        proxy.slowdown_share = 0.3                    # 30% of requests: 503 SlowDown, not forwarded
        proxy.reset_share = 0.1                       # another 10%: connection reset, no response
        proxy.match = lambda method, path: method == "GET" and "/data/key" in path   # faults only here
        proxy.down(); proxy.up()                      # connection refused in between
        proxy.requests, proxy.faults["slowdown"], proxy.faults["reset"]

Point clients at `proxy.url`. Requests are forwarded as received (botocore signs for the proxy's
host:port, which moto does not check), one upstream connection per request; bodies are read whole,
so chunked uploads reach moto with a Content-Length. Fault decisions come from a seeded RNG: one draw
per matching request, so a share is of all matching requests.

Test modules get the fixture with `from tests.s3faults import faulty_s3  # noqa: F401`.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import random
import socket
import struct
import threading
from typing import Callable
from urllib.parse import urlsplit

import pytest

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)
# Hop-by-hop headers, and the ones this proxy settles itself (it reads whole bodies).
_NOT_FORWARDED = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
                  "transfer-encoding", "content-length", "expect"}


class FaultyS3:
    def __init__(self, upstream: str, seed: int = 0):
        self.upstream = urlsplit(upstream).netloc
        self.slowdown_share = 0.0
        self.reset_share = 0.0
        self.match: Callable[[str, str], bool] | None = None
        self.requests = 0
        self.verbs: collections.Counter[str] = collections.Counter()  # LIST, HEAD, GET, PUT, DELETE, POST
        self.faults: collections.Counter[str] = collections.Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: http.server.ThreadingHTTPServer | None = None
        self.port = 0  # the first start picks a free one; up() reopens the same

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultyS3:
        self.up()
        return self

    def stop(self) -> None:
        self.down()

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()

    def up(self) -> None:
        if self._server is None:
            self._server = _Server(("127.0.0.1", self.port), _Handler, self)
            self.port = self._server.server_address[1]
            # A short poll, so that down() (shutdown waits for the loop to notice) takes no half second.
            threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def down(self) -> None:
        """Close the listener, so connecting is refused, and the open connections: botocore keeps idle
        ones alive and would otherwise go on reaching the proxy through them."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _fault_for(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            self.verbs[s3_verb(method, path)] += 1
            if self.match is not None and not self.match(method, path):
                return None
            draw = self._rng.random()
            fault = ("slowdown" if draw < self.slowdown_share
                     else "reset" if draw < self.slowdown_share + self.reset_share else None)
            if fault:
                self.faults[fault] += 1
            return fault


def s3_verb(method: str, path: str) -> str:
    """The S3 operation a request is, by its verb: a GET of a bucket with list parameters is a LIST, a
    POST with ?delete a (bulk) DELETE."""
    bucket_only = urlsplit(path).path.strip("/").count("/") == 0
    query = urlsplit(path).query
    if method == "GET" and (bucket_only or "list-type" in query or "prefix=" in query):
        return "LIST"
    if method == "POST" and "delete" in query:
        return "DELETE"
    return method


class _Server(http.server.ThreadingHTTPServer):
    block_on_close = False  # down() must not wait for handlers parked on idle keep-alive connections

    def __init__(self, address, handler, proxy: FaultyS3):
        self.proxy = proxy
        super().__init__(address, handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects
    server: _Server

    def setup(self):
        super().setup()
        with self.server.proxy._lock:
            self.server.proxy._connections.add(self.connection)

    def finish(self):
        with self.server.proxy._lock:
            self.server.proxy._connections.discard(self.connection)
        super().finish()

    def log_message(self, format, *args):  # quiet: pytest shows stderr of failing tests
        pass

    def _relay(self):
        # Read the whole body first, even for a request about to fail: what is left unread would be
        # taken for the next request on this connection.
        body = self._read_body()
        fault = self.server.proxy._fault_for(self.command, self.path)
        if fault == "reset":
            # Linger 0: close sends RST instead of FIN, as a crashing server or load balancer does.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # the socket's real close waits for its file objects (wfile is none)
            self.connection.close()
            self.close_connection = True
            return
        if fault == "slowdown":
            self._respond(503, "Slow Down", [("Content-Type", "application/xml")], SLOWDOWN_BODY)
            return
        upstream = http.client.HTTPConnection(self.server.proxy.upstream, timeout=60)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _NOT_FORWARDED:
                    upstream.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            response = upstream.getresponse()
            content = response.read()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _NOT_FORWARDED]
            if self.command == "HEAD":
                # No body, but the object's length: s3fs takes the file size from it.
                headers += [(k, v) for k, v in response.getheaders() if k.lower() == "content-length"]
            self._respond(response.status, response.reason, headers, content)
        finally:
            upstream.close()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";", 1)[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers, then the blank line
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _respond(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay


@pytest.fixture
def faulty_s3(s3_endpoint):
    """A started FaultyS3 in front of moto's S3 (tests/conftest.py's `s3_endpoint`), without faults
    until the test sets them; stopped afterwards."""
    with FaultyS3(s3_endpoint) as proxy:
        yield proxy
