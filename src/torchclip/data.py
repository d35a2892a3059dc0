"""Training data: WebDataset tar shards and CSV/TSV files -> batches of (pixels, token ids).

Sources
    * WebDataset shards (``data/shard-{000..099}.tar``, several specs joined with ``::``) from anywhere
      :mod:`torchclip.shards` opens them: local paths, ``pipe:`` commands, http(s), ``s3://``/``gs://``/
      ``az://``. Members that share a key (``dir/key.ext``) form one sample; the image is
      ``.jpg``/``.jpeg``/``.png``/``.webp`` and the caption is ``.txt`` or a field of ``.json`` -- the layout
      img2dataset writes.
    * CSV/TSV with a header (OpenCLIP's ``filepath``/``title`` columns by default); image paths are relative
      to the file's folder.

Why the stream is built the way it is
    Each (rank, DataLoader worker) pair is one *stream*: a deterministic function of ``(seed, stream id)``.
    The pipeline is raw bytes -> shuffle buffer -> decode -> augment -> batch, and every batch carries the
    stream's *cursor* (raw items consumed so far). Resuming therefore replays the cheap raw part (no image
    decoding) up to the saved cursor and continues exactly where the interrupted run was, mid-epoch, with
    the same shuffle and the same augmentations: each sample's randomness is seeded from its position,
    never from a global RNG. Streams are infinite (epochs loop; ``resampled`` draws shards with
    replacement), which is what step-based training wants.

Broken samples never crash a run: undecodable images, missing members and empty captions are skipped and
counted; each batch carries the counts since the previous batch of its stream so the trainer can log them.
A shard that cannot be read is an error naming it, or a counted skip (``skip_bad_shards``); a source in
which a whole epoch yields no usable sample is an error with the counts, never a silent hang.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from .shards import MAX_MEMBER_BYTES, ShardError, expand
from .shards import iter_tar as _iter_tar_samples

__all__ = [
    "IMAGE_EXTS",
    "CaptionAugment",
    "ImageAugment",
    "StyleAugment",
    "Batch",
    "ContrastiveStream",
    "SkipSample",
    "expand_urls",
    "iter_tar",
    "read_csv",
    "decode_image",
    "get_caption",
    "load_eval_samples",
]

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SKIP_REASONS = ("missing_image", "missing_caption", "empty_caption", "corrupt_image", "oversize_member", "bad_shard")
Raw = dict[str, Any]  # {"__key__": str, "__url__": str, ext: bytes, ...} or {"__key__", "__path__", "caption"}


class SkipSample(Exception):
    """A sample that cannot be used; ``reason`` is one of ``SKIP_REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# ---- sources ------------------------------------------------------------------------------------------------

expand_urls = expand  # the lazy shard list of a spec (see torchclip.shards.expand)


def iter_tar(url: str, counts: dict[str, int] | None = None, *, skip_bad: bool = False,
             max_member: int = MAX_MEMBER_BYTES) -> Iterator[Raw]:
    """Stream the samples of one shard (any URL :func:`torchclip.shards.open_shard` takes) as ``{ext: bytes}``.

    A shard that cannot be opened or read (missing, denied, truncated, not a tar, a compression bomb) is a
    :class:`~torchclip.shards.ShardError` naming it; with ``skip_bad`` it ends early instead and
    ``counts['bad_shard']`` grows by one -- for long runs that prefer losing a shard to stopping.
    """
    try:
        for sample in _iter_tar_samples(url, max_member=max_member):
            raw: Raw = {"__key__": sample.key, "__url__": url, **sample.data}
            if sample.oversize:
                raw["__oversize__"] = sample.oversize
            yield raw
    except ShardError:
        if not skip_bad:
            raise
        if counts is not None:
            counts["bad_shard"] = counts.get("bad_shard", 0) + 1


def read_csv(path: str, image_key: str = "filepath", caption_key: str = "title") -> list[Raw]:
    """Rows of a CSV (``,``) or TSV (``.tsv``/``.tab``: tab) with a header, as raw samples.

    Relative image paths are resolved against the file's folder, so a dataset folder can move.
    """
    p = Path(path)
    delim = "\t" if p.suffix.lower() in (".tsv", ".tab") else ","
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delim)
        if reader.fieldnames is None or image_key not in reader.fieldnames or caption_key not in reader.fieldnames:
            raise ValueError(f"{path}: needs columns {image_key!r} and {caption_key!r}, has {reader.fieldnames}")
        rows = []
        for i, row in enumerate(reader):
            img = row.get(image_key) or ""
            rows.append({"__key__": f"{p.name}:{i}", "__path__": str(p.parent / img) if img else "",
                         "caption": row.get(caption_key) or ""})
    return rows


