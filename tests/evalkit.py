"""Builders shared by the evaluation tests: a tiny CLIP with a 514-id byte-level vocabulary, and small
synthetic datasets written as image folders, WebDataset shards and CSV files."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from torchclip import CLIP, CLIPConfig
from torchclip.config import TextConfig, VisionConfig
from torchclip.tokenizer import Tokenizer

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 20)}


def tiny_config(embed_dim: int = 32, resnet: bool = False) -> CLIPConfig:
    """A CLIP whose text tower matches ``Tokenizer([])`` (bytes only: 512 + SOT + EOT = 514 ids)."""
    vision = (VisionConfig(image_size=32, layers=(1, 1, 1, 1), width=8, patch_size=None, head_width=32)
              if resnet else VisionConfig(image_size=32, layers=1, width=64, patch_size=8, head_width=32))
    return CLIPConfig(embed_dim=embed_dim, vision=vision,
                      text=TextConfig(context_length=24, vocab_size=514, width=64, heads=2, layers=1),
                      activation="gelu")


def tiny_model(seed: int = 0, **kw: object) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(tiny_config(**kw)).eval()


def byte_tokenizer() -> Tokenizer:
    return Tokenizer([], context_length=24)


def color_image(name: str, seed: int, size: int = 40) -> Image.Image:
    """A solid colour with a little noise, so images of one class differ but stay separable."""
    rng = np.random.default_rng(seed)
    base = np.array(COLORS[name], dtype=np.int16)
    arr = np.clip(base + rng.integers(-20, 21, size=(size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_folder(root: Path, per_class: int = 3, classes: Sequence[str] = ("red", "green", "blue")) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            color_image(c, i).save(root / c / f"{i}.png")
    return root


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: Sequence[dict[str, object]]) -> Path:
    """``samples``: dicts with ``key``, ``color`` and optional ``txt``, ``json``, ``cls`` members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, s in enumerate(samples):
            key = str(s["key"])
            _add(tar, f"{key}.png", png_bytes(color_image(str(s["color"]), i)))
            if "txt" in s:
                _add(tar, f"{key}.txt", str(s["txt"]).encode())
            if "json" in s:
                _add(tar, f"{key}.json", json.dumps(s["json"]).encode())
            if "cls" in s:
                _add(tar, f"{key}.cls", str(s["cls"]).encode())
    return path


def color_shard(path: Path, per_class: int = 4, classes: Sequence[str] = ("red", "green", "blue"),
                style: str = "flat") -> Path:
    samples = []
    for c in classes:
        for i in range(per_class):
            samples.append({"key": f"{style}_{c}_{i:03d}", "color": c, "txt": f"a {c} square\n{c}",
                            "json": {"category": c, "style": style, "group": f"{c}{i // 2}"}})
    return write_shard(path, samples)
