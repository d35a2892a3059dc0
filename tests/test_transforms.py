"""Preprocessing: bit-level parity with OpenAI's eval transform, and the train crop's invariants."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from torchclip.transforms import (
    OPENAI_MEAN,
    OPENAI_STD,
    EvalTransform,
    ImageDecodeError,
    TrainTransform,
    center_crop,
    image_transform,
    load_image,
    resize_center_crop,
    resize_shorter_side,
)

FIXTURE_IMAGES = [
    "cmyk.jpg",
    "emoji_0.png",
    "emoji_1.png",
    "emoji_2.png",
    "gray16.png",
    "grayscale.png",
    "palette_transparency.png",
    "photo_china.jpg",
    "photo_flower_crop.jpg",
    "rgba_half_alpha.png",
    "tiny_3x5.png",
]

# What pure black becomes after normalization; transparent pixels must land here (alpha dropped, not composited).
BLACK = (-np.array(OPENAI_MEAN) / np.array(OPENAI_STD)).astype(np.float32)


@pytest.mark.parametrize("n_px", [224, 32])
@pytest.mark.parametrize("name", FIXTURE_IMAGES)
def test_eval_transform_matches_reference(shared, name: str, n_px: int) -> None:
    expected = np.load(shared("fixtures/preprocess/expected.npz"))[f"{name}@{n_px}"]
    img = load_image(shared(f"fixtures/preprocess/{name}"))
    out = image_transform(n_px)(img)
    assert out.dtype == torch.float32
    assert tuple(out.shape) == (3, n_px, n_px)
    diff = float(np.abs(out.numpy() - expected).max())
    assert diff <= 1e-5, f"{name}@{n_px}: max abs diff {diff}"


def test_fixture_has_exactly_our_keys(shared) -> None:
    keys = set(np.load(shared("fixtures/preprocess/expected.npz")).keys())
    assert keys == {f"{n}@{r}" for n in FIXTURE_IMAGES for r in (224, 32)}


def test_resize_long_side_is_truncated_not_rounded() -> None:
    # 224 * 640 / 427 = 335.74: truncation gives 335, rounding would give 336.
    assert resize_shorter_side(Image.new("RGB", (640, 427)), 224).size == (335, 224)
    assert resize_shorter_side(Image.new("RGB", (3, 5)), 224).size == (224, 373)
    assert resize_shorter_side(Image.new("RGB", (50, 50)), 32).size == (32, 32)


def _column_ramp(width: int, height: int) -> Image.Image:
    """An L image whose pixel value is its column index, so a crop reveals its own offset."""
    arr = np.tile(np.arange(width, dtype=np.uint8), (height, 1))
    return Image.fromarray(arr, mode="L")


@pytest.mark.parametrize(("width", "size", "left"), [(5, 2, 2), (7, 2, 2), (3, 2, 0), (6, 2, 2), (4, 4, 0)])
def test_center_crop_offsets_round_half_to_even(width: int, size: int, left: int) -> None:
    out = center_crop(_column_ramp(width, size), size)
    assert out.size == (size, size)
    assert int(np.asarray(out)[0, 0]) == left


def test_center_crop_pads_small_images_with_zeros() -> None:
    img = Image.new("RGB", (3, 5), (200, 100, 50))
    out = np.asarray(center_crop(img, 8))
    assert out.shape == (8, 8, 3)
    # deficit 5 wide -> 2 on the left, 3 on the right; deficit 3 high -> 1 on top, 2 below.
    nonzero = np.argwhere(out.any(axis=2))
    assert nonzero.min(axis=0).tolist() == [1, 2]
    assert nonzero.max(axis=0).tolist() == [5, 4]
    assert (out[1:6, 2:5] == (200, 100, 50)).all()


def test_rgba_alpha_dropped_without_compositing() -> None:
    # Left half opaque white, right half fully transparent *red*: after a premultiplied resize the red is
    # gone and the RGB conversion keeps black, not red and not a white background.
    arr = np.zeros((64, 64, 4), dtype=np.uint8)
    arr[:, :32] = (255, 255, 255, 255)
    arr[:, 32:] = (255, 0, 0, 0)
    out = image_transform(32)(Image.fromarray(arr, mode="RGBA")).numpy()
    right = out[:, :, 20:]
    np.testing.assert_allclose(right, np.broadcast_to(BLACK[:, None, None], right.shape), atol=1e-6)


def test_palette_images_resample_with_nearest() -> None:
    # A palette checkerboard: a bicubic filter in RGB would invent intermediate colours, nearest cannot.
    img = Image.new("P", (50, 70))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.putdata([(x + y) % 2 for y in range(70) for x in range(50)])
    out = image_transform(32)(img)
    mean = torch.tensor(OPENAI_MEAN).view(3, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1)
    rgb = torch.round(out.reshape(3, -1) * std * 255 + mean * 255).T
    assert {tuple(int(v) for v in px) for px in rgb.tolist()} == {(255, 0, 0), (0, 0, 255)}


_MODES = ["RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "I;16", "I", "F", "YCbCr"]


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 120),
    height=st.integers(1, 120),
    mode=st.sampled_from(_MODES),
    n_px=st.integers(1, 48),
    seed=st.integers(0, 2**16),
)
def test_eval_transform_shape_for_any_size_and_mode(
    width: int, height: int, mode: str, n_px: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB").convert(mode)
    out = EvalTransform(n_px)(img)
    assert out.dtype == torch.float32
    assert tuple(out.shape) == (3, n_px, n_px)
    assert torch.isfinite(out).all()
    lo = float((-torch.tensor(OPENAI_MEAN) / torch.tensor(OPENAI_STD)).min())
    hi = float(((1 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)).max())
    assert lo - 1e-5 <= float(out.min()) and float(out.max()) <= hi + 1e-5


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 2000),
    height=st.integers(1, 2000),
    lo=st.floats(0.01, 1.0),
    span=st.floats(0.0, 1.0),
    rlo=st.floats(0.2, 2.0),
    rspan=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**31),
)
def test_train_crop_box_stays_inside_image(
    width: int, height: int, lo: float, span: float, rlo: float, rspan: float, seed: int
) -> None:
    t = TrainTransform(
        16, scale=(lo, lo + span), ratio=(rlo, rlo + rspan), generator=torch.Generator().manual_seed(seed)
    )
    left, top, w, h = t.get_params(width, height)
    assert 1 <= w and 1 <= h
    assert 0 <= left and left + w <= width
    assert 0 <= top and top + h <= height


def test_train_crop_respects_scale_and_ratio() -> None:
    t = TrainTransform(32, scale=(0.25, 0.3), generator=torch.Generator().manual_seed(0))
    for _ in range(200):
        _, _, w, h = t.get_params(400, 300)
        assert 0.24 <= w * h / (400 * 300) <= 0.31
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02


def test_train_default_scale_is_open_clip() -> None:
    t = image_transform(64, train=True)
    assert isinstance(t, TrainTransform)
    assert t.scale == (0.9, 1.0) and t.ratio == (3 / 4, 4 / 3)
    assert isinstance(image_transform(64), EvalTransform)


def test_train_transform_output_and_full_crop_equivalence() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    # scale 1 and ratio 1 on a square image: the crop is the whole image, so train == plain resize + normalize.
    t = TrainTransform(24, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    out = t(img)
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, 24, 24)
    torch.testing.assert_close(out, EvalTransform(24)(img), rtol=0, atol=0)


def test_train_transform_uses_global_rng_by_default() -> None:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 60, 3), dtype=np.uint8))
    t = TrainTransform(16, scale=(0.1, 0.5))
    torch.manual_seed(123)
    a = t(img)
    torch.manual_seed(123)
    b = t(img)
    c = t(img)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(b, c)


def test_transforms_pickle_round_trip() -> None:
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (50, 80, 3), dtype=np.uint8))
    ev = image_transform(32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    ev2 = pickle.loads(pickle.dumps(ev))
    torch.testing.assert_close(ev(img), ev2(img), rtol=0, atol=0)
    tr = TrainTransform(32, generator=torch.Generator().manual_seed(7))
    tr2 = pickle.loads(pickle.dumps(tr))
    torch.testing.assert_close(tr(img), tr2(img), rtol=0, atol=0)
    assert "TrainTransform" in repr(tr2) and "EvalTransform" in repr(ev2)


@pytest.mark.parametrize(
    "kwargs",
    [{"scale": (0.9, 0.5)}, {"scale": (0.0, 1.0)}, {"ratio": (2.0, 1.0)}, {"std": (0.0, 1.0, 1.0)}],
)
def test_train_transform_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TrainTransform(32, **kwargs)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_image_size_rejected(size) -> None:
    with pytest.raises(ValueError, match="image_size"):
        image_transform(size)


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_load_image_decodes_fully(tmp_path: Path) -> None:
    path = tmp_path / "ok.jpg"
    path.write_bytes(_jpeg_bytes())
    img = load_image(path)
    assert img.size == (64, 64) and img.mode == "RGB"
    path.unlink()  # the pixels are already in memory: deleting the file must not matter
    assert np.asarray(img).shape == (64, 64, 3)


def test_load_image_truncated_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    path = tmp_path / "cut.jpg"
    data = _jpeg_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg") as info:
        load_image(path)
    assert "truncated" in str(info.value)


def test_load_image_non_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture")
    with pytest.raises(ImageDecodeError, match=r"notes\.png.*not a recognised image") as info:
        load_image(path)
    assert isinstance(info.value, ValueError)


def test_load_image_missing_file_is_not_a_decode_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "absent.png")


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    mode=st.sampled_from(_MODES),
    n_px=st.integers(1, 64),
    seed=st.integers(0, 2**16),
)
def test_bounded_geometry_is_the_full_resize_within_32_crops(
    width: int, height: int, mode: str, n_px: int, seed: int
) -> None:
    # EvalTransform's geometry is OpenAI's, pixel for pixel, for every image up to 32 crops long (the
    # fixtures above pin OpenAI's own numbers); only longer ones take the centre-only path.
    short, long = min(width, height), max(width, height)
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB").convert(mode)
    bounded = np.asarray(resize_center_crop(img, n_px))
    assert bounded.shape[:2] == (n_px, n_px)
    if int(n_px * long / short) <= 32 * n_px:
        np.testing.assert_array_equal(bounded, np.asarray(center_crop(resize_shorter_side(img, n_px), n_px)))