# ---- decoding -----------------------------------------------------------------------------------------------


def decode_image(data: bytes) -> Image.Image:
    """Fully decode image bytes to RGB, the pixel count checked from the header first (a small file claiming
    a huge canvas is refused before decoding); any failure is a ``SkipSample('corrupt_image')``."""
    from .transforms import load_image

    try:
        return load_image(data).convert("RGB")
    except Exception as e:  # ImageDecodeError, and whatever else Pillow raises on broken data
        raise SkipSample("corrupt_image", f"{type(e).__name__}: {e}") from e


def _where(raw: Raw) -> str:
    """``shard.tar: sample KEY`` -- where a sample came from, for messages."""
    src = raw.get("__url__") or raw.get("__path__") or "?"
    return f"{src}: sample {raw.get('__key__')}"


def get_caption(raw: Raw, caption_key: str = "txt") -> str:
    """The caption: the ``.txt`` member (``caption_key='txt'``), else the ``caption_key`` field of ``.json``."""
    if "caption" in raw:  # CSV row
        text = raw["caption"]
    elif caption_key == "txt" and "txt" in raw:
        text = raw["txt"].decode("utf-8", errors="replace")
    elif "json" in raw:
        try:
            meta = json.loads(raw["json"])
        except ValueError as e:
            raise SkipSample("missing_caption", f"{_where(raw)}: bad .json ({e})") from e
        key = "caption" if caption_key == "txt" else caption_key
        text = meta.get(key) if isinstance(meta, dict) else None
        if not isinstance(text, str):
            raise SkipSample("missing_caption", f"{_where(raw)}: no {key!r} in the .json")
    else:
        raise SkipSample("missing_caption", raw["__key__"])
    text = " ".join(text.split())
    if not text:
        raise SkipSample("empty_caption", raw["__key__"])
    return text


def _image_bytes(raw: Raw) -> bytes:
    if "__path__" in raw:
        try:
            return Path(raw["__path__"]).read_bytes()
        except OSError as e:
            raise SkipSample("missing_image", raw["__path__"]) from e
    for ext in IMAGE_EXTS:
        if ext in raw:
            return raw[ext]
    if any(ext in IMAGE_EXTS for ext in raw.get("__oversize__", ())):
        raise SkipSample("oversize_member", f"{_where(raw)}: image over the member size limit")
    raise SkipSample("missing_image", raw["__key__"])


# ---- augmentation ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StyleAugment:
    """Drawing-style changes for artwork, each with its probability: ``flatten`` cuts the colours to a few
    flat ones (no shading), ``outline`` draws the edges between regions as dark lines, and ``random_conv``
    mixes the normalized pixels with a random convolution of themselves (RandConv, Xu et al. 2021): local
    texture and colour change, shapes stay."""

    flatten: float = 0.0
    outline: float = 0.0
    random_conv: float = 0.0


@dataclass(frozen=True)
class ImageAugment:
    """Random resized crop (area ``scale``, aspect ``ratio``), an optional horizontal flip, and colour
    augmentation: with probability 0.8 a colour jitter of strength ``color_jitter`` (brightness, contrast and
    saturation factors in [1 - 0.8s, 1 + 0.8s], hue turned by up to 0.2s of the circle, in random order as in
    SimCLR), then grayscale with probability ``grayscale``; drawing-style changes as ``style`` says. With
    probability ``zoom_out`` the picture first shrinks to a side factor in ``zoom_out_scale`` on its own
    background colour (SSD's "expand"): the same subject drawn smaller, as other artists draw it. With
    ``trim_margin`` every image is first cropped to its content (``transforms.trim_margin``), so artwork from
    artists who leave different margins is seen at one scale."""

    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.0
    color_jitter: float = 0.0
    grayscale: float = 0.0
    style: StyleAugment = StyleAugment()
    zoom_out: float = 0.0
    zoom_out_scale: tuple[float, float] = (0.6, 1.0)
    trim_margin: bool = False

    def build(self, image_size: int) -> Callable[[Image.Image, torch.Generator], torch.Tensor]:
        from .transforms import TrainTransform, trim_margin

        trim = bool(self.trim_margin)
        tf = TrainTransform(image_size, scale=tuple(self.scale), ratio=tuple(self.ratio))
        hflip, jitter, gray = float(self.hflip), float(self.color_jitter), float(self.grayscale)
        flat, line, rconv = float(self.style.flatten), float(self.style.outline), float(self.style.random_conv)
        zoom, zoom_range = float(self.zoom_out), tuple(self.zoom_out_scale)

        def apply(img: Image.Image, g: torch.Generator) -> torch.Tensor:
            if trim:
                img = trim_margin(img)
            if zoom > 0 and float(torch.rand((), generator=g)) < zoom:
                img = zoom_out(img.convert("RGB"), zoom_range, g)
            if flat > 0 and float(torch.rand((), generator=g)) < flat:
                img = flatten_colours(img.convert("RGB"), g)
            if line > 0 and float(torch.rand((), generator=g)) < line:
                img = draw_outlines(img.convert("RGB"), g)
            if jitter > 0 and float(torch.rand((), generator=g)) < 0.8:
                img = color_jitter(img.convert("RGB"), jitter, g)
            if gray > 0 and float(torch.rand((), generator=g)) < gray:
                img = img.convert("L").convert("RGB")
            tf.generator = g  # per-sample generator: reproducible crops whatever worker runs them
            x = tf(img)  # [3, R, R]
            if hflip > 0 and float(torch.rand((), generator=g)) < hflip:
                x = x.flip(-1)
            if rconv > 0 and float(torch.rand((), generator=g)) < rconv:
                x = random_conv(x, g)
            return x

        return apply


def _uniform_int(lo: int, hi: int, g: torch.Generator) -> int:
    return int(torch.randint(lo, hi + 1, (), generator=g))


def zoom_out(img: Image.Image, side: tuple[float, float], g: torch.Generator) -> Image.Image:
    """``img`` shrunk by a side factor drawn from ``side`` and pasted at a random place on a canvas of its
    own size, filled with the median colour of its outermost pixels (the background, for artwork)."""
    import numpy as np

    w, h = img.size
    z = side[0] + (side[1] - side[0]) * float(torch.rand((), generator=g))
    nw, nh = max(1, round(w * z)), max(1, round(h * z))
    a = np.asarray(img)  # [H, W, 3]
    frame = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])  # [2W + 2H, 3]
    fill = tuple(int(v) for v in np.median(frame, axis=0))
    canvas = Image.new("RGB", (w, h), fill)
    canvas.paste(img.resize((nw, nh), Image.Resampling.BICUBIC), (_uniform_int(0, w - nw, g), _uniform_int(0, h - nh, g)))
    return canvas


def flatten_colours(img: Image.Image, g: torch.Generator) -> Image.Image:
    """The image in 4 to 12 colours (median cut, no dithering): flat regions instead of shading."""
    colours = _uniform_int(4, 12, g)
    return img.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).convert("RGB")


def draw_outlines(img: Image.Image, g: torch.Generator) -> Image.Image:
    """Edges between regions (and against the background) drawn in a dark gray, 1 or 2 px wide."""
    from PIL import ImageDraw, ImageFilter

    edges = img.convert("L").filter(ImageFilter.FIND_EDGES)
    threshold = _uniform_int(48, 96, g)
    mask = edges.point(lambda v: 255 if v > threshold else 0)
    ImageDraw.Draw(mask).rectangle((0, 0, mask.width - 1, mask.height - 1), outline=0)  # the filter's frame
    if float(torch.rand((), generator=g)) < 0.3:
        mask = mask.filter(ImageFilter.MaxFilter(3))
    ink = _uniform_int(0, 60, g)
    return Image.composite(Image.new("RGB", img.size, (ink, ink, ink)), img, mask)


