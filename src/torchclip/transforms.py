"""Image preprocessing: OpenAI's eval transform, reproduced exactly, and an OpenCLIP-style train crop.

Pillow and torch only (no torchvision), so the eval path is a handful of explicit Pillow calls whose order
matters: OpenAI resizes and crops *before* converting to RGB, so Pillow resamples in the file's own mode.
Palette and 1-bit images therefore resize with nearest whatever filter is asked, RGBA is resized
premultiplied, and the later RGB conversion drops alpha without compositing (transparent pixels become
black). Converting first would be "cleaner" but would not give the numbers the released checkpoints were
evaluated with, so we do not.

Work is bounded by the output, not by what a file claims: ``load_image`` refuses images whose header
claims more than ``MAX_IMAGE_PIXELS`` before decoding them, and ``resize_center_crop`` resamples only the
centre region of an image whose full resize would be many crops long (a thin strip would otherwise be
resized to gigabytes before the crop).

The transforms are small classes rather than closures so that DataLoader workers can pickle them.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image

from .config import OPENAI_MEAN, OPENAI_STD, RESIZE_MODES, PreprocessConfig

__all__ = [
    "OPENAI_MEAN",
    "OPENAI_STD",
    "MAX_IMAGE_PIXELS",
    "ImageDecodeError",
    "load_image",
    "resize_shorter_side",
    "resize_center_crop",
    "center_crop",
    "to_tensor",
    "EvalTransform",
    "TrainTransform",
    "TrimMargin",
    "trim_margin",
    "image_transform",
    "transform_for",
]


_BICUBIC = Image.Resampling.BICUBIC
_RESAMPLE = {"bicubic": _BICUBIC, "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}

# Pillow's decompression-bomb *warning* level (its default Image.MAX_IMAGE_PIXELS), made a hard limit: Pillow
# itself only refuses at twice this, and only when its global setting has not been changed.
MAX_IMAGE_PIXELS = 89_478_485
# Up to this many crops along the long side the full resize runs (bit-equal to OpenAI's pipeline); beyond
# it, only the centre region is resampled, so work follows the output size.
_EXACT_MAX_CROPS = 32
# trim_margin's square canvas may exceed twice the image's pixels up to this many pixels before it is drawn smaller
_TRIM_MIN_CANVAS = 1 << 22


class ImageDecodeError(ValueError):
    """A file could not be decoded as an image (not an image, truncated, corrupt, or too large).

    A ValueError so that callers filtering bad samples in a dataset can catch one type; the message names
    the file, because inside a DataLoader worker the traceback is often all a user gets.
    """


def load_image(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    name: str | None = None,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    formats: tuple[str, ...] | None = None,
    draft_size: int | None = None,
    draft_factor: float = 2.0,
) -> Image.Image:
    """Open *and fully decode* an image file (a path, its bytes, or a binary file object).

    ``Image.open`` is lazy: a truncated JPEG only fails later, inside the transform, far from the file
    name. Decoding here makes every failure an :class:`ImageDecodeError` that names the file (``name``, else
    the path) and the reason. The pixel count is checked from the header before any pixel is decoded, so a
    small file claiming a huge canvas is refused in constant memory (``max_pixels=None``: no limit beyond
    Pillow's own). ``formats`` restricts the accepted Pillow formats. A missing file or a permission problem
    is not a decoding problem and propagates unchanged.

    ``draft_size``: the model resolution; when given and the file is a JPEG whose shorter side is at least
    ``2 * draft_factor * draft_size``, it is decoded at the largest DCT reduction that still leaves a shorter
    side of ``draft_factor * draft_size`` (None: exact decoding, the default everywhere). The DCT downscale is
    not Pillow's antialiased bicubic, so it changes pixels: an opt-in for speed.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label, fp = name or "<bytes>", io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        label, fp = name or os.fspath(source), source
    elif hasattr(source, "read"):
        label, fp = name or str(getattr(source, "name", "<file>")), source
    else:
        raise TypeError(f"load_image takes a path, bytes or a binary file, got {type(source).__name__}")
    try:
        with Image.open(fp, formats=list(formats) if formats else None) as img:
            check_pixels(img, label, max_pixels)
            if draft_size and img.format == "JPEG":
                _apply_draft(img, draft_size, draft_factor)
            img.load()
            return img
    except (FileNotFoundError, IsADirectoryError, PermissionError, ImageDecodeError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # a warning where warnings are errors
        raise ImageDecodeError(f"cannot load image {label}: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        # Pillow's own text names the file object's address, which differs per process: say what was allowed.
        detail = f" (accepted: {', '.join(formats)})" if formats else ""
        raise ImageDecodeError(f"cannot load image {label}: not a recognised image format{detail}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        # Pillow's plugins report broken data with any of these (OSError "image file is truncated",
        # SyntaxError "broken PNG file", EOFError, struct.error on short headers).
        raise ImageDecodeError(
            f"cannot load image {label}: corrupt or truncated data ({type(exc).__name__}: {exc})"
        ) from exc


def _apply_draft(img: Image.Image, size: int, factor: float) -> None:
    w, h = img.size
    target_short = max(1, int(round(size * factor)))
    if min(w, h) < 2 * target_short:  # no DCT reduction (>= 2x) would be possible: decode exactly
        return
    scale = target_short / min(w, h)
    # Pillow picks the largest 1/2^k reduction keeping both sides >= the requested size.
    img.draft(None, (max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))))


def check_pixels(img: Image.Image, label: str, max_pixels: int | None = MAX_IMAGE_PIXELS) -> None:
    """Raise ``ImageDecodeError`` when an opened (not yet decoded) image claims more than ``max_pixels``."""
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise ImageDecodeError(
            f"image {label} is {img.width}x{img.height} pixels, more than the limit of {max_pixels:,}"
        )


def _resized(w: int, h: int, size: int) -> tuple[int, int]:
    """The size OpenAI's resize gives: shorter side ``size``, long side ``int(size * long / short)``."""
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


def resize_shorter_side(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size``, keeping the aspect ratio, with Pillow bicubic.

    The long side is ``int(size * long / short)`` (truncation, as OpenAI's pipeline computes it), not a
    rounded value: rounding shifts the later centre crop by a pixel on some aspect ratios. The result is
    as large as the aspect ratio makes it; a model's preprocessing uses ``resize_center_crop``, which is
    bounded whatever the aspect ratio.
    """
    new_w, new_h = _resized(*img.size, size)
    if new_w * new_h > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"resizing a {img.width}x{img.height} image to shorter side {size} would make {new_w}x{new_h} "
            f"pixels; use resize_center_crop, which resamples only the centre"
        )
    # Pillow returns a plain copy when the size is unchanged, so an RGBA image already at size keeps its
    # colours under transparent pixels, exactly as in the reference.
    return img.resize((new_w, new_h), _BICUBIC)


def resize_center_crop(img: Image.Image, size: int, resample: Image.Resampling = _BICUBIC) -> Image.Image:
    """OpenAI's eval geometry: shorter side -> ``size`` (bicubic), then the centre ``size`` x ``size`` crop.

    Equal to ``center_crop(resize_shorter_side(img, size), size)``, pixel for pixel, whenever the resized
    image is at most ``_EXACT_MAX_CROPS`` crops long. A longer one (an extreme aspect ratio) is never built:
    only the source rows (or columns) under the crop, plus the filter's reach, are resampled, so time and
    memory follow ``size``. That result is close to but not bit-equal to the full resize, because Pillow
    takes a crop box in single precision and may order its two passes differently on a smaller input.
    """
    w, h = img.size
    new_w, new_h = _resized(w, h, size)
    if max(new_w, new_h) <= _EXACT_MAX_CROPS * size:
        return center_crop(img.resize((new_w, new_h), resample), size)
    tall = w <= h
    long, new_long = (h, new_h) if tall else (w, new_w)
    off = int(round((new_long - size) / 2.0))  # the crop's offset in the resized image, as center_crop has it
    scale = long / new_long  # source pixels per resized pixel along the long side
    lo, hi = off * scale, (off + size) * scale  # the crop's extent in source coordinates
    # Bicubic reads 2 source pixels either side of a sample, scaled up when downsampling; 2 more for rounding.
    reach = math.ceil(2 * max(1.0, scale)) + 2
    a, b = max(0, math.floor(lo) - reach), min(long, math.ceil(hi) + reach)
    if tall:
        return img.crop((0, a, w, b)).resize((size, size), resample, box=(0, lo - a, w, hi - a))
    return img.crop((a, 0, b, h)).resize((size, size), resample, box=(lo - a, 0, hi - a, h))


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Crop the central ``size`` x ``size`` square, zero-padding first if the image is smaller.

    Offsets are ``round((H - size) / 2)`` with Python's ties-to-even rounding, which is what the reference
    does; padding splits the deficit with the smaller half on the top/left, as the reference does.
    """
    w, h = img.size
    if w < size or h < size:
        pad_l = (size - w) // 2 if size > w else 0
        pad_t = (size - h) // 2 if size > h else 0
        new_w, new_h = max(w, size), max(h, size)
        # Image.new(..., 0) is zero in every band; for palette images that is index 0, as in the reference.
        canvas = Image.new(img.mode, (new_w, new_h), 0)
        if img.mode == "P":
            palette = img.getpalette()
            if palette is not None:
                canvas.putpalette(palette)
            if "transparency" in img.info:
                canvas.info["transparency"] = img.info["transparency"]
        canvas.paste(img, (pad_l, pad_t))
        img, (w, h) = canvas, (new_w, new_h)
        if (w, h) == (size, size):
            return img
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB-convert and return a float32 ``[3, H, W]`` tensor in [0, 1].

    Goes through numpy in one vectorised step; the copy makes the array writable, which torch requires.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.array(img, dtype=np.uint8, copy=True)
    return torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32).div_(255.0)


def _as_image(img: Any) -> Image.Image:
    """A transform's input: a PIL image, or a path that is opened with ``load_image``; anything else is a
    ``TypeError`` that says what to pass."""
    if isinstance(img, Image.Image):
        return img
    if isinstance(img, (str, os.PathLike)):
        return load_image(img)
    hint = " (convert it with PIL.Image.fromarray)" if hasattr(img, "__array__") else ""
    raise TypeError(f"preprocess takes a PIL image or a path to an image file, got {type(img).__name__}{hint}")


def trim_margin(img: Image.Image, *, pad: int = 2, threshold: int = 30,
                background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Artwork drawn at one scale: the square around the pixels that differ from ``background`` (summed
    absolute difference over R, G, B above ``threshold``), widened by ``pad`` pixels on each side and centred
    on the content, as an RGB image of its own size (the caller resizes). Where the square reaches past the
    frame it is filled with ``background``. An image with no content comes back whole, in RGB. Transparent
    pixels are composited onto ``background`` first, so a transparent margin counts as margin. A square that
    would hold more than twice the image's pixels (and over 4 Mpx) is drawn smaller, so a thin strip costs
    memory in proportion to itself."""
    pad, threshold = int(pad), int(threshold)
    if not 0 <= pad <= 4096 or not 0 <= threshold < 765:
        raise ValueError(f"trim_margin: pad must be in [0, 4096] and threshold in [0, 765), got {pad}, {threshold}")
    if len(background) != 3 or not all(0 <= int(c) <= 255 for c in background):
        raise ValueError(f"trim_margin: background must be an RGB triple of 0-255, got {background!r}")
    bg = tuple(int(c) for c in background)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*bg, 255))
        img = Image.alpha_composite(base, rgba)
    img = img.convert("RGB")
    a = np.asarray(img, dtype=np.uint8)  # [H, W, 3]
    # int16 holds |a - bg| summed over 3 channels (at most 765): 6 bytes a pixel of temporary memory
    ink = np.abs(a.astype(np.int16) - np.array(bg, dtype=np.int16)).sum(axis=-1, dtype=np.int16) > threshold
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if len(rows) == 0:
        return img
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    side = max(bottom - top, right - left) + 1 + 2 * pad
    x0, y0 = round((left + right + 1) / 2 - side / 2), round((top + bottom + 1) / 2 - side / 2)
    box = (max(x0, 0), max(y0, 0), min(x0 + side, img.width), min(y0 + side, img.height))
    part, at = img.crop(box), (max(-x0, 0), max(-y0, 0))
    # a thin strip's square would be far larger than the image: draw it smaller, so memory follows the input
    limit = max(2 * img.width * img.height, _TRIM_MIN_CANVAS)
    if side * side > limit:
        scale = math.sqrt(limit) / side
        side = max(1, int(side * scale))
        part = part.resize((max(1, round(part.width * scale)), max(1, round(part.height * scale))), _BICUBIC)
        at = (min(round(at[0] * scale), side - 1), min(round(at[1] * scale), side - 1))
    canvas = Image.new("RGB", (side, side), bg)
    canvas.paste(part, at)
    return canvas


class TrimMargin:
    """``trim_margin`` as a transform step, followed by ``then`` (e.g. an ``EvalTransform``) when given: for
    artwork such as icons and emoji, whose artists leave margins of different widths around the subject."""

    def __init__(self, then: Callable[[Image.Image], Any] | None = None, *, pad: int = 2, threshold: int = 30,
                 background: tuple[int, int, int] = (255, 255, 255)) -> None:
        self.then, self.pad, self.threshold, self.background = then, int(pad), int(threshold), tuple(background)
        trim_margin(Image.new("RGB", (1, 1)), pad=self.pad, threshold=self.threshold, background=self.background)

    def __call__(self, img: Image.Image | str | os.PathLike[str]) -> Any:
        out = trim_margin(_as_image(img), pad=self.pad, threshold=self.threshold, background=self.background)
        return out if self.then is None else self.then(out)

    def __repr__(self) -> str:
        then = "" if self.then is None else f" -> {self.then!r}"
        return f"TrimMargin(pad={self.pad}, threshold={self.threshold}, background={self.background}){then}"


class _Normalized:
    """Shared mean/std handling: stored as plain tuples so the object pickles small and device-free."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def _normalize(self, t: torch.Tensor) -> torch.Tensor:
        # Subtract then divide in float32, the same arithmetic as the reference, so results match bit-for-bit.
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return t.sub_(mean).div_(std)


class EvalTransform(_Normalized):
    """Eval preprocessing: OpenAI's (shorter side -> R bicubic, centre crop R, RGB, /255, normalize) by
    default, or OpenCLIP's other ``resize_mode``s: ``squash`` (both sides to R, aspect not kept) and
    ``longest`` (the long side to R, zero-padded to R x R around the centre); ``interpolation`` as named."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
    ) -> None:
        super().__init__(mean, std)
        self.image_size = _check_size(image_size)
        if resize_mode not in RESIZE_MODES or interpolation not in _RESAMPLE:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES} and interpolation one of "
                             f"{tuple(_RESAMPLE)}, got {resize_mode!r} and {interpolation!r}")
        self.interpolation, self.resize_mode = interpolation, resize_mode

    def __call__(self, img: Image.Image | str | os.PathLike[str]) -> torch.Tensor:
        img, s, resample = _as_image(img), self.image_size, _RESAMPLE[self.interpolation]
        if self.resize_mode == "shortest":
            img = resize_center_crop(img, s, resample)
        elif self.resize_mode == "squash":
            img = img.resize((s, s), resample)
        else:  # longest: the output never exceeds R x R, whatever the aspect ratio
            w, h = img.size
            ratio = max(w, h) / s
            img = center_crop(img.resize((max(1, round(w / ratio)), max(1, round(h / ratio))), resample), s)
        return self._normalize(to_tensor(img))

    def __repr__(self) -> str:
        extra = "" if (self.interpolation, self.resize_mode) == ("bicubic", "shortest") else (
            f", interpolation={self.interpolation!r}, resize_mode={self.resize_mode!r}")
        return f"EvalTransform(image_size={self.image_size}, mean={self.mean}, std={self.std}{extra})"


class TrainTransform(_Normalized):
    """Random resized crop (OpenCLIP's default scale (0.9, 1.0)), bicubic, RGB, normalize. No flip.

    Randomness comes from torch's global RNG unless a ``generator`` is given. The global RNG is the right
    default: DataLoader reseeds it per worker, whereas a generator stored in the transform is copied into
    every worker with the same state and would give all workers the same crops.
    """

    def __init__(
        self,
        image_size: int,
        scale: tuple[float, float] = (0.9, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(mean, std)
        self.image_size = _check_size(image_size)
        lo, hi = (float(v) for v in scale)
        if not 0 < lo <= hi:
            raise ValueError(f"scale must satisfy 0 < min <= max, got {scale}")
        rlo, rhi = (float(v) for v in ratio)
        if not 0 < rlo <= rhi:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.scale = (lo, hi)
        self.ratio = (rlo, rhi)
        self.generator = generator

    def get_params(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Sample a crop box ``(left, top, crop_w, crop_h)`` inside a ``width`` x ``height`` image.

        Tries 10 times to draw an area fraction from ``scale`` and a log-uniform aspect ratio from
        ``ratio`` that fits; otherwise falls back to the largest centred crop with the ratio clamped into
        range, so the box is always inside the image.
        """
        g = self.generator
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            u = torch.rand(2, generator=g, dtype=torch.float64).tolist()
            target_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0])
            aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=g))
                left = int(torch.randint(0, width - w + 1, (1,), generator=g))
                return left, top, w, h
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w = width
            h = int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h = height
            w = int(round(h * self.ratio[1]))
        else:
            w, h = width, height
        w, h = max(1, min(w, width)), max(1, min(h, height))
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, img: Image.Image | str | os.PathLike[str]) -> torch.Tensor:
        img = _as_image(img)
        left, top, w, h = self.get_params(*img.size)
        # Crop then resize (not resize(box=...)) so border pixels are treated as a crop-then-resize pipeline
        # treats them; RGB conversion stays after the resize, as in the eval path.
        img = img.crop((left, top, left + w, top + h))
        img = img.resize((self.image_size, self.image_size), _BICUBIC)
        return self._normalize(to_tensor(img))

    def __getstate__(self) -> dict:
        # torch.Generator is not reliably picklable; carry its state instead.
        state = self.__dict__.copy()
        g = state.pop("generator")
        state["_generator_state"] = None if g is None else (str(g.device), g.get_state())
        return state

    def __setstate__(self, state: dict) -> None:
        gen_state = state.pop("_generator_state", None)
        self.__dict__.update(state)
        self.generator = None
        if gen_state is not None:
            device, rng_state = gen_state
            self.generator = torch.Generator(device=device)
            self.generator.set_state(rng_state)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(image_size={self.image_size}, scale={self.scale}, ratio={self.ratio}, "
            f"mean={self.mean}, std={self.std})"
        )


def _check_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return image_size


def image_transform(
    image_size: int,
    train: bool = False,
    *,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Callable[[Image.Image], torch.Tensor]:
    """Build the preprocessing for a model of input resolution ``image_size``.

    ``train=False`` gives OpenAI's eval transform (the one the released numbers depend on); ``train=True``
    gives the random-resized-crop augmentation used by OpenCLIP. Both return picklable objects mapping a
    PIL image to a float32 ``[3, image_size, image_size]`` tensor.
    """
    if train:
        return TrainTransform(image_size, scale=scale, ratio=ratio, mean=mean, std=std)
    return EvalTransform(image_size, mean=mean, std=std)


def transform_for(pp: PreprocessConfig, train: bool = False) -> Callable[[Image.Image], torch.Tensor]:
    """The eval (or training) preprocessing a ``PreprocessConfig`` describes: what a checkpoint records."""
    if train:
        return image_transform(pp.image_size, True, mean=pp.mean, std=pp.std)
    return EvalTransform(pp.image_size, mean=pp.mean, std=pp.std, interpolation=pp.interpolation,
                         resize_mode=pp.resize_mode)
