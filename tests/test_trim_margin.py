"""Margin trimming for artwork (``transforms.trim_margin``): the subject cropped to a square around its content,
as a transform step, a training option, an option of training-time evaluation and of ``torchclip eval``."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchclip.data import ImageAugment, load_eval_samples
from torchclip.transforms import EvalTransform, TrimMargin, trim_margin

WHITE = (255, 255, 255)


def _drawn(size: int, box: tuple[int, int, int, int], colour=(200, 30, 30), background=WHITE) -> Image.Image:
    """A ``size`` square of ``background`` with a solid ``box`` (left, top, right, bottom; exclusive)."""
    a = np.empty((size, size, 3), dtype=np.uint8)
    a[:] = background
    left, top, right, bottom = box
    a[top:bottom, left:right] = colour
    return Image.fromarray(a)


def _ink_box(img: Image.Image, background=WHITE) -> tuple[int, int, int, int]:
    a = np.abs(np.asarray(img, dtype=int) - np.array(background)).sum(-1) > 30
    ys, xs = a.nonzero()
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_crops_to_the_square_around_the_content_with_its_pad() -> None:
    img = _drawn(64, (10, 30, 30, 40))  # 20 wide, 10 high
    out = trim_margin(img, pad=2)
    assert out.mode == "RGB" and out.size == (24, 24)  # the longer side plus 2 px each side
    assert _ink_box(out) == (2, 7, 22, 17)  # centred: 2 px left and right, 7 above and below
    assert np.array_equal(np.asarray(out)[7:17, 2:22], np.asarray(img)[30:40, 10:30])  # the pixels, unresampled
    assert trim_margin(img, pad=0).size == (20, 20)


def test_square_past_the_frame_is_filled_with_the_background() -> None:
    img = _drawn(32, (0, 0, 32, 6))  # a wide bar along the top edge
    out = trim_margin(img, pad=1)
    assert out.size == (34, 34)
    a = np.asarray(out)
    assert _ink_box(out) == (1, 14, 33, 20)
    assert (a[:14] == 255).all() and (a[20:] == 255).all()  # above and below the bar: background


def test_no_content_comes_back_whole_and_faint_pixels_are_margin() -> None:
    blank = Image.new("RGB", (20, 12), WHITE)
    assert np.array_equal(np.asarray(trim_margin(blank)), np.asarray(blank))
    faint = _drawn(40, (5, 5, 35, 35), colour=(245, 245, 245))  # a summed difference of 30: not content
    faint.paste((0, 0, 0), (18, 18, 22, 22))
    assert trim_margin(faint, pad=0).size == (4, 4)
    assert trim_margin(faint, pad=0, threshold=20).size == (30, 30)  # control: a lower threshold keeps it


def test_background_colour_and_transparent_margins() -> None:
    dark = _drawn(40, (10, 10, 20, 20), colour=(240, 240, 0), background=(0, 0, 0))
    assert trim_margin(dark, pad=0, background=(0, 0, 0)).size == (10, 10)
    assert trim_margin(dark, pad=0).size == (40, 40)  # control: against white, the black margin is content
    a = np.zeros((40, 40, 4), dtype=np.uint8)  # transparent black around an opaque red square
    a[12:20, 12:20] = (200, 30, 30, 255)
    out = trim_margin(Image.fromarray(a, "RGBA"), pad=0)
    assert out.mode == "RGB" and out.size == (8, 8)
    assert (np.asarray(out) == (200, 30, 30)).all()


def test_bad_arguments_are_refused() -> None:
    img = _drawn(8, (2, 2, 4, 4))
    for kw in ({"pad": -1}, {"pad": 5000}, {"threshold": 765}, {"threshold": -1}, {"background": (0, 0)},
               {"background": (0, 0, 300)}):
        with pytest.raises(ValueError, match="trim_margin"):
            trim_margin(img, **kw)
        with pytest.raises(ValueError, match="trim_margin"):
            TrimMargin(**kw)


def test_the_square_follows_the_content_and_memory_the_input() -> None:
    long = Image.new("RGB", (1500, 1), (9, 9, 9))
    assert trim_margin(long, pad=3).size == (1506, 1506)  # the content's longer side plus the pad
    dot = Image.new("RGB", (4000, 3000), WHITE)
    dot.putpixel((1234, 2345), (0, 0, 0))
    assert trim_margin(dot, pad=0).size == (1, 1)
    strip = Image.new("RGB", (1_000_000, 2), (9, 9, 9))  # its square would be 10^12 pixels
    out = trim_margin(strip, pad=0)
    assert out.size == (2048, 2048)  # 2^22 pixels: drawn smaller, in proportion
    a = np.asarray(out)
    ink = (a != 255).any(axis=(1, 2)).nonzero()[0]
    assert 1 <= len(ink) <= 2 and 1022 <= ink[0] <= ink[-1] <= 1025  # the strip, in the middle
    assert (a[ink] == 9).all()  # across the whole width
    photo = Image.new("RGB", (3000, 3000), (9, 9, 9))
    assert trim_margin(photo, pad=2).size == (3004, 3004)  # a square image is never shrunk


def test_as_a_transform_step_and_its_repr() -> None:
    img = _drawn(48, (6, 20, 30, 32))
    tf = TrimMargin(EvalTransform(32))
    assert torch.equal(tf(img), EvalTransform(32)(trim_margin(img)))
    assert not torch.equal(tf(img), EvalTransform(32)(img))
    assert repr(tf).startswith("TrimMargin(pad=2, threshold=30") and "EvalTransform(image_size=32" in repr(tf)
    assert repr(TrimMargin(EvalTransform(32), pad=3)) != repr(tf)  # the feature cache keys on it
    assert isinstance(TrimMargin()(img), Image.Image)


def test_training_augment_trims_first() -> None:
    full = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0)}
    margin = _drawn(64, (16, 16, 48, 48), colour=(30, 200, 40))
    tight = Image.new("RGB", (36, 36), WHITE)
    tight.paste((30, 200, 40), (2, 2, 34, 34))
    g = torch.Generator()
    trimmed = ImageAugment(**full, trim_margin=True).build(32)(margin, g.manual_seed(0))
    assert torch.equal(trimmed, ImageAugment(**full).build(32)(tight, g.manual_seed(0)))
    assert not torch.equal(trimmed, ImageAugment(**full).build(32)(margin, g.manual_seed(0)))  # control


def _margin_shard(path: Path) -> Path:
    """Four coloured squares of different sizes on white, labelled by colour."""
    with tarfile.open(path, "w") as t:
        for i, (colour, side) in enumerate([((200, 30, 30), 12), ((30, 200, 40), 20), ((30, 40, 220), 28),
                                            ((200, 30, 30), 32)]):
            img = _drawn(40, (4 + i, 3, 4 + i + side, 3 + side), colour=colour)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            for ext, blob in (("png", buf.getvalue()), ("txt", b"a square"),
                              ("json", json.dumps({"category": "red" if i in (0, 3) else f"c{i}"}).encode())):
                info = tarfile.TarInfo(f"s{i}.{ext}")
                info.size = len(blob)
                t.addfile(info, io.BytesIO(blob))
    return path


def test_eval_samples_trim_when_asked(tmp_path: Path) -> None:
    shard = _margin_shard(tmp_path / "m.tar")
    plain, meta = load_eval_samples(str(shard), 32)
    trimmed, meta2 = load_eval_samples(str(shard), 32, trim_margin=True)
    assert meta == meta2 and trimmed.shape == plain.shape == (4, 3, 32, 32)
    with tarfile.open(shard) as t:
        first = Image.open(io.BytesIO(t.extractfile("s0.png").read())).convert("RGB")
    assert torch.equal(trimmed[0], TrimMargin(EvalTransform(32))(first))
    assert not torch.equal(trimmed[0], plain[0])


def test_training_passes_trim_margin_to_the_stream_and_the_eval_sets(tmp_path, monkeypatch) -> None:
    from trainkit import make_shards, tiny_overrides

    from torchclip.train import loop
    from torchclip.train.config import TrainConfig, load_config

    seen: dict = {}

    class Stop(Exception):
        pass

    def eval_sets(specs, image_size, trim_margin=False):
        seen["eval"] = trim_margin
        raise Stop

    monkeypatch.setattr(loop, "load_eval_sets", eval_sets)
    shards = make_shards(tmp_path / "shards", n_shards=1, per_shard=8)
    for on in (True, False):
        cfg = tiny_overrides(shards, tmp_path / f"run{on}", data={"trim_margin": on})
        cfg["eval"] = {"sets": [f"x={shards}"], "trim_margin": on}
        with pytest.raises(Stop):
            loop.train(TrainConfig.from_dict(cfg))
        assert seen["eval"] is on
    monkeypatch.setattr(loop, "ContrastiveStream", lambda *a, **kw: (seen.update(kw), (_ for _ in ()).throw(Stop)))
    with pytest.raises(Stop):
        loop.train(TrainConfig.from_dict(tiny_overrides(shards, tmp_path / "run", data={"trim_margin": True})))
    assert seen["image_augment"].trim_margin is True
    with pytest.raises(ValueError, match="data.trim_margin"):
        load_config(None, ["--data.trim_margin=3"])
    assert load_config(None, ["--eval.trim_margin=true"]).eval.trim_margin is True


def test_eval_cli_trim_margin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from evalkit import byte_tokenizer, tiny_model
    from safetensors.torch import load_file

    from torchclip import save
    from torchclip.evaluation import cli
    from torchclip.evaluation.datasets import open_dataset
    from torchclip.evaluation.features import extract_image_features

    model = tiny_model()
    ckpt = save(model, tmp_path / "m.safetensors")
    byte_tokenizer().save(tmp_path / "tokenizer.txt.gz")
    shard = _margin_shard(tmp_path / "m.tar")
    common = ["--model", str(ckpt), "--tokenizer", str(tmp_path / "tokenizer.txt.gz"), "--quiet"]
    argv = ["zeroshot", *common, "--dataset", str(shard), "--label-key", "json:category", "--templates", "{}",
            "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(argv) == 0
    assert cli.main(argv + ["--trim-margin"]) == 0
    assert cli.main(argv + ["--trim-margin"]) == 0
    capsys.readouterr()
    cached = {load_file(f)["features"] for f in (tmp_path / "cache" / "features").glob("*.safetensors")}
    assert len(cached) == 2  # trimmed and plain features are cached apart; the second trimmed run reuses its own
    ds = open_dataset(str(shard), label_key="json:category")
    want = extract_image_features(model, ds, TrimMargin(EvalTransform(32)), cache_dir=False, progress=False)
    plain = extract_image_features(model, ds, cache_dir=False, progress=False)
    assert any(torch.allclose(f, want, atol=1e-5) for f in cached)
    assert any(torch.allclose(f, plain, atol=1e-5) for f in cached) and not torch.allclose(want, plain, atol=1e-3)
    for extra in (["probe", "--train", str(shard), "--test", str(shard), "--label-key", "json:category", "--C", "1"],
                  ["retrieval", "--dataset", str(shard)]):
        assert cli.main([*extra, *common, "--trim-margin", "--no-cache"]) == 0
