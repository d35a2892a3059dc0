"""Local servers for the shard tests: an HTTP file server on 127.0.0.1 (ranges, injected faults) and an S3
server (moto's server mode). Never the network."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


@dataclass
class Faults:
    """What the server does wrong, per file name: answer with ``status`` for the next requests (a list that
    is consumed), cut the body after ``drop_after`` bytes (once per entry), refuse ranges."""

    status: dict[str, list[int]] = field(default_factory=dict)
    drop_after: dict[str, list[int]] = field(default_factory=dict)
    ranges: bool = True
    log: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header) per GET


class _Handler(BaseHTTPRequestHandler):
    root: Path
    faults: Faults

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _target(self) -> tuple[str, Path | None]:
        name = self.path.split("?", 1)[0].lstrip("/")
        path = (self.root / name).resolve()
        if self.root.resolve() not in path.parents or not path.is_file():
            return name, None
        return name, path

    def do_HEAD(self) -> None:  # noqa: N802
        name, path = self._target()
        if path is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        name, path = self._target()
        rng = self.headers.get("Range")
        self.faults.log.append((name, rng))
        queued = self.faults.status.get(name)
        if queued:
            code = queued.pop(0)
            self.send_error(code)
            return
        if path is None:
            self.send_error(404)
            return
        data = path.read_bytes()
        start, stop = 0, len(data)
        if rng and self.faults.ranges and rng.startswith("bytes="):
            first, last = rng[6:].split("-", 1)
            start, stop = int(first), min(int(last) + 1, len(data)) if last else len(data)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:stop]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/x-tar")
        self.end_headers()
        drops = self.faults.drop_after.get(name)
        if drops:
            cut = drops.pop(0)
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)
            return
        self.wfile.write(body)


@contextlib.contextmanager
def http_server(root: Path, faults: Faults | None = None) -> Iterator[tuple[str, Faults]]:
    """Serve ``root`` on 127.0.0.1 (a free port): yields the base URL and the fault plan."""
    faults = faults or Faults()
    handler = type("Handler", (_Handler,), {"root": root, "faults": faults})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", faults
    finally:
        server.shutdown()
        server.server_close()


def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 with dummy credentials in the environment (AWS_ENDPOINT_URL points the
    AWS SDK, hence s3fs, at it); a generator for a fixture (``yield from s3_server()``)."""
    pytest.importorskip("s3fs", reason="s3:// shards need s3fs (pip install 'torchclip[remote]')")
    server_mod = pytest.importorskip("moto.server", reason="the S3 test server needs moto[server] (the test extra)")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                             "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def upload(folder: Path, bucket: str, prefix: str = "") -> None:
    """Copy the files of ``folder`` to ``s3://bucket/prefix``."""
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    for p in sorted(folder.iterdir()):
        if p.is_file():
            fs.put_file(str(p), f"{bucket}/{prefix}{p.name}")
