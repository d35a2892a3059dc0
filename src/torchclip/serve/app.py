"""``torchclip serve``: a small web app and JSON API over an index, on 127.0.0.1 only.

The standard library's ``ThreadingHTTPServer`` is enough for a local tool and adds no dependency; the
page is static HTML/JS that talks to the JSON API:

| method, path | answer |
| --- | --- |
| ``GET /``, ``/static/app.js``, ``/static/style.css``, ``/favicon.svg`` | the page |
| ``GET /api/info`` | collection size, model, label set, upload limits |
| ``GET /api/search?q=TEXT&k=12`` | ``{"results": [...]}``: text -> image |
| ``GET /api/similar?row=N&k=12`` | neighbours of an indexed item, and its zero-shot labels |
| ``POST /api/upload?k=12`` (body: the image bytes, ``Content-Type: image/...``) | neighbours and labels |
| ``GET /image/N``, ``GET /thumb/N`` | the indexed image of row N, or a JPEG thumbnail of it |

Every result carries ``image``/``thumb`` URLs built from its row number; no request ever names a file, and
``files.CollectionFiles`` confines what a row can reach to the collection root. Uploads are limited in size
(checked from ``Content-Length`` before reading), type (the header *and* the decoded format) and pixel
count (checked from the image header before decoding); their preprocessing is bounded by the model's
input size whatever the aspect ratio.

Only loopback clients can connect, but any web page can make a browser send requests to loopback, and a
DNS-rebinding page can even read the answers, because the browser takes the server for the page's own
origin. So every request must carry ``Host: 127.0.0.1:PORT`` or ``localhost:PORT``, and a POST with an
``Origin`` must come from one of those origins (403 otherwise). Each request must arrive within
``ServeConfig.timeout`` seconds (idle keep-alive connections close after as long), at most
``max_connections`` are served at once, and a client that hangs up mid-answer is not an error.
"""

from __future__ import annotations

import io
import json
import re
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..embed.decode import open_image
from ..search.query import Hit, Searcher
from ..transforms import ImageDecodeError
from .files import CollectionFiles, FileRefused

__all__ = ["ServeConfig", "create_server", "serve_in_thread", "UPLOAD_TYPES"]  # the command line: serve/cli.py

# Content-Type -> the Pillow format the bytes must actually decode as.
UPLOAD_TYPES: dict[str, str] = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP",
                                "image/gif": "GIF", "image/bmp": "BMP"}
_STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
           "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/static/style.css": ("style.css", "text/css; charset=utf-8"),
           "/favicon.svg": ("favicon.svg", "image/svg+xml")}
_ROW_ROUTE = re.compile(r"/(image|thumb)/(\d{1,12})")
_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'"


class ServeConfig:
    """Limits of the app: upload bytes and pixels, results per query, where the images live, seconds a
    request may take to arrive (and an idle connection may stay open), and connections served at once."""

    def __init__(self, max_upload_bytes: int = 8 << 20, max_upload_pixels: int = 40_000_000,
                 default_k: int = 12, max_k: int = 100, root: str | Path | None = None,
                 timeout: float = 30.0, max_connections: int = 32) -> None:
        if not timeout > 0 or max_connections < 1:
            raise ValueError(f"timeout must be > 0 and max_connections >= 1, got {timeout}, {max_connections}")
        self.max_upload_bytes = max_upload_bytes
        self.max_upload_pixels = max_upload_pixels
        self.default_k = default_k
        self.max_k = max_k
        self.root = root
        self.timeout = timeout
        self.max_connections = max_connections


def _load_static() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("torchclip.serve") / "static"
    return {route: ((folder / name).read_bytes(), mime) for route, (name, mime) in _STATIC.items()}


class _DeadlineReader(io.RawIOBase):
    """A socket reader that gives up at the handler's deadline, however slowly the bytes trickle in.

    A plain socket timeout bounds each wait, so a client sending one byte just inside it would hold a thread
    indefinitely; here each wait is also cut to the time left for the whole request.
    """

    def __init__(self, sock: socket.socket, handler: _Handler) -> None:
        self.sock, self.handler = sock, handler

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        left = self.handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.sock.settimeout(min(self.handler.timeout, left))
        try:
            return self.sock.recv_into(buf)
        finally:
            self.sock.settimeout(self.handler.timeout)


