"""A fault-injecting HTTP proxy for S3 tests.

It sits between a client (boto3, a worker subprocess) and a real S3 protocol server (moto) and forwards
every request unchanged, except the ones a test told it to break:

    proxy.fail(2, status=503, code="SlowDown")           # the next 2 requests get 503 SlowDown
    proxy.fail(1, status=500, code="InternalError", method="PUT", path="shards/")
    proxy.fail(None, status=503)                          # every matching request, until reset()
    proxy.fail(None, status=501, code="NotImplemented", header="If-None-Match")  # requests carrying it
    proxy.drop(1, method="GET")                           # read the request, close without answering
    proxy.count(method="GET", path="model/")              # requests seen (faulted ones included)
    proxy.seen                                            # each: method, path, status, signing access key

Rules are tried in the order they were added; the first one that matches and has uses left applies.
Paths are matched as substrings of the request path (path-style addressing: ``/bucket/key?query``).
"""

from __future__ import annotations

import http.client
import logging
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
}


@dataclass
class Rule:
    remaining: int | None  # None: forever
    action: str  # "fail" or "drop"
    status: int = 503
    code: str = "SlowDown"
    method: str | None = None
    path: str | None = None
    header: str | None = None  # only requests that carry this header
    hits: int = 0

    def matches(self, method: str, path: str, headers: Any = None) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.method and self.method.upper() != method:
            return False
        if self.header and (headers is None or self.header not in headers):
            return False
        return not (self.path and self.path not in path)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    status: int  # 0 when the connection was dropped
    access_key: str = ""  # whose credentials signed the request (SigV4 Credential=<key>/...)


class FaultProxy:
    """A threaded HTTP proxy to ``upstream`` (``http://host:port``) that injects S3 faults on demand."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self.seen: list[Seen] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def reset(self) -> None:
        """Forget all rules and the request log."""
        with self._lock:
            self._rules.clear()
            self.seen.clear()

    def fail(
        self,
        times: int | None = 1,
        *,
        status: int = 503,
        code: str = "SlowDown",
        method: str | None = None,
        path: str | None = None,
        header: str | None = None,
    ) -> Rule:
        """Answer the next ``times`` matching requests (None: all of them) with an S3 error document."""
        return self._add(Rule(times, "fail", status, code, method, path, header))

    def drop(self, times: int | None = 1, *, method: str | None = None, path: str | None = None) -> Rule:
        """Read the next ``times`` matching requests and close the connection without an answer."""
        return self._add(Rule(times, "drop", method=method, path=path))

    def count(self, *, method: str | None = None, path: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for s in self.seen
                if (method is None or s.method == method.upper()) and (path is None or path in s.path)
            )

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def _take_rule(self, method: str, path: str, headers: Any = None) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path, headers):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    rule.hits += 1
                    return rule
        return None

    def _record(self, method: str, path: str, status: int, access_key: str = "") -> None:
        with self._lock:
            self.seen.append(Seen(method, path, status, access_key))


def _error_document(code: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>Injected by the test proxy</Message>"
        "<RequestId>fault-proxy</RequestId></Error>"
    ).encode()


def _make_handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue handling for large PUTs

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes; without this, Nagle + delayed ACK add 40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("proxy: " + format, *args)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _handle(self) -> None:
            method, path = self.command, self.path
            body = self._read_body()
            signed = re.search(r"Credential=([^/,\s]+)/", self.headers.get("Authorization", ""))
            key = signed.group(1) if signed else ""
            rule = proxy._take_rule(method, path, self.headers)
            if rule is not None and rule.action == "drop":
                proxy._record(method, path, 0, key)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if rule is not None:
                payload = b"" if method == "HEAD" else _error_document(rule.code)
                proxy._record(method, path, rule.status, key)
                self.send_response(rule.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            status, headers, payload = self._forward(method, path, body)
            proxy._record(method, path, status, key)
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            length = dict((k.lower(), v) for k, v in headers).get("content-length", str(len(payload)))
            self.send_header("Content-Length", length if method == "HEAD" else str(len(payload)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(payload)

        def _forward(self, method: str, path: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(*proxy._upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.getheaders(), resp.read()
            finally:
                conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler
