"""torchclip serve against hostile clients: DNS rebinding (Host/Origin), slow or idle sockets, hang-ups.

A real server on 127.0.0.1 and raw sockets, so every byte on the wire is the test's. The app needs no model
for these routes, so the searcher is a stub (no faiss, no weights, no ../shared).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from torchclip.serve import ServeConfig, create_server
from torchclip.serve.app import _Handler, _Server


class _Index:
    records: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    kind = "flat"

    def __len__(self) -> int:
        return 0


class _Searcher:
    index = _Index()
    labels = None


def _start(config: ServeConfig) -> tuple[_Server, int]:
    server = create_server(_Searcher(), 0, config)  # type: ignore[arg-type]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.fixture
def served() -> Iterator[tuple[_Server, int]]:
    server, port = _start(ServeConfig(timeout=1.0, max_connections=4))
    yield server, port
    server.shutdown()
    server.server_close()


def raw(port: int, data: bytes, *, wait: float = 20.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it (or ``wait`` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> Any:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def get(port: int, path: str, host: str | None) -> bytes:
    head = f"GET {path} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host is not None else "") + "Connection: close\r\n\r\n"
    return raw(port, head.encode())


def post(port: int, host: str, origin: str | None, body: bytes = b"not an image") -> bytes:
    head = (f"POST /api/upload HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
            + (f"Origin: {origin}\r\n" if origin is not None else "")
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return raw(port, head.encode() + body)


# ---- DNS rebinding: Host and Origin ---------------------------------------------------------------------------


def test_own_host_names_are_served(served: tuple[_Server, int]) -> None:
    _, port = served
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        answer = get(port, "/api/info", host)
        assert status_of(answer) == 200, answer[:200]
        assert body_of(answer)["count"] == 0
    assert status_of(get(port, "/", f"127.0.0.1:{port}")) == 200


@pytest.mark.parametrize("host", ["attacker.example:{port}", "attacker.example", "127.0.0.1", "localhost:1",
                                  "127.0.0.1:{port}.attacker.example", "", None])
def test_foreign_host_is_refused(served: tuple[_Server, int], host: str | None) -> None:
    # A DNS-rebinding page reaches 127.0.0.1 under its own name: its requests carry that name as Host.
    _, port = served
    answer = get(port, "/api/info", None if host is None else host.format(port=port))
    assert status_of(answer) == 403 and "unexpected Host" in body_of(answer)["error"]
    assert b'"count"' not in answer


def test_foreign_host_negative_control(served: tuple[_Server, int], monkeypatch: pytest.MonkeyPatch) -> None:
    # With the check patched out, the same request reads the API: the test above can fail.
    _, port = served
    monkeypatch.setattr(_Handler, "_refused", lambda self: None)
    assert status_of(get(port, "/api/info", "attacker.example")) == 200


def test_post_from_a_foreign_origin_is_refused(served: tuple[_Server, int]) -> None:
    _, port = served
    own = f"127.0.0.1:{port}"
    # Same origin (or none, as from curl): the upload is judged on its content (here: not an image).
    for origin in (f"http://{own}", f"http://localhost:{port}", None):
        answer = post(port, own, origin)
        assert status_of(answer) == 400 and "could not use the upload" in body_of(answer)["error"], answer[:300]
    for origin in ("http://attacker.example", f"http://{own}.attacker.example", "null", f"https://{own}"):
        answer = post(port, own, origin)
        assert status_of(answer) == 403 and "origin" in body_of(answer)["error"], origin


def test_foreign_origin_negative_control(served: tuple[_Server, int], monkeypatch: pytest.MonkeyPatch) -> None:
    _, port = served
    monkeypatch.setattr(_Handler, "_refused", lambda self: None)
    assert status_of(post(port, f"127.0.0.1:{port}", "http://attacker.example")) == 400


# ---- slow and idle clients ------------------------------------------------------------------------------------


def test_idle_connection_is_closed(served: tuple[_Server, int]) -> None:
    _, port = served
    start = time.monotonic()
    assert raw(port, b"") == b""  # the server hangs up on a silent client (timeout 1 s; the test waits 20)
    assert time.monotonic() - start < 15


def test_half_sent_upload_is_dropped(served: tuple[_Server, int]) -> None:
    _, port = served
    head = f"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
    assert raw(port, head.encode() + b"\x89PNG" + bytes(10)) == b""


def _trickle(port: int, seconds: float, gap: float) -> bool:
    """Send a request's headers a byte at a time, each gap shorter than the socket timeout; True when the
    server hung up before ``seconds`` had passed."""
    line = f"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: {'z' * 200}\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        end = time.monotonic() + seconds
        for b in line:
            if time.monotonic() > end:
                return False
            try:
                s.sendall(bytes([b]))
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        return True
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
            except (BrokenPipeError, ConnectionResetError):
                return True
            time.sleep(gap)
    return False


def test_trickling_headers_hit_the_request_deadline(served: tuple[_Server, int]) -> None:
    # One byte every 0.3 s never trips a 1 s socket timeout; the whole request must still arrive in 1 s.
    _, port = served
    assert _trickle(port, seconds=8, gap=0.3)


def test_trickle_negative_control(served: tuple[_Server, int], monkeypatch: pytest.MonkeyPatch) -> None:
    # With plain per-read timeouts (the stdlib's), the same client holds its thread past the test's window.
    from http.server import BaseHTTPRequestHandler

    _, port = served
    monkeypatch.setattr(_Handler, "setup", BaseHTTPRequestHandler.setup)
    assert not _trickle(port, seconds=4, gap=0.3)


def test_connections_beyond_the_limit_get_503_and_slots_come_back() -> None:
    server, port = _start(ServeConfig(timeout=1.0, max_connections=2))
    try:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(2)]
        time.sleep(0.2)  # both accepted and holding their threads
        answer = get(port, "/api/info", f"127.0.0.1:{port}")
        assert status_of(answer) == 503
        for s in idle:
            assert s.recv(1) == b""  # timed out by the server
            s.close()
        time.sleep(0.2)
        assert status_of(get(port, "/api/info", f"127.0.0.1:{port}")) == 200
    finally:
        server.shutdown()
        server.server_close()


# ---- clients hanging up ---------------------------------------------------------------------------------------


def _hang_up_many(port: int) -> None:
    """Clients that send a request and reset the connection at once: the server's read or its answer fails."""
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    for _ in range(30):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        s.sendall(request)
        s.close()
    time.sleep(0.5)
    assert status_of(get(port, "/api/info", f"127.0.0.1:{port}")) == 200


