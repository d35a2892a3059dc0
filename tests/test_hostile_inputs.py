"""Hostile inputs end in bounded time and memory, with a clear error where they cannot be used.

Each blow-up case runs in a child under a memory and a time cap (``capkit``) and is generated in a few lines;
each has a negative control that runs the unbounded code (today's or yesterday's) under the same caps and
shows it does not finish, so a test that cannot fail is caught.
"""

from __future__ import annotations

import io
import json
import struct
import urllib.request
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from capkit import run_capped, start_capped
from PIL import Image

from torchclip.transforms import (
    MAX_IMAGE_PIXELS,
    ImageDecodeError,
    center_crop,
    image_transform,
    load_image,
    resize_center_crop,
    resize_shorter_side,
)

# ---- hostile image files, each in a few lines ----------------------------------------------------------------


def strip_png(width: int, height: int) -> bytes:
    """A tiny PNG of extreme aspect ratio (1 x 20000 is 157 bytes): fine by every pixel limit."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))


SETUP_STRIP = """
import io, sys
from PIL import Image
import torchclip.transforms as T
from torchclip.transforms import image_transform, load_image
data = {data!r}
img = load_image(data)
"""

# Yesterday's eval geometry: the full shorter-side resize, then the crop.
UNBOUNDED_GEOMETRY = """
def unbounded(img, size):
    w, h = img.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    return T.center_crop(img.resize(new, Image.Resampling.BICUBIC), size)
"""


@pytest.mark.parametrize("shape", [(1, 20000), (20000, 1), (3, 40000)])
def test_extreme_aspect_ratio_eval_transform_is_bounded(shape: tuple[int, int]) -> None:
    data = strip_png(*shape)
    assert len(data) < 1000
    setup = SETUP_STRIP.format(data=data)
    ok = run_capped("""
        out = image_transform(224)(img)
        assert tuple(out.shape) == (3, 224, 224), out.shape
        print("mean", float(out.mean()))
    """, setup=setup, mem_mb=300, timeout=60)
    assert ok.finished, str(ok)
    # Negative control: the full resize before the crop, under the same caps, does not fit.
    old = run_capped(UNBOUNDED_GEOMETRY + "out = unbounded(img, 224)\n", setup=setup, mem_mb=300, timeout=60)
    assert not old.finished and old.out_of_memory, str(old)


def test_strip_result_is_the_strip_colour() -> None:
    # The bounded path still computes the right picture: a flat red strip stays flat red.
    out = resize_center_crop(load_image(strip_png(1, 20000)), 224)
    assert out.size == (224, 224)
    assert {tuple(px) for px in np.asarray(out.convert("RGB")).reshape(-1, 3).tolist()} == {(200, 30, 30)}


def _smooth(width: int, height: int, mode: str, seed: int = 0) -> Image.Image:
    """A natural-ish picture: low-frequency colour waves plus mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    chans = [127 + 100 * np.sin(x / (7 + 5 * c) + y / (11 + 3 * c) + c) for c in range(3)]
    arr = np.stack(chans, -1) + rng.normal(0, 4, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "I;16", "F"])
@pytest.mark.parametrize(("width", "height", "size"), [(9, 3000, 32), (2500, 7, 32), (40, 7000, 64)])
def test_bounded_path_is_close_to_the_full_resize(mode: str, width: int, height: int, size: int) -> None:
    # Beyond 32 crops the centre is resampled on its own: close to the full resize, not bit-equal.
    img = _smooth(width, height, mode)
    full = np.asarray(center_crop(resize_shorter_side(img, size), size), dtype=np.float64)
    bounded = np.asarray(resize_center_crop(img, size), dtype=np.float64)
    levels = 255.0 if mode != "I;16" else 65535.0
    assert full.shape == bounded.shape
    diff = np.abs(full - bounded) / (levels if mode != "F" else 255.0)
    assert diff.max() <= 3 / 255 and diff.mean() <= 0.2 / 255, (diff.max() * 255, diff.mean() * 255)


@pytest.mark.parametrize(("width", "height"), [(50, 1600), (1600, 50), (33, 1056), (224, 7168), (640, 427)])
def test_up_to_32_crops_the_geometry_is_exactly_the_full_resize(width: int, height: int) -> None:
    img = _smooth(width, height, "RGB", seed=1)
    full = np.asarray(center_crop(resize_shorter_side(img, 224), 224))
    np.testing.assert_array_equal(np.asarray(resize_center_crop(img, 224)), full)


def test_resize_shorter_side_refuses_an_absurd_result() -> None:
    with pytest.raises(ValueError, match="resize_center_crop"):
        resize_shorter_side(Image.new("L", (1, 20000)), 224)


