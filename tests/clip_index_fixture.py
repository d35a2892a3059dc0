"""A tiny image collection, its embeddings and index, shared by the serve tests (not a test module).

Twelve flat-colour pictures with a white square, embedded by a seeded random ``cpu-vit-32``: the model is
random, so results are not meaningful, but every code path (embed -> index -> queries -> pages) runs on real
files, and image -> image search of an indexed picture must return that picture first.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from torchclip.embed import ModelSpec, embed_source, open_source
from torchclip.search.cli_index import main as index_main

TOKENIZER = "fixtures/tokenizer/bpe_simple_vocab_16e6.txt.gz"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (240, 230, 30)}


def colour_image(rgb: tuple[int, int, int], j: int = 0) -> Image.Image:
    img = Image.new("RGB", (64 + 16 * j, 56), rgb)
    img.paste((255, 255, 255), (6 * j + 4, 6 * j + 4, 6 * j + 24, 6 * j + 24))
    return img


def build_colour_index(tmp: Path, tokenizer: Path | None) -> tuple[Path, ModelSpec]:
    """``(index folder, model spec)`` over ``tmp/imgs``; the index carries the colour names as labels."""
    root = tmp / "imgs"
    root.mkdir(parents=True)
    for name, rgb in COLOURS.items():
        for j in range(3):
            colour_image(rgb, j).save(root / f"{name}{j}.png")
    spec = ModelSpec("cpu-vit-32", random_init=True, seed=0, tokenizer=str(tokenizer) if tokenizer else None)
    embed_source(open_source([root]), spec.load_model(), tmp / "emb", model_spec=spec, workers=0, progress=False)
    labels = ["--labels", ",".join(COLOURS)] if tokenizer else []
    assert index_main([str(tmp / "emb"), "--out", str(tmp / "idx"), *labels]) == 0
    return tmp / "idx", spec
