"""A fault-injecting HTTP proxy for the object-store fault tests: forwards requests to an S3 server
(moto_server) and answers some of them with a fault instead.

Faults are chosen by the request's arrival number (every ``every``-th request, the kind drawn from a
``random.Random(seed)``), so a run injects the same sequence of faults; the same (method, path) gets
at most ``max_per_request`` faults, so that a client retrying a bounded number of times succeeds. At
most ``max_faults`` faults are injected, and the proxy shuts itself down after ``lifetime_s``.

Kinds: ``503`` (SlowDown, not forwarded), ``500`` (InternalError, not forwarded), ``drop`` (forwarded,
then the connection is closed halfway through the response body, or before the reply when it has
none). ``permanent(method, path)`` may return (status, code) to answer a request with that every time.
"""
from __future__ import annotations

import collections
import http.client
import http.server
import random
import socket
import threading
import time
from typing import Callable

__all__ = ["FaultProxy"]

_XML = "<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{msg}</Message></Error>"
_MESSAGES = {"SlowDown": "Please reduce your request rate.", "InternalError": "We encountered an internal error.",
             "AccessDenied": "Access Denied"}
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


class FaultProxy:
    def __init__(self, upstream: str, *, seed: int = 0, every: int = 4, kinds=("503", "500", "drop"),
                 max_faults: int = 60, max_per_request: int = 2, lifetime_s: float = 300.0,
                 permanent: Callable[[str, str], tuple[int, str] | None] | None = None) -> None:
        host, port = upstream.removeprefix("http://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.every, self.kinds, self.max_faults, self.max_per_request = every, kinds, max_faults, max_per_request
        self.permanent = permanent
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.n_requests = 0
        self.faults: collections.Counter = collections.Counter()  # kind -> injected
        self.per_request: collections.Counter = collections.Counter()  # (method, path) -> faults
        self.log: list[tuple[int, str, str, str]] = []  # (n, method, path, outcome)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

            def _reply_error(self, status: int, code: str) -> None:
                body = b"" if self.command == "HEAD" else _XML.format(code=code, msg=_MESSAGES.get(code, code)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                outcome = proxy._decide(self.command, self.path)
                if isinstance(outcome, tuple):
                    self._reply_error(*outcome)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                finally:
                    conn.close()
                if outcome == "drop" and not data:  # no body to break: close before the reply
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(resp.status, resp.reason)
                for k, v in out_headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if outcome == "drop":  # half the body, then the connection goes away
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.deadline = time.time() + lifetime_s
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    def _decide(self, method: str, path: str):
        """None (forward), 'drop', or (status, code) to answer with."""
        with self.lock:
            self.n_requests += 1
            n = self.n_requests
            if self.permanent is not None and (perm := self.permanent(method, path)) is not None:
                self.faults[f"permanent {perm[0]}"] += 1
                self.log.append((n, method, path, f"permanent {perm[0]}"))
                return perm
            key = (method, path.split("?")[0])
            if (n % self.every or sum(self.faults.values()) >= self.max_faults or time.time() > self.deadline
                    or self.per_request[key] >= self.max_per_request):
                self.log.append((n, method, path, "ok"))
                return None
            kind = self.rng.choice(self.kinds)
            self.faults[kind] += 1
            self.per_request[key] += 1
            self.log.append((n, method, path, kind))
            return {"503": (503, "SlowDown"), "500": (500, "InternalError")}.get(kind, kind)

    def start(self) -> "FaultProxy":
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