def test_embed_of_a_strip_is_bounded(tmp_path: Path) -> None:
    """``torchclip embed``'s decode path (workers=0 keeps it in the capped process). The test model takes 32
    pixels, so the strip is longer than the 224-pixel case for the full resize to be as large."""
    pytest.importorskip("faiss", reason="the embed package imports faiss")
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "strip.png").write_bytes(strip_png(1, 1_000_000))
    Image.new("RGB", (64, 48), (10, 200, 10)).save(root / "ok.png")
    setup = f"""
        from torchclip.embed import ModelSpec, embed_source, open_source
        import torchclip.embed.decode as D
        spec = ModelSpec("cpu-vit-32", random_init=True, seed=0)
        model = spec.load_model()
        root, out = {str(root)!r}, {str(tmp_path / "emb")!r}
    """
    run = """
        embed_source(open_source([root]), model, out, model_spec=spec, workers=0, progress=False)
    """
    ok = run_capped(run, setup=setup, mem_mb=700, timeout=120)
    assert ok.finished, str(ok)
    old = run_capped("""
        from PIL import Image
        def unbounded(img, size):
            w, h = img.size
            new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
            return D.center_crop(img.resize(new, Image.Resampling.BICUBIC), size)
        import torchclip.transforms as T
        D.center_crop = T.center_crop
        D.resize_center_crop = unbounded
    """ + run.replace("out,", "out + '-old',"), setup=setup, mem_mb=700, timeout=120)
    assert not old.finished and old.out_of_memory, str(old)


# ---- decompression bombs ----------------------------------------------------------------------------------------


def test_bomb_png_is_refused_from_its_header() -> None:
    data = bomb_png(10_000, 10_000)  # 10^8 pixels: above our limit, below the point where Pillow refuses
    assert len(data) < 200 and 10_000 * 10_000 > MAX_IMAGE_PIXELS
    setup = f"""
        import io
        from PIL import Image
        from torchclip.transforms import ImageDecodeError, load_image
        data = {data!r}
    """
    ok = run_capped("""
        try:
            load_image(data, name="bomb.png")
        except ImageDecodeError as e:
            assert "bomb.png" in str(e) and "more than the limit" in str(e), e
        else:
            raise AssertionError("accepted")
    """, setup=setup, mem_mb=128, timeout=60)
    assert ok.finished, str(ok)
    # Negative control: Pillow alone only warns at this size, then allocates the whole canvas.
    old = run_capped("""
        Image.open(io.BytesIO(data)).load()
    """, setup=setup, mem_mb=128, timeout=60)
    assert old.out_of_memory, str(old)


def test_huge_header_is_an_image_decode_error_everywhere() -> None:
    from torchclip.embed.decode import open_image

    for fn in (load_image, open_image):
        with pytest.raises(ImageDecodeError, match=r"huge\.png.*(more than the limit|exceeds limit)"):
            fn(bomb_png(1 << 20, 1 << 20), name="huge.png")
    # An explicit lower limit is honoured, checked before decoding.
    with pytest.raises(ImageDecodeError, match="more than the limit of 100"):
        load_image(strip_png(20, 20), max_pixels=100)
    assert load_image(strip_png(20, 20), max_pixels=400).size == (20, 20)


def test_bomb_is_an_image_decode_error_where_warnings_are_errors() -> None:
    # Pillow warns (DecompressionBombWarning) before our check runs; as an error it must still be ours.
    from torchclip.embed.decode import open_image

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in (load_image, open_image):
            with pytest.raises(ImageDecodeError, match=r"bomb\.png"):
                fn(bomb_png(10_000, 10_000), name="bomb.png")


# ---- preprocess given something other than a PIL image (#16.6) ---------------------------------------------------


def test_preprocess_opens_a_path(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(path)
    for train in (False, True):
        tf = image_transform(32, train=train)
        torch.manual_seed(0)
        from_path = tf(path)
        torch.manual_seed(0)
        from_str = tf(str(path))
        torch.manual_seed(0)
        torch.testing.assert_close(from_path, tf(load_image(path)), rtol=0, atol=0)
        torch.testing.assert_close(from_str, from_path, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError):
        image_transform(32)(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ImageDecodeError, match=r"notes\.png"):
        image_transform(32)(tmp_path / "notes.png")


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.uint8), torch.zeros(3, 8, 8), b"\x89PNG", 42, None])
def test_preprocess_names_what_it_cannot_take(bad: object) -> None:
    with pytest.raises(TypeError, match="PIL image or a path") as info:
        image_transform(32)(bad)
    assert type(bad).__name__ in str(info.value)
    if hasattr(bad, "__array__"):
        assert "fromarray" in str(info.value)