def random_conv(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``x`` ([3, R, R]) mixed with itself through a random 3->3 convolution: kernel 1, 3, 5 or 7, weights
    drawn with variance 1/fan-in (the output keeps the input's scale), mixing weight uniform in [0, 1]."""
    k = (1, 3, 5, 7)[int(torch.randint(4, (), generator=g))]
    w = torch.randn(3, 3, k, k, generator=g) / (3 * k * k) ** 0.5
    y = torch.nn.functional.conv2d(x[None], w.to(x.dtype), padding=k // 2)[0]  # [3, R, R]
    a = float(torch.rand((), generator=g))
    return a * x + (1 - a) * y


def color_jitter(img: Image.Image, strength: float, g: torch.Generator) -> Image.Image:
    """Brightness, contrast, saturation and hue changed by random amounts that scale with ``strength``."""
    from PIL import ImageEnhance

    def factor() -> float:
        return 1.0 + 0.8 * strength * (2 * float(torch.rand((), generator=g)) - 1)

    ops = ["brightness", "contrast", "saturation", "hue"]
    for i in torch.randperm(4, generator=g).tolist():
        op = ops[i]
        if op == "brightness":
            img = ImageEnhance.Brightness(img).enhance(factor())
        elif op == "contrast":
            img = ImageEnhance.Contrast(img).enhance(factor())
        elif op == "saturation":
            img = ImageEnhance.Color(img).enhance(factor())
        else:
            shift = int(round(255 * 0.2 * strength * (2 * float(torch.rand((), generator=g)) - 1)))
            h, sat, v = img.convert("HSV").split()
            h = h.point([(x + shift) % 256 for x in range(256)])  # a lookup table: hue wraps around
            img = Image.merge("HSV", (h, sat, v)).convert("RGB")
    return img


@dataclass(frozen=True)
class CaptionAugment:
    """Caption augmentation for tag-list captions (``name, keyword, keyword, ...``).

    Each tag after the first (the name) is dropped with ``tag_dropout`` and the rest shuffled when
    ``shuffle_tags``; the name itself is dropped with ``name_dropout`` when at least one other tag is left
    (so the keywords, which unseen concepts share, must carry the match on their own); then, with probability ``template_prob``, one of ``templates`` (each with
    a ``{}``) wraps the result. Zero-shot prompts look like "an emoji of {name}.", so training on varied
    subsets of the tags in such frames is what lets the text tower match a bare name at test time.
    """

    tag_dropout: float = 0.0
    shuffle_tags: bool = False
    templates: tuple[str, ...] = ()
    template_prob: float = 0.0
    name_dropout: float = 0.0
    separator: str = ", "

    @property
    def active(self) -> bool:
        return (self.tag_dropout > 0 or self.shuffle_tags or self.name_dropout > 0
                or (bool(self.templates) and self.template_prob > 0))

    def __call__(self, caption: str, rng: random.Random) -> str:
        if not self.active:
            return caption
        tags = [t for t in caption.split(self.separator.strip()) if t.strip()]
        tags = [t.strip() for t in tags]
        head, rest = tags[:1], tags[1:]
        rest = [t for t in rest if rng.random() >= self.tag_dropout]
        if self.shuffle_tags:
            rng.shuffle(rest)
        if rest and self.name_dropout > 0 and rng.random() < self.name_dropout:
            head = []
        text = self.separator.join(head + rest)
        if self.templates and rng.random() < self.template_prob:
            text = rng.choice(self.templates).format(text)
        return text


# ---- the stream -------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One batch from one stream. ``cursor``: raw items that stream had consumed after this batch."""

    pixels: torch.Tensor  # [B, 3, R, R] float32, normalized
    ids: torch.Tensor  # [B, L] int64 token ids
    stream: int
    cursor: int
    skips: dict[str, int] = field(default_factory=dict)  # skipped since the stream's previous batch


def _shuffled(items: Iterator[Raw], size: int, rng: random.Random) -> Iterator[Raw]:
    """Shuffle buffer: fill ``size`` items, then emit a random one and refill its slot with the next."""
    if size <= 1:
        yield from items
        return
    buf: list[Raw] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


_SHUFFLE_LIST_MAX = 1 << 20  # shard lists up to this size are shuffled as a list; longer ones lazily


class _LazyPermutation:
    """A seeded bijection of ``range(n)`` for shard lists too long to shuffle as a list.

    A four-round Feistel network on the next even power of two, cycle-walked back into range: O(1) memory
    and time per index whatever ``n`` is.
    """

    def __init__(self, n: int, seed: str) -> None:
        bits = max(2, (n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.mask = (1 << self.half) - 1
        self.n = n
        rng = random.Random(seed)
        self.keys = [rng.getrandbits(64) for _ in range(4)]

    def _round(self, x: int, key: int) -> int:
        x = ((x ^ key) * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
        x ^= x >> 29
        return x & self.mask

    def __call__(self, i: int) -> int:
        while True:
            left, right = i >> self.half, i & self.mask
            for key in self.keys:
                left, right = right, left ^ self._round(right, key)
            i = (left << self.half) | right
            if i < self.n:
                return i


def _shard_order(n: int, rng: random.Random, seed: str) -> Callable[[int], int]:
    """Position -> shard index for one epoch's shuffled order."""
    if n <= _SHUFFLE_LIST_MAX:
        order = list(range(n))
        rng.shuffle(order)
        return order.__getitem__
    return _LazyPermutation(n, seed)


class ContrastiveStream(IterableDataset):
    """Infinite, resumable stream of :class:`Batch` for one rank (``DataLoader(batch_size=None)``).

    ``source``: shard spec (``::``-joined, brace patterns, any URL :mod:`torchclip.shards` opens) or a
    ``.csv``/``.tsv`` file. ``start``: per-stream cursors to resume from (``{stream id: cursor}``); ``rotate``
    shifts which DataLoader worker plays which stream, so the DataLoader's round-robin order continues where
    it stopped. ``skip_bad_shards``: count unreadable shards and go on instead of stopping with an error.
    """

    def __init__(
        self,
        source: str,
        *,
        image_size: int,
        tokenizer: Callable[..., torch.Tensor],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        caption_key: str = "txt",
        csv_image_key: str = "filepath",
        csv_caption_key: str = "title",
        image_augment: ImageAugment = ImageAugment(),
        caption_augment: CaptionAugment = CaptionAugment(),
        start: dict[int, int] | None = None,
        rotate: int = 0,
        skip_bad_shards: bool = False,
    ) -> None:
        super().__init__()
        self.source, self.image_size, self.tokenizer = source, image_size, tokenizer
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.num_workers, self.shuffle_buffer, self.resampled = max(num_workers, 1), shuffle_buffer, resampled
        self.caption_key, self.image_augment, self.caption_augment = caption_key, image_augment, caption_augment
        self.start, self.rotate, self.skip_bad_shards = dict(start or {}), rotate, skip_bad_shards
        if source.lower().endswith((".csv", ".tsv", ".tab")):
            self.rows: list[Raw] | None = read_csv(source, csv_image_key, csv_caption_key)
            self.urls: Sequence[str] = []
            if not self.rows:
                raise ValueError(f"{source}: no rows")
        else:
            self.rows, self.urls = None, expand_urls(source)
            if not len(self.urls):
                raise ValueError(f"no shards in {source!r}")

    @property
    def n_streams(self) -> int:
        return self.world_size * self.num_workers

    def stream_id(self, worker: int) -> int:
        """Global stream id of DataLoader worker ``worker`` on this rank (after rotation)."""
        return self.rank * self.num_workers + (worker + self.rotate) % self.num_workers

    def _raw_items(self, stream: int, counts: dict[str, int], info: dict[str, int] | None = None) -> Iterator[Raw]:
        """This stream's raw samples, epoch after epoch, forever. Deterministic in (seed, stream).

        ``info['epoch_items']`` is set to the number of raw items of the first full epoch once it is known.
        """
        for epoch in range(1 << 62):
            produced = 0
            for item in self._epoch_items(stream, epoch, counts):
                produced += 1
                yield item
            if not produced:
                raise RuntimeError(f"stream {stream} got no samples in epoch {epoch} of {self.source!r} "
                                   f"({self.n_streams} streams; skipped so far: {counts})")
            if info is not None and "epoch_items" not in info:
                info["epoch_items"] = produced

    def _shard(self, url: str, counts: dict[str, int]) -> Iterator[Raw]:
        return iter_tar(url, counts, skip_bad=self.skip_bad_shards)

    def _epoch_items(self, stream: int, epoch: int, counts: dict[str, int]) -> Iterator[Raw]:
        """One epoch of this stream: its share of the rows/shards, in an order seeded by (seed, epoch)."""
        n = self.n_streams
        order_rng = random.Random(f"{self.seed}/order/{epoch}")
        if self.rows is not None:
            idx = list(range(len(self.rows)))
            order_rng.shuffle(idx)
            yield from (self.rows[i] for i in idx[stream::n])
            return
        urls = self.urls
        if self.resampled:
            rng = random.Random(f"{self.seed}/resample/{stream}/{epoch}")
            for _ in range(max(1, len(urls) // n)):
                yield from self._shard(rng.choice(urls), counts)
            return
        order = _shard_order(len(urls), order_rng, f"{self.seed}/order/{epoch}")
        if len(urls) >= n:  # split by shard
            for j in range(stream, len(urls), n):
                yield from self._shard(urls[order(j)], counts)
        else:  # fewer shards than streams: every stream reads all, keeps every n-th sample
            i = 0
            for j in range(len(urls)):
                for item in self._shard(urls[order(j)], counts):
                    if i % n == stream:
                        yield item
                    i += 1

    def _sample(self, raw: Raw, index: int, stream: int, augment: Callable) -> tuple[torch.Tensor, str]:
        caption = get_caption(raw, self.caption_key)
        img = decode_image(_image_bytes(raw))
        g = torch.Generator().manual_seed(hash((self.seed, stream, index)) & ((1 << 63) - 1))
        rng = random.Random(f"{self.seed}/{stream}/{index}")
        return augment(img, g), self.caption_augment(caption, rng)

    def iter_stream(self, stream: int) -> Iterator[Batch]:
        """The batches of one stream, starting after ``self.start[stream]`` raw items."""
        counts: dict[str, int] = {}
        info: dict[str, int] = {}
        items = _shuffled(self._raw_items(stream, counts, info), self.shuffle_buffer,
                          random.Random(f"{self.seed}/shuffle/{stream}"))
        cursor, skip_to = 0, self.start.get(stream, 0)
        for _ in range(skip_to):  # replay raw bytes only: cheap, and restores the shuffle buffer exactly
            next(items)
            cursor += 1
        counts.clear()
        augment = self.image_augment.build(self.image_size)
        pixels: list[torch.Tensor] = []
        texts: list[str] = []
        unusable = 0  # raw items in a row that gave no sample
        total_skips: dict[str, int] = {}
        for raw in items:
            cursor += 1
            try:
                x, text = self._sample(raw, cursor - 1, stream, augment)
            except SkipSample as e:
                counts[e.reason] = counts.get(e.reason, 0) + 1
                total_skips[e.reason] = total_skips.get(e.reason, 0) + 1
                unusable += 1
                epoch = info.get("epoch_items")
                if epoch is not None and unusable > epoch + self.shuffle_buffer:
                    raise RuntimeError(
                        f"no usable sample in a whole epoch of {self.source!r} (stream {stream}: {unusable} "
                        f"items in a row skipped: {total_skips}; last: {e})") from None
                continue
            unusable = 0
            total_skips.clear()
            pixels.append(x)
            texts.append(text)
            if len(pixels) == self.batch_size:
                ids = self.tokenizer(texts, truncate=True)  # [B, L]
                yield Batch(torch.stack(pixels), ids, stream, cursor, dict(counts))
                counts.clear()
                pixels, texts = [], []

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None and info.num_workers != self.num_workers:
            raise ValueError(f"stream built for {self.num_workers} workers, DataLoader has {info.num_workers}")
        if info is not None:
            torch.set_num_threads(1)  # a worker decodes per-sample in Python; threads would fight the model's
        return self.iter_stream(self.stream_id(worker))


# ---- evaluation sets -----------------------------------------------------------------------------------------


def load_eval_samples(source: str, image_size: int, *, caption_key: str = "txt", limit: int | None = None,
                      trim_margin: bool = False) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """All (decodable) samples of a small evaluation set, in file order, with OpenAI's eval transform.

    Returns ``pixels`` [N, 3, R, R] and one metadata dict per image: the ``.json`` fields (if any) plus
    ``caption`` and ``__key__``, so a zero-shot task can take its labels from any field. ``trim_margin``
    crops each image to its content first (``transforms.TrimMargin``).
    """
    from .transforms import TrimMargin, image_transform

    tf = image_transform(image_size)
    if trim_margin:
        tf = TrimMargin(tf)
    rows = read_csv(source) if source.lower().endswith((".csv", ".tsv", ".tab")) else None
    items: Iterator[Raw] = iter(rows) if rows is not None else (
        item for url in expand_urls(source) for item in iter_tar(url))  # a bad shard raises, naming it
    pixels, metas = [], []
    for raw in items:
        try:
            caption = get_caption(raw, caption_key)
            img = decode_image(_image_bytes(raw))
        except SkipSample:
            continue
        meta: dict[str, Any] = {}
        if "json" in raw:
            try:
                loaded = json.loads(raw["json"])
                meta = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                meta = {}
        meta.update(caption=caption, __key__=raw["__key__"])
        pixels.append(tf(img))
        metas.append(meta)
        if limit is not None and len(pixels) >= limit:
            break
    if not pixels:
        raise ValueError(f"no decodable samples in {source!r}")
    return torch.stack(pixels), metas


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (model init); data randomness is seeded per sample instead."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
