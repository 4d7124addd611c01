"""The studio's HTTP server: the standard library's ``ThreadingHTTPServer``, one static page and a
small JSON API over ``pipeline.studio.api.Studio``.

    GET  /                    the page (static/index.html, app.js, style.css)
    GET  /api/info            models, classes, options, built-in samples
    GET  /api/samples/<id>    a held-out / built-in image, fitted to the tokenizer's square
    POST /api/generate        {"classes": [..], "n", "seed", "steps", ...} -> grid, images, step strip, AR
    POST /api/fit             {"image": data URL} -> the fitted square image and the resize rule
    POST /api/edit            {"op": inpaint|replace|outpaint, "image", "mask" | "extend", "class", ...}

Errors a user can cause answer 4xx with ``{"error": message}``; anything else is logged with its
traceback and answers 500 with a one-line message (never the traceback).
"""
from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

from maskgit_core.errors import MaskGITError

from pipeline.studio.api import MAX_IMAGE_BYTES, Studio

__all__ = ["make_server", "serve_in_thread", "STATIC_DIR"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".png": "image/png"}
MAX_BODY = 3 * MAX_IMAGE_BYTES  # an image and a mask as base64, plus the JSON around them


class _HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def _handler(studio: Studio) -> type[BaseHTTPRequestHandler]:
    get_routes = {"/api/info": lambda _: studio.info()}
    post_routes = {"/api/generate": studio.generate, "/api/fit": studio.fit, "/api/edit": studio.edit}

    class Handler(BaseHTTPRequestHandler):
        server_version = "maskgit-studio"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args) -> None:  # requests go to logging, not stderr
            log.debug("%s " + fmt, self.address_string(), *args)

        # -------------------------------------------------------------- plumbing
        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _run(self, fn) -> None:
            try:
                self._json(200, fn())
            except _HTTPError as e:
                self.close_connection = True  # the body may be unread
                self._json(e.status, {"error": str(e)})
            except MaskGITError as e:
                self._json(400, {"error": str(e)})
            except Exception:  # a bug: keep the traceback in the log, not in the page
                log.exception("studio: %s %s failed", self.command, self.path)
                self._json(500, {"error": "internal error in the studio (the server log has the details)"})

        def _body(self) -> dict:
            try:
                n = int(self.headers.get("Content-Length", ""))
            except ValueError:
                raise _HTTPError(HTTPStatus.LENGTH_REQUIRED, "the request needs a Content-Length") from None
            if n > MAX_BODY:
                raise _HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                 f"request body of {n} bytes is over the {MAX_BODY // 2**20} MB limit")
            raw = self.rfile.read(n)
            try:
                req = json.loads(raw or b"{}")
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise _HTTPError(HTTPStatus.BAD_REQUEST, f"the request body is not JSON ({e})") from None
            if not isinstance(req, dict):
                raise _HTTPError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
            return req

        # -------------------------------------------------------------- methods
        def do_GET(self) -> None:
            path = urlparse(self.path).path
            if path in get_routes:
                return self._run(lambda: get_routes[path](None))
            if path.startswith("/api/samples/"):
                return self._run(lambda: studio.sample_image(unquote(path.removeprefix("/api/samples/"))))
            if path in post_routes:
                return self._json(405, {"error": f"{path} takes POST"})
            if path.startswith("/api/"):
                return self._json(404, {"error": f"no API endpoint {path}"})
            name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
            f = STATIC_DIR / name
            if "/" in name or f.suffix not in _TYPES or not f.is_file():
                return self._send(404, b"not found", "text/plain; charset=utf-8")
            self._send(200, f.read_bytes(), _TYPES[f.suffix])

        do_HEAD = do_GET

        def do_POST(self) -> None:
            path = urlparse(self.path).path
            if path not in post_routes:
                status = 405 if path in get_routes else 404
                return self._json(status, {"error": f"{path} takes GET" if status == 405 else
                                           f"no API endpoint {path}"})

            def call():
                return post_routes[path](self._body())

            self._run(call)

    return Handler


def make_server(studio: Studio, *, host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    """A bound server (not yet serving): ``server.serve_forever()``, ``server.shutdown()``."""
    server = ThreadingHTTPServer((host, port), _handler(studio))
    server.daemon_threads = True
    return server


def serve_in_thread(studio: Studio, *, host: str = "127.0.0.1", port: int = 0
                    ) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start a server on a daemon thread (tests, benchmarks); port 0 picks a free one."""
    server = make_server(studio, host=host, port=port)
    t = threading.Thread(target=server.serve_forever, name="maskgit-studio", daemon=True)
    t.start()
    return server, t