class _Handler(BaseHTTPRequestHandler):
    server_version = "torchclip-serve"
    protocol_version = "HTTP/1.1"
    app: _App  # set on the subclass made by create_server
    timeout: float  # per socket operation, and for a whole request to arrive (set by create_server)
    deadline = 0.0

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain reader: releases its hold on the socket
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle_one_request(self) -> None:
        # The wait for the request line counts too: an idle keep-alive connection closes when it runs out.
        self.deadline = time.monotonic() + self.timeout
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if self.app.verbose:
            super().log_message(format, *args)

    # ---- who may ask -----------------------------------------------------------------------------------

    def _refused(self) -> str | None:
        """Why this request is refused (a foreign Host, or a POST from a foreign Origin), else None."""
        host = (self.headers.get("Host") or "").strip().lower()
        if host not in self.app.hosts:
            return f"unexpected Host {host or '(none)'!r}: this server answers to {self.app.hosts[0]}"
        origin = self.headers.get("Origin")
        if self.command == "POST" and origin is not None and origin.strip().lower() not in self.app.origins:
            return f"requests from origin {origin!r} are not accepted"
        return None

    def _dispatch(self, route: Any) -> None:
        """Run a route behind the Host/Origin check; an unexpected error answers 500 and is logged once."""
        why = self._refused()
        if why is not None:
            self._error(403, why, close=True)
            return
        try:
            route()
        except (ConnectionError, TimeoutError):
            raise  # the client went away or stalled: nothing to answer, and not an error of ours
        except Exception:
            sys.stderr.write(f"torchclip serve: error on {self.command} {self.path}:\n{traceback.format_exc()}")
            self._error(500, "internal error", close=True)

    # ---- responses -------------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, mime: str, *, cache: bool = False, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", mime)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, *, close: bool = False) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json", close=close)

    def _error(self, status: int, message: str, *, close: bool = False) -> None:
        self._json(status, {"error": message, "status": status}, close=close)

    # ---- routing ---------------------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch(self._get)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch(self._post)

    def _get(self) -> None:
        url = urlsplit(self.path)
        try:
            if url.path in self.app.static:
                body, mime = self.app.static[url.path]
                self._send(200, body, mime)
            elif m := _ROW_ROUTE.fullmatch(url.path):
                self._row_file(m.group(1), int(m.group(2)))
            elif url.path == "/api/info":
                self._json(200, self.app.info())
            elif url.path == "/api/search":
                self._search(parse_qs(url.query))
            elif url.path == "/api/similar":
                self._similar(parse_qs(url.query))
            else:
                self._error(404, "not found")
        except ValueError as exc:
            self._error(400, str(exc))

    def _post(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/api/upload":
            self._error(404, "not found", close=True)
            return
        try:
            self._upload(parse_qs(url.query))
        except ValueError as exc:
            self._error(400, str(exc), close=True)

    # ---- endpoints -------------------------------------------------------------------------------------

    def _k(self, query: dict[str, list[str]]) -> int:
        raw = query.get("k", [str(self.app.config.default_k)])[0]
        if not raw.isdigit() or not 1 <= int(raw) <= self.app.config.max_k:
            raise ValueError(f"k must be an integer in [1, {self.app.config.max_k}]")
        return int(raw)

    def _row_file(self, kind: str, row: int) -> None:
        try:
            if kind == "thumb":
                self._send(200, self.app.files.thumbnail(row), "image/jpeg", cache=True)
            else:
                data, mime = self.app.files.read(row)
                self._send(200, data, mime, cache=True)
        except FileRefused as exc:
            self._error(exc.status, "not available" if exc.status == 403 else "not found")

    def _search(self, query: dict[str, list[str]]) -> None:
        text = query.get("q", [""])[0].strip()
        if not text:
            raise ValueError("missing query text (?q=...)")
        if len(text) > 1000:
            raise ValueError("query text longer than 1000 characters")
        hits = self.app.searcher.search_text(text, self._k(query))
        self._json(200, {"query": text, "results": self.app.results(hits)})

    def _similar(self, query: dict[str, list[str]]) -> None:
        raw = query.get("row", [""])[0]
        if not raw.isdigit() or int(raw) >= len(self.app.searcher.index):
            raise ValueError("row must be the row number of an indexed item")
        row = int(raw)
        s = self.app.searcher
        hits = s.similar(row, self._k(query))
        labels = s.label_vector(s.index.vector(row))
        self._json(200, {"row": row, "results": self.app.results(hits), "labels": labels})

    def _upload(self, query: dict[str, list[str]]) -> None:
        cfg = self.app.config
        length = self.headers.get("Content-Length")
        if length is None or self.headers.get("Transfer-Encoding"):
            self._error(411, "send the image as the request body with a Content-Length", close=True)
            return
        if not length.isdigit():
            raise ValueError("bad Content-Length")
        if int(length) > cfg.max_upload_bytes:
            # Refused before reading: the connection is closed instead of draining the body.
            self._error(413, f"upload of {int(length):,} bytes exceeds the limit of {cfg.max_upload_bytes:,} bytes",
                        close=True)
            return
        mime = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if mime not in UPLOAD_TYPES:
            self._error(415, f"unsupported upload type {mime or 'none'!r}; accepted: {', '.join(UPLOAD_TYPES)}",
                        close=True)
            return
        k = self._k(query)
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            raise ValueError("upload ended early")
        try:
            img = open_image(body, name="upload", formats=tuple(sorted(set(UPLOAD_TYPES.values()))),
                             max_pixels=cfg.max_upload_pixels)
        except ImageDecodeError as exc:
            status = 413 if "more than the limit" in str(exc) else 400
            self._error(status, f"could not use the upload: {str(exc).replace('cannot load image upload: ', '')}")
            return
        vec = self.app.searcher.encode_image([img])
        hits = self.app.searcher.search_vector(vec, k)
        self._json(200, {"width": img.width, "height": img.height, "results": self.app.results(hits),
                         "labels": self.app.searcher.label_vector(vec)})


class _App:
    """What the handler threads share: searcher, files, limits and the static page."""

    def __init__(self, searcher: Searcher, config: ServeConfig, verbose: bool = False) -> None:
        self.searcher = searcher
        self.config = config
        self.verbose = verbose
        root = config.root or searcher.index.meta.get("root")
        self.files = CollectionFiles(searcher.index.records, root)
        self.static = _load_static()
        self.hosts: list[str] = []  # accepted Host headers, then origins: set once the port is known
        self.origins: list[str] = []

    def bind(self, port: int) -> None:
        names = ["127.0.0.1", "localhost"]
        self.hosts = [f"{n}:{port}" for n in names] + (names if port == 80 else [])
        self.origins = [f"http://{h}" for h in self.hosts]

    def results(self, hits: list[Hit]) -> list[dict[str, Any]]:
        out = []
        for h in hits:
            d = {"row": h.row, "id": h.id, "score": round(h.score, 5)}
            if "text" in h.record:
                d["text"] = h.record["text"]
            if "source" in h.record:
                d["image"], d["thumb"] = f"/image/{h.row}", f"/thumb/{h.row}"
            out.append(d)
        return out

    def info(self) -> dict[str, Any]:
        meta = self.searcher.index.meta
        model = meta.get("model") or {}
        return {
            "count": len(self.searcher.index),
            "kind": self.searcher.index.kind,
            "modality": meta.get("modality"),
            "model": model.get("model"),
            "labels": self.searcher.labels.names if self.searcher.labels else [],
            "max_upload_bytes": self.config.max_upload_bytes,
            "upload_types": list(UPLOAD_TYPES),
        }


class _Server(ThreadingHTTPServer):
    """Threads per connection, at most ``slots`` at once; a client hanging up is not logged as an error."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], slots: int) -> None:
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(slots)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            try:  # full: say so at once rather than queue a connection that may never be served
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a broken pipe or reset: the client left, nothing went wrong here
        super().handle_error(request, client_address)


def create_server(searcher: Searcher, port: int = 0, config: ServeConfig | None = None,
                  verbose: bool = False) -> ThreadingHTTPServer:
    """A server bound to 127.0.0.1:``port`` (0: any free port; see ``server.server_address``)."""
    config = config or ServeConfig()
    app = _App(searcher, config, verbose)
    handler = type("Handler", (_Handler,), {"app": app, "timeout": config.timeout})
    server = _Server(("127.0.0.1", port), handler, config.max_connections)
    app.bind(server.server_address[1])
    return server


def serve_in_thread(searcher: Searcher, config: ServeConfig | None = None) -> tuple[ThreadingHTTPServer, str]:
    """Start a server on a free port in a daemon thread: ``(server, base_url)``; ``server.shutdown()`` stops it."""
    server = create_server(searcher, 0, config)
    threading.Thread(target=server.serve_forever, name="torchclip-serve", daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}"
