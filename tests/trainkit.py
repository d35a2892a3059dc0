"""Test helpers for the data and training tests: tiny WebDataset shards and a tiny run config."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20)}
SHAPES = ("square", "circle")


def png_bytes(color: tuple[int, int, int], shape: str, size: int = 20) -> bytes:
    from PIL import ImageDraw

    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    box = (3, 3, size - 4, size - 4)
    (d.rectangle if shape == "square" else d.ellipse)(box, fill=color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def sample_members(i: int) -> dict[str, bytes]:
    """Sample ``i``: a coloured shape with a tag-list caption and a json with name and category."""
    cname = list(COLORS)[i % len(COLORS)]
    shape = SHAPES[(i // len(COLORS)) % len(SHAPES)]
    name = f"{cname} {shape}"
    return {
        "png": png_bytes(COLORS[cname], shape),
        "txt": f"{name}, {cname}, {shape}, sample {i}".encode(),
        "json": json.dumps({"name": name, "category": shape, "caption": f"a {name}"}).encode(),
    }


def make_shards(folder: Path, n_shards: int = 2, per_shard: int = 16, *, extra: dict[str, dict[str, bytes]] | None = None,
                prefix: str = "shard") -> str:
    """``n_shards`` tars of ``per_shard`` samples (keys ``s<i>``); ``extra`` samples go into the first shard.

    Returns the brace spec ``folder/shard-{000..NNN}.tar``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    i = 0
    for s in range(n_shards):
        with tarfile.open(folder / f"{prefix}-{s:03d}.tar", "w") as tar:
            for _ in range(per_shard):
                for ext, data in sample_members(i).items():
                    add(tar, f"s{i:05d}.{ext}", data)
                i += 1
            if s == 0 and extra:
                for key, members in extra.items():
                    for ext, data in members.items():
                        add(tar, f"{key}.{ext}", data)
    return str(folder / f"{prefix}-{{000..{n_shards - 1:03d}}}.tar")


def tiny_overrides(train: str, out: Path, **sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A nested override dict for a model that trains a step in well under a second on one core."""
    cfg: dict[str, dict[str, Any]] = {
        "model": {"preset": "cpu-vit-32", "image_size": 16, "patch_size": 8, "vision_width": 64,
                  "vision_layers": 1, "text_width": 32, "text_heads": 1, "text_layers": 1, "embed_dim": 16,
                  "context_length": 16},
        "data": {"train": train, "batch_size": 8, "num_workers": 0, "shuffle_buffer": 16, "vocab": "bpe:600"},
        "optim": {"steps": 4, "warmup": 1, "lr": 1e-3},
        "run": {"output_dir": str(out), "threads": 1, "log_every": 1, "save_every": 2, "progress": False,
                "tensorboard": False},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg
