"""Download layer against a real local HTTP server: caching, checksums, resume, offline behaviour."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import torchclip.download as dl
from torchclip.config import OPENAI_MODELS, list_presets
from torchclip.download import ChecksumError, DownloadError, cache_dir, download
from torchclip.pretrained import download_pretrained, openai_pretrained, pretrained_url

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)  # > 3 chunks, not chunk-aligned
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class ServerState:
    """Knobs the handler reads, and a log of what it was asked."""

    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False
    wrong_content: bool = False
    drop_after: int | None = None  # send only this many body bytes ...
    drops_left: int = 0  # ... on this many responses, then behave
    requests: list[dict[str, str]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    state: ServerState

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        st = self.server.state  # type: ignore[attr-defined]
        st.requests.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        data = st.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        if st.wrong_content:
            data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
        start = 0
        m = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        if m and not st.ignore_range:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if st.drops_left > 0 and st.drop_after is not None:
            st.drops_left -= 1
            self.wfile.write(body[: st.drop_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = ServerState(files={"/models/abc/model.bin": PAYLOAD})  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHCLIP_OFFLINE", raising=False)


def _url(base: str) -> str:
    return base + "/models/abc/model.bin"


def test_cache_dir_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHCLIP_CACHE", str(tmp_path / "a" / "b"))
    assert cache_dir() == tmp_path / "a" / "b" and cache_dir().is_dir()
    monkeypatch.delenv("TORCHCLIP_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "torchclip"


def test_fresh_download(server, cache_dir: Path) -> None:
    base, st = server
    path = download(_url(base), PAYLOAD_SHA, progress=False)
    assert path == cache_dir / "model.bin"
    assert path.read_bytes() == PAYLOAD
    assert not (cache_dir / "model.bin.part").exists()
    assert len(st.requests) == 1 and "range" not in st.requests[0]


def test_progress_bar_and_explicit_cache(server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, _ = server
    path = download(_url(base), PAYLOAD_SHA, "renamed.bin", progress=True, cache=tmp_path / "c")
    assert path == tmp_path / "c" / "renamed.bin" and path.read_bytes() == PAYLOAD


def test_cached_hit_makes_no_request_and_no_rehash(server, cache_dir: Path, monkeypatch) -> None:
    base, st = server
    download(_url(base), PAYLOAD_SHA, progress=False)
    hashed = []
    monkeypatch.setattr(dl, "sha256_file", lambda p: hashed.append(p) or PAYLOAD_SHA)
    path = download(_url(base), PAYLOAD_SHA.upper(), progress=False)
    assert path.read_bytes() == PAYLOAD
    assert len(st.requests) == 1, "a verified cached file must not trigger a request"
    assert hashed == [], "size+mtime unchanged: the sidecar hash is reused"


def test_cached_file_without_sidecar_is_verified(server, cache_dir: Path) -> None:
    base, st = server
    (cache_dir / "model.bin").write_bytes(PAYLOAD)  # placed by hand, as the offline message suggests
    assert download(_url(base), PAYLOAD_SHA, progress=False).read_bytes() == PAYLOAD
    assert st.requests == []


def test_corrupt_cached_file_is_downloaded_again(server, cache_dir: Path) -> None:
    base, st = server
    download(_url(base), PAYLOAD_SHA, progress=False)
    (cache_dir / "model.bin").write_bytes(b"garbage")  # size changes, so the sidecar is stale
    with pytest.warns(RuntimeWarning, match="downloading it again"):
        path = download(_url(base), PAYLOAD_SHA, progress=False)
    assert path.read_bytes() == PAYLOAD and len(st.requests) == 2


def test_checksum_mismatch_raises_and_leaves_nothing(server, cache_dir: Path) -> None:
    base, st = server
    st.wrong_content = True
    with pytest.raises(ChecksumError) as info:
        download(_url(base), PAYLOAD_SHA, progress=False)
    msg = str(info.value)
    assert PAYLOAD_SHA in msg and _url(base) in msg
    assert hashlib.sha256(bytes(b ^ 0xFF for b in PAYLOAD[:16]) + PAYLOAD[16:]).hexdigest() in msg
    assert isinstance(info.value, DownloadError) and isinstance(info.value, RuntimeError)
    assert not (cache_dir / "model.bin").exists()
    assert not (cache_dir / "model.bin.part").exists()


def test_resume_partial_part_sends_range(server, cache_dir: Path) -> None:
    base, st = server
    (cache_dir / "model.bin.part").write_bytes(PAYLOAD[:1000])
    path = download(_url(base), PAYLOAD_SHA, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert [r.get("range") for r in st.requests] == ["bytes=1000-"]


def test_dropped_connection_is_resumed_within_the_call(server, cache_dir: Path) -> None:
    base, st = server
    st.drop_after, st.drops_left = 1_500_000, 1
    path = download(_url(base), PAYLOAD_SHA, progress=False)
    assert path.read_bytes() == PAYLOAD
    ranges = [r.get("range") for r in st.requests]
    assert ranges[0] is None and len(ranges) == 2
    assert ranges[1] is not None and int(ranges[1][len("bytes=") : -1]) > 0


def test_interrupted_download_keeps_part_for_next_call(server, cache_dir: Path) -> None:
    base, st = server
    st.drop_after, st.drops_left = 200_000, 1
    with pytest.raises(DownloadError, match="interrupted") as info:
        download(_url(base), PAYLOAD_SHA, progress=False, retries=0)
    assert not isinstance(info.value, ChecksumError)
    part = cache_dir / "model.bin.part"
    kept = part.stat().st_size
    assert 0 < kept < len(PAYLOAD) and not (cache_dir / "model.bin").exists()
    assert download(_url(base), PAYLOAD_SHA, progress=False).read_bytes() == PAYLOAD
    assert st.requests[-1]["range"] == f"bytes={kept}-"


def test_server_ignoring_range_restarts_cleanly(server, cache_dir: Path) -> None:
    base, st = server
    st.ignore_range = True
    (cache_dir / "model.bin.part").write_bytes(PAYLOAD[:5000])
    path = download(_url(base), PAYLOAD_SHA, progress=False)
    assert path.read_bytes() == PAYLOAD  # not 5000 bytes of prefix followed by the whole file
    assert st.requests[0]["range"] == "bytes=5000-"


def test_complete_part_left_before_rename_is_finalised(server, cache_dir: Path) -> None:
    base, st = server
    (cache_dir / "model.bin.part").write_bytes(PAYLOAD)
    assert download(_url(base), PAYLOAD_SHA, progress=False).read_bytes() == PAYLOAD
    assert len(st.requests) == 1  # answered 416, no body transferred


def test_http_error_is_download_error(server, cache_dir: Path) -> None:
    base, _ = server
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download(base + "/nope/missing.bin", PAYLOAD_SHA, progress=False)
    assert str(cache_dir / "missing.bin") in str(info.value)


def test_no_checksum_given_still_downloads(server, cache_dir: Path) -> None:
    base, st = server
    assert download(_url(base), None, progress=False).read_bytes() == PAYLOAD
    assert download(_url(base), None, progress=False).read_bytes() == PAYLOAD
    assert len(st.requests) == 1


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_host_explains_offline(cache_dir: Path) -> None:
    url = f"http://127.0.0.1:{_dead_port()}/x/{'0' * 64}/weights.pt"
    with pytest.raises(DownloadError) as info:
        download(url, "0" * 64, progress=False, timeout=5)
    msg = str(info.value)
    assert "offline" in msg and url in msg and str(cache_dir / "weights.pt") in msg
    assert not isinstance(info.value, ChecksumError)


def test_offline_env_never_touches_network(server, cache_dir: Path, monkeypatch) -> None:
    base, st = server
    monkeypatch.setenv("TORCHCLIP_OFFLINE", "1")
    with pytest.raises(DownloadError, match="TORCHCLIP_OFFLINE") as info:
        download(_url(base), PAYLOAD_SHA, progress=False)
    assert str(cache_dir / "model.bin") in str(info.value) and _url(base) in str(info.value)
    assert st.requests == []
    (cache_dir / "model.bin").write_bytes(PAYLOAD)
    assert download(_url(base), PAYLOAD_SHA, progress=False).read_bytes() == PAYLOAD
    (cache_dir / "model.bin").write_bytes(PAYLOAD[:-1])
    with pytest.raises(ChecksumError, match="TORCHCLIP_OFFLINE"):
        download(_url(base), PAYLOAD_SHA, progress=False)
    assert st.requests == []


def test_concurrent_downloads_of_one_file_fetch_once(server, cache_dir: Path) -> None:
    base, st = server
    results: list[Path | BaseException] = []

    def run() -> None:
        try:
            results.append(download(_url(base), PAYLOAD_SHA, progress=False))
        except BaseException as exc:  # surfaced by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, Path) and r.read_bytes() == PAYLOAD for r in results), results
    assert len(st.requests) == 1


@pytest.mark.parametrize("bad", [{"sha256": "abc"}, {"filename": "../evil"}, {"filename": "a/b"}])
def test_bad_arguments(bad: dict, cache_dir: Path) -> None:
    kwargs = {"sha256": PAYLOAD_SHA, "filename": None} | bad
    with pytest.raises(ValueError):
        download("http://127.0.0.1:9/f.bin", kwargs["sha256"], kwargs["filename"], progress=False)


# ---- registry ----------------------------------------------------------------------------------


def test_registry_covers_openai_presets() -> None:
    assert list(OPENAI_MODELS) == [
        "RN50",
        "RN101",
        "RN50x4",
        "RN50x16",
        "RN50x64",
        "ViT-B/32",
        "ViT-B/16",
        "ViT-L/14",
        "ViT-L/14@336px",
    ]
    assert set(OPENAI_MODELS) <= set(list_presets())
    assert all(openai_pretrained(n).tag == "openai" for n in OPENAI_MODELS)


def test_registry_matches_reference_sheet(shared) -> None:
    text = shared("reference/clip-reference.md").read_text()
    urls = re.findall(r"https://openaipublic\.azureedge\.net/clip/models/[0-9a-f]{64}/\S+\.pt", text)
    entries = [openai_pretrained(n) for n in OPENAI_MODELS]
    assert sorted(urls) == sorted(e.url for e in entries)
    for entry in entries:
        assert entry.url.split("/")[-2] == entry.sha256


def test_pretrained_lookup_and_aliases() -> None:
    assert pretrained_url("ViT-B/32").endswith(
        "/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"
    )
    assert openai_pretrained("ViT-B-32").url == openai_pretrained("ViT-B/32").url
    assert openai_pretrained("ViT-L-14-336").url.endswith("/ViT-L-14-336px.pt")
    with pytest.raises(KeyError, match="RN50"):
        openai_pretrained("ViT-H/14")


def test_download_pretrained_uses_cache_offline(cache_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCHCLIP_OFFLINE", "1")
    entry = openai_pretrained("RN50")
    with pytest.raises(DownloadError, match=re.escape(str(cache_dir / "RN50.pt"))):
        download_pretrained("RN50", progress=False)
    # A file in the cache is used only if it has the published hash: fake it by seeding the sidecar check.
    monkeypatch.setattr(dl, "sha256_file", lambda p: entry.sha256)
    (cache_dir / "RN50.pt").write_bytes(b"stand-in")
    assert download_pretrained("RN50", progress=False) == cache_dir / "RN50.pt"