def test_hang_ups_leave_no_traceback(served: tuple[_Server, int], capfd: pytest.CaptureFixture[str]) -> None:
    _, port = served
    _hang_up_many(port)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err, err


def test_hang_ups_negative_control(served: tuple[_Server, int], capfd: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The stdlib's error handler, on the same clients, prints connection-reset tracebacks.
    from http.server import ThreadingHTTPServer

    _, port = served
    monkeypatch.setattr(_Server, "handle_error", ThreadingHTTPServer.handle_error)
    _hang_up_many(port)
    assert "Traceback" in capfd.readouterr().err


@pytest.mark.parametrize("exc", [BrokenPipeError, ConnectionResetError, TimeoutError])
def test_handle_error_is_silent_for_hang_ups_only(served: tuple[_Server, int], exc: type[Exception],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    server, _ = served
    try:
        raise exc("client went away")
    except exc:
        server.handle_error(None, ("127.0.0.1", 1))
    assert capsys.readouterr().err == ""
    # Negative control: the stdlib's handler prints a traceback for the same error, and ours for a real bug.
    try:
        raise exc("client went away")
    except exc:
        super(_Server, server).handle_error(None, ("127.0.0.1", 1))
    assert "Traceback" in capsys.readouterr().err
    try:
        raise ValueError("a bug")
    except ValueError:
        server.handle_error(None, ("127.0.0.1", 1))
    assert "a bug" in capsys.readouterr().err


def test_unexpected_errors_answer_500(served: tuple[_Server, int], monkeypatch: pytest.MonkeyPatch,
                                      capfd: pytest.CaptureFixture[str]) -> None:
    server, port = served

    def broken() -> dict:
        raise RuntimeError("boom")

    monkeypatch.setattr(server.RequestHandlerClass.app, "info", broken)
    answer = get(port, "/api/info", f"127.0.0.1:{port}")
    assert status_of(answer) == 500 and body_of(answer)["error"] == "internal error"
    assert "boom" not in answer.decode()  # the details go to the log, not to the client
    assert "RuntimeError: boom" in capfd.readouterr().err


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        ServeConfig(timeout=0)
    with pytest.raises(ValueError):
        ServeConfig(max_connections=0)
