"""torchclip serve over HTTP: pages, JSON API, uploads (limits, types, bad files) and path traversal."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("faiss", reason="torchclip serve needs faiss-cpu")

from clip_index_fixture import COLOURS, TOKENIZER, build_colour_index, colour_image  # noqa: E402

from torchclip.search import ClipIndex, Searcher  # noqa: E402
from torchclip.serve import ServeConfig, serve_in_thread  # noqa: E402


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    from conftest import _require

    tmp = tmp_path_factory.mktemp("serve")
    index_dir, _ = build_colour_index(tmp, _require(TOKENIZER))
    searcher = Searcher.open(index_dir)
    server, url = serve_in_thread(searcher, ServeConfig(max_upload_bytes=64 << 10, max_upload_pixels=1_000_000))
    yield url, tmp
    server.shutdown()
    server.server_close()


def request(url: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw request: the path is sent exactly as given (no client-side normalization of '..')."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None and "Content-Length" not in (headers or {}):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_json(url: str, path: str) -> tuple[int, Any]:
    status, _, body = request(url, "GET", path)
    return status, json.loads(body)


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_page_and_static(app: tuple[str, Path]) -> None:
    url, _ = app
    status, headers, body = request(url, "GET", "/")
    assert status == 200 and b"torchclip search" in body and headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
    for path in ("/static/app.js", "/static/style.css"):
        assert request(url, "GET", path)[0] == 200
    status, info = get_json(url, "/api/info")
    assert status == 200 and info["count"] == 12 and sorted(info["labels"]) == sorted(COLOURS)


def test_text_search_and_images(app: tuple[str, Path]) -> None:
    url, tmp = app
    status, body = get_json(url, "/api/search?q=a%20red%20picture&k=5")
    assert status == 200 and len(body["results"]) == 5
    first = body["results"][0]
    assert set(first) >= {"row", "id", "score", "image", "thumb"}
    status, headers, data = request(url, "GET", first["image"])
    assert status == 200 and data == (tmp / "imgs" / first["id"]).read_bytes()
    assert headers["content-type"] == "image/png"
    status, headers, data = request(url, "GET", first["thumb"])
    assert status == 200 and headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(data)).width <= 256
    assert get_json(url, "/api/search?q=")[0] == 400
    assert get_json(url, "/api/search?q=x&k=0")[0] == 400
    assert get_json(url, "/api/search?q=x&k=abc")[0] == 400


def test_similar(app: tuple[str, Path]) -> None:
    url, _ = app
    status, body = get_json(url, "/api/similar?row=3&k=4")
    assert status == 200 and len(body["results"]) == 4 and 3 not in [r["row"] for r in body["results"]]
    assert len(body["labels"]) == 4
    assert get_json(url, "/api/similar?row=12")[0] == 400
    assert get_json(url, "/api/similar?row=-1")[0] == 400


def test_upload_finds_the_same_picture_and_labels_it(app: tuple[str, Path]) -> None:
    url, _ = app
    data = _png(colour_image(COLOURS["green"], 1))
    status, _, body = request(url, "POST", "/api/upload?k=3", data, {"Content-Type": "image/png"})
    out = json.loads(body)
    assert status == 200, out
    assert out["results"][0]["id"] == "green1.png" and out["results"][0]["score"] == pytest.approx(1, abs=1e-4)
    assert {d["label"] for d in out["labels"]} == set(COLOURS) and (out["width"], out["height"]) == (80, 56)
    # A JPEG of it, sent with its own type, works too.
    jpeg = _png(colour_image(COLOURS["green"], 1), "JPEG")
    assert request(url, "POST", "/api/upload", jpeg, {"Content-Type": "image/jpeg"})[0] == 200


def test_upload_limits_and_bad_files(app: tuple[str, Path]) -> None:
    url, _ = app
    png = {"Content-Type": "image/png"}
    # Too large: refused from the header, before the body is read.
    status, _, body = request(url, "POST", "/api/upload", b"\x89PNG" + bytes(70 << 10), png)
    assert status == 413 and "exceeds the limit" in json.loads(body)["error"]
    # Not an image type.
    status, _, body = request(url, "POST", "/api/upload", b"hello", {"Content-Type": "text/plain"})
    assert status == 415 and "unsupported upload type" in json.loads(body)["error"]
    status, _, _ = request(url, "POST", "/api/upload", b"hello", {})
    assert status == 415
    # Claims to be a PNG, is not decodable.
    status, _, body = request(url, "POST", "/api/upload", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, png)
    assert status == 400 and "could not use the upload" in json.loads(body)["error"]
    truncated = _png(colour_image(COLOURS["red"]), "JPEG")[:200]
    status, _, body = request(url, "POST", "/api/upload", truncated, {"Content-Type": "image/jpeg"})
    assert status == 400 and json.loads(body)["error"]
    # A real image in a format that is not accepted (TIFF), whatever the header says.
    status, _, body = request(url, "POST", "/api/upload", _png(colour_image(COLOURS["red"]), "TIFF"), png)
    assert status == 400 and "not a recognised image format" in json.loads(body)["error"]
    # Small file, huge picture: refused from the image header, before decoding.
    bomb = _png(Image.new("L", (2000, 1000)))
    assert len(bomb) < 64 << 10
    status, _, body = request(url, "POST", "/api/upload", bomb, png)
    assert status == 413 and "pixels" in json.loads(body)["error"]
    # No Content-Length (chunked upload): refused.
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST /api/upload HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode())
        assert s.recv(4096).split(b"\r\n", 1)[0].endswith(b"411 Length Required")
    assert request(url, "POST", "/api/nothing", b"x", png)[0] == 404
    # The server is still healthy after all that.
    assert get_json(url, "/api/info")[0] == 200


TRAVERSALS = [
    "/../../../../etc/passwd", "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/app.py",
    "/static/..%2f..%2fapp.py", "/static/app.js/../../files.py", "//etc/passwd", "/image/../secret.txt",
    "/image/%2e%2e%2fsecret.txt", "/image/-1", "/image/12", "/image/999999999999", "/thumb/9999999999999",
    "/image/1/../../secret.txt", "/image/0x1", "/static/", "/static/index.html/..", "/secret.txt",
    "/imgs/red0.png", "/image/1%00", "/thumb/../../etc/passwd", "/api/../secret.txt",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_paths_outside_the_routes_are_refused(app: tuple[str, Path], path: str) -> None:
    url, tmp = app
    (tmp / "secret.txt").write_text("TOP-SECRET")
    status, _, body = request(url, "GET", path)
    assert status in (400, 403, 404) and b"TOP-SECRET" not in body and b"root:" not in body


def test_records_pointing_outside_the_root_are_not_served(tmp_path: Path) -> None:
    """Index records are JSON on disk: a record naming a file outside the collection must not reach it."""
    from torchclip.embed import ModelSpec

    root = tmp_path / "collection"
    root.mkdir()
    colour_image(COLOURS["red"]).save(root / "ok.png")
    outside = tmp_path / "outside.png"
    colour_image(COLOURS["blue"]).save(outside)
    (root / "notes.txt").write_text("TOP-SECRET, inside the root but not an image")
    os.symlink(outside, root / "link.png")
    (root / "sub").mkdir()
    sources = ["ok.png", "../outside.png", str(outside), "link.png", "notes.txt", "sub/../../outside.png",
               "sub", "missing.png", ""]
    records = [{"id": s or "empty", "source": s} for s in sources] + [{"id": "no-source"}]
    rng = np.random.default_rng(0)
    index = ClipIndex.build(rng.normal(size=(len(records), 128)).astype(np.float32), records,
                            {"root": str(root), "modality": "image"})
    searcher = Searcher(index, ModelSpec("cpu-vit-32", random_init=True).load_model())
    server, url = serve_in_thread(searcher)
    try:
        assert request(url, "GET", "/image/0")[2] == (root / "ok.png").read_bytes()
        assert request(url, "GET", "/thumb/0")[0] == 200
        blue = outside.read_bytes()
        for row in range(1, len(records)):
            for kind in ("image", "thumb"):
                status, _, body = request(url, "GET", f"/{kind}/{row}")
                assert status in (403, 404), (row, sources[row] if row < len(sources) else None, kind)
                assert body != blue and b"TOP-SECRET" not in body
    finally:
        server.shutdown()
        server.server_close()


def test_images_inside_webdataset_shards(tmp_path: Path) -> None:
    """Rows from tar shards are served from their recorded member offset; tampered records are refused."""
    import tarfile

    from torchclip.embed import ModelSpec, embed_source, load_embeddings, open_source

    blobs = {f"s{i}": _png(colour_image(rgb, i)) for i, rgb in enumerate(COLOURS.values())}
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tf:
        for key, data in blobs.items():
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    spec = ModelSpec("cpu-vit-32", random_init=True)
    model = spec.load_model()
    embed_source(open_source([tmp_path / "shard-0.tar"]), model, tmp_path / "emb", workers=0, progress=False)
    emb = load_embeddings(tmp_path / "emb")
    bad = dict(emb.records[0], id="header", offset=0)  # points at the tar header: not an image
    huge = dict(emb.records[0], id="huge", size=1 << 40)
    records = [*emb.records, bad, huge]
    vectors = np.concatenate([emb.vectors, emb.vectors[:2]])
    index = ClipIndex.build(vectors, records, {"root": emb.meta["source"]["root"]})
    server, url = serve_in_thread(Searcher(index, model))
    try:
        for row, rec in enumerate(index.records):
            status, headers, body = request(url, "GET", f"/image/{row}")
            if rec["id"] in blobs:
                assert status == 200 and body == blobs[rec["id"]] and headers["content-type"] == "image/png"
                assert request(url, "GET", f"/thumb/{row}")[0] == 200
            else:
                assert status in (403, 404) and body[:4] != b"\x89PNG"
    finally:
        server.shutdown()
        server.server_close()