# ---- the web app's upload ----------------------------------------------------------------------------------------


def _serve_child(index_dir: Path, patch: str = "") -> tuple[object, str]:
    proc = start_capped(patch + """
        server = create_server(searcher, 0, ServeConfig(timeout=30))
        host, port = server.server_address[:2]
        print(f"http://{host}:{port}", flush=True)
        server.serve_forever()
    """, setup=f"""
        from torchclip.search import Searcher
        from torchclip.serve import ServeConfig, create_server
        import torchclip.embed.decode as D
        searcher = Searcher.open({str(index_dir)!r})
        searcher.encode_image([__import__("PIL.Image").Image.new("RGB", (8, 8))])  # model warm, threads made
    """, mem_mb=700)
    line = proc.stdout.readline().strip()
    if not line.startswith("http://"):
        proc.kill()
        raise AssertionError(f"server did not start: {line} {proc.stderr.read()[-3000:]}")
    return proc, line


def _post(url: str, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/api/upload?k=2", data=data, headers={"Content-Type": "image/png"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def colour_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("faiss", reason="torchclip serve needs faiss-cpu")
    from clip_index_fixture import build_colour_index

    index_dir, _ = build_colour_index(tmp_path_factory.mktemp("hostile-serve"), None)
    return index_dir


def test_upload_of_a_strip_is_bounded(colour_index: Path) -> None:
    data = strip_png(1, 1_000_000)  # the test model takes 32 pixels: as large a full resize as 1 x 20000 at 224
    proc, url = _serve_child(colour_index)
    try:
        status, body = _post(url, data)
        assert status == 200 and (body["width"], body["height"]) == (1, 1_000_000) and len(body["results"]) == 2
        with urllib.request.urlopen(url + "/api/info", timeout=30) as resp:
            assert resp.status == 200  # and the server is still there
    finally:
        proc.kill()
        proc.wait()
    # Negative control: the server with the full resize before the crop cannot answer it under the cap.
    proc, url = _serve_child(colour_index, patch="""
        from PIL import Image
        def unbounded(img, size):
            w, h = img.size
            new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
            return D.center_crop(img.resize(new, Image.Resampling.BICUBIC), size)
        import torchclip.transforms as T
        D.center_crop = T.center_crop
        D.resize_center_crop = unbounded
    """)
    try:
        status, body = _post(url, data)
        assert status == 500 and body["error"] == "internal error"
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert "MemoryError" in err


# ---- the tokenizer ---------------------------------------------------------------------------------------------


def _word(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "".join(chr(ord("a") + int(i)) for i in rng.integers(0, 26, n))


def test_long_words_tokenize_in_bounded_time(shared) -> None:
    vocab = shared("fixtures/tokenizer/bpe_simple_vocab_16e6.txt.gz")
    setup = f"""
        from torchclip.tokenizer import ContextLengthError, Tokenizer
        tok = Tokenizer.from_file({str(vocab)!r})
        word = {_word(40_000)!r}
    """
    ok = run_capped("""
        assert tok([word], truncate=True).shape == (1, 77)
        try:
            tok([word])
        except ContextLengthError as e:
            assert e.n_tokens > 77
        big = word * 75  # three megabytes without a space
        assert tok([big, "a " * 1_000_000 + big], truncate=True).shape == (2, 77)
    """, setup=setup, mem_mb=400, timeout=15)
    assert ok.finished, str(ok)
    # Negative control: the reference algorithm (rescan every pair after each round) on the 40,000 letters.
    old = run_capped("""
        symbols = [tok.byte_encoder[b] for b in word.encode()]
        symbols[-1] += "</w>"
        ranks = tok.bpe_ranks
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            out, i = [], 0
            while i < len(symbols):
                if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            symbols = out
    """, setup=setup, mem_mb=400, timeout=15)
    assert old.timed_out, str(old)


def test_many_texts_with_long_words_are_not_cached() -> None:
    from torchclip.tokenizer import _CACHE_MAX_CHARS, Tokenizer

    tok = Tokenizer([("a", "b")])
    tok([_word(500, seed=s) for s in range(20)], truncate=True)
    assert all(len(k) <= _CACHE_MAX_CHARS for k in tok._cache) and all(len(k) <= _CACHE_MAX_CHARS
                                                                        for k in tok._piece_cache)
    tok(["short words stay cached"])
    assert "cached" in tok._cache
