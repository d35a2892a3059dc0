"""Training-time image augmentation: crops and flips as before; colour jitter, grayscale, flat colours, outlines,
random convolutions and zooming out when asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from torchclip.data import ImageAugment, StyleAugment
from torchclip.train.config import load_config


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))


FULL = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0)}  # the whole square image: no crop randomness to compare


def _run(aug: ImageAugment, seed: int) -> torch.Tensor:
    return aug.build(32)(_image(), torch.Generator().manual_seed(seed))


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    from torchclip.transforms import OPENAI_MEAN, OPENAI_STD

    return x * torch.tensor(OPENAI_STD).view(3, 1, 1) + torch.tensor(OPENAI_MEAN).view(3, 1, 1)


def test_no_colour_augmentation_by_default_and_reproducible_per_seed() -> None:
    plain, jittered = ImageAugment(**FULL), ImageAugment(**FULL, color_jitter=1.0)
    assert torch.equal(_run(ImageAugment(hflip=0.5), 3), _run(ImageAugment(hflip=0.5), 3))
    assert torch.equal(_run(jittered, 3), _run(jittered, 3))
    assert all(torch.equal(_run(plain, 0), _run(plain, s)) for s in range(5))  # nothing random left here
    changed = [not torch.allclose(_run(plain, s), _run(jittered, s), atol=1e-3) for s in range(20)]
    assert 10 <= sum(changed) < 20  # jittered on about 80% of draws, never on all


def test_grayscale_makes_channels_equal() -> None:
    x = _unnormalize(_run(ImageAugment(**FULL, grayscale=1.0), 0))
    assert (x[0] - x[1]).abs().max() < 1e-5 and (x[1] - x[2]).abs().max() < 1e-5
    y = _unnormalize(_run(ImageAugment(**FULL), 0))  # negative control: a colour image keeps its colours
    assert (y[0] - y[1]).abs().max() > 0.1


def test_jitter_strength_scales_the_change() -> None:
    base = _unnormalize(_run(ImageAugment(**FULL), 1))
    weak = [(_unnormalize(_run(ImageAugment(**FULL, color_jitter=0.05), s)) - base).abs().mean() for s in range(8)]
    strong = [(_unnormalize(_run(ImageAugment(**FULL, color_jitter=1.0), s)) - base).abs().mean() for s in range(8)]
    assert float(torch.stack(strong).mean()) > 3 * float(torch.stack(weak).mean())


@pytest.mark.parametrize("key,value", [("grayscale", 1.5), ("color_jitter", -0.1)])
def test_config_rejects_out_of_range(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"data.{key}"):
        load_config(None, [f"--data.{key}={value}"])


def _artwork() -> Image.Image:
    """A shaded disc on white: a smooth gradient (many colours) with one clear edge."""
    yy, xx = np.mgrid[0:40, 0:40]
    inside = (yy - 20) ** 2 + (xx - 20) ** 2 < 14**2
    shade = (80 + 4 * xx).clip(0, 255)
    rgb = np.where(inside[..., None], np.stack([shade, shade // 2, 255 - shade], -1), 255).astype(np.uint8)
    return Image.fromarray(rgb)


def test_flatten_cuts_the_colours_and_keeps_the_picture() -> None:
    from torchclip.data import flatten_colours

    img = _artwork()
    before = len(img.getcolors(4096))
    for seed in range(5):
        flat = flatten_colours(img, torch.Generator().manual_seed(seed))
        assert len(flat.getcolors(4096)) <= 12 < before  # negative control: the original has more colours
        diff = np.abs(np.asarray(flat, dtype=float) - np.asarray(img, dtype=float)).mean()
        assert diff < 20  # the same picture, not noise


def test_outlines_darken_edges_only() -> None:
    from torchclip.data import draw_outlines

    img = _artwork()
    out = np.asarray(draw_outlines(img, torch.Generator().manual_seed(0)), dtype=int)
    src = np.asarray(img, dtype=int)
    changed = (out != src).any(-1)
    assert changed.sum() > 20  # the disc's rim became a line
    assert changed[18:22, 18:22].sum() == 0 and changed[:3, :3].sum() == 0  # not inside, not the frame
    assert (out[changed] <= 60).all()  # dark ink
    blank = Image.new("RGB", (40, 40), "white")  # negative control: no edges, nothing drawn
    assert np.array_equal(np.asarray(draw_outlines(blank, torch.Generator().manual_seed(0))), np.asarray(blank))


def test_style_changes_only_when_asked_and_reproducible() -> None:
    plain, styled = ImageAugment(**FULL), ImageAugment(**FULL, style=StyleAugment(flatten=0.5, outline=0.5))
    img = _artwork()

    def run(aug: ImageAugment, seed: int) -> torch.Tensor:
        return aug.build(32)(img, torch.Generator().manual_seed(seed))

    assert torch.equal(run(styled, 4), run(styled, 4))
    changed = [not torch.allclose(run(plain, s), run(styled, s), atol=1e-3) for s in range(20)]
    assert 8 <= sum(changed) < 20  # about 75% of draws change, never all


@pytest.mark.parametrize("key", ["flatten", "outline"])
def test_style_options_range_checked(key: str) -> None:
    with pytest.raises(ValueError, match=f"data.{key}"):
        load_config(None, [f"--data.{key}=1.2"])
    assert getattr(load_config(None, [f"--data.{key}=0.3"]).data, key) == 0.3


def test_random_conv_changes_texture_not_layout() -> None:
    from torchclip.data import random_conv

    x = _run(ImageAugment(**FULL), 0)  # [3, 32, 32], normalized
    outs = [random_conv(x, torch.Generator().manual_seed(s)) for s in range(12)]
    assert all(o.shape == x.shape and torch.isfinite(o).all() for o in outs)
    assert torch.equal(outs[3], random_conv(x, torch.Generator().manual_seed(3)))  # reproducible per generator
    assert sum(not torch.allclose(o, x, atol=1e-3) for o in outs) >= 10  # changed on nearly every draw
    # the scale stays the input's (weights with variance 1/fan-in), not blown up or washed out
    ratios = torch.tensor([float(o.std() / x.std()) for o in outs])
    assert 0.2 < float(ratios.median()) < 2.0
    flat = torch.ones(3, 32, 32)  # an even image stays even away from the border: no new structure invented
    y = random_conv(flat, torch.Generator().manual_seed(1))
    assert float(y[:, 4:-4, 4:-4].std(dim=(1, 2)).max()) < 1e-5


def test_random_conv_only_when_asked() -> None:
    plain, mixed = ImageAugment(**FULL), ImageAugment(**FULL, style=StyleAugment(random_conv=0.5))
    assert torch.equal(_run(mixed, 2), _run(mixed, 2))
    changed = [not torch.allclose(_run(plain, s), _run(mixed, s), atol=1e-3) for s in range(20)]
    assert 4 <= sum(changed) < 20  # about half the draws
    with pytest.raises(ValueError, match="data.random_conv"):
        load_config(None, ["--data.random_conv=2"])


def test_training_passes_every_image_option_to_the_stream(tmp_path, monkeypatch) -> None:
    from trainkit import make_shards, tiny_overrides

    from torchclip.train import loop
    from torchclip.train.config import TrainConfig

    seen = {}

    class Stop(Exception):
        pass

    def capture(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(loop, "ContrastiveStream", capture)
    shards = make_shards(tmp_path / "shards", n_shards=1, per_shard=8)
    data = {"color_jitter": 0.1, "grayscale": 0.2, "flatten": 0.3, "outline": 0.4, "random_conv": 0.5, "hflip": 0.6,
            "zoom_out": 0.7, "zoom_out_scale": [0.5, 0.9]}
    with pytest.raises(Stop):
        loop.train(TrainConfig.from_dict(tiny_overrides(shards, tmp_path / "run", data=data)))
    aug = seen["image_augment"]
    assert (aug.color_jitter, aug.grayscale, aug.hflip) == (0.1, 0.2, 0.6)
    assert aug.style == StyleAugment(flatten=0.3, outline=0.4, random_conv=0.5)
    assert (aug.zoom_out, tuple(aug.zoom_out_scale)) == (0.7, (0.5, 0.9))


def _ink(img: Image.Image) -> np.ndarray:
    return (np.asarray(img, dtype=int) < 250).any(-1)  # [H, W]: not background white


def test_zoom_out_draws_the_picture_smaller_on_its_background() -> None:
    from torchclip.data import zoom_out

    img = _artwork()
    area = _ink(img).sum()
    for seed in range(6):
        out = zoom_out(img, (0.5, 0.7), torch.Generator().manual_seed(seed))
        assert out.size == img.size
        ink = _ink(out)
        assert 0.2 * area < ink.sum() < 0.55 * area  # side factor 0.5-0.7: a quarter to half the area
        ys, xs = ink.nonzero()
        assert ys.max() - ys.min() < 0.75 * 28 and xs.max() - xs.min() < 0.75 * 28  # the disc is 28 px wide
    a = zoom_out(img, (0.5, 0.7), torch.Generator().manual_seed(3))
    assert np.array_equal(np.asarray(a), np.asarray(zoom_out(img, (0.5, 0.7), torch.Generator().manual_seed(3))))
    whole = zoom_out(img, (1.0, 1.0), torch.Generator().manual_seed(0))  # control: factor 1 is the picture
    assert np.array_equal(np.asarray(whole), np.asarray(img))
    dark = Image.fromarray(np.where(_ink(img)[..., None], np.asarray(img), 10).astype(np.uint8))  # [40, 40, 3]
    filled = np.asarray(zoom_out(dark, (0.5, 0.5), torch.Generator().manual_seed(0)))
    assert (filled[0, 0] == 10).all()  # the canvas takes the picture's own background, not white


def test_zoom_out_only_when_asked_and_range_checked() -> None:
    plain, zoomed = ImageAugment(**FULL), ImageAugment(**FULL, zoom_out=0.5, zoom_out_scale=(0.5, 0.8))
    img = _artwork()

    def run(aug: ImageAugment, seed: int) -> torch.Tensor:
        return aug.build(32)(img, torch.Generator().manual_seed(seed))

    assert torch.equal(run(zoomed, 5), run(zoomed, 5))
    changed = [not torch.allclose(run(plain, s), run(zoomed, s), atol=1e-3) for s in range(20)]
    assert 4 <= sum(changed) < 20  # about half the draws
    assert all(torch.equal(run(plain, 0), run(ImageAugment(**FULL, zoom_out_scale=(0.5, 0.8)), s)) for s in range(5))
    for bad, key in [("--data.zoom_out=1.5", "data.zoom_out"), ("--data.zoom_out_scale=[0,0.5]", "data.zoom_out_scale"),
                     ("--data.zoom_out_scale=[0.9,0.5]", "data.zoom_out_scale"),
                     ("--data.zoom_out_scale=[0.5,1.2]", "data.zoom_out_scale")]:
        with pytest.raises(ValueError, match=key):
            load_config(None, [bad])
    assert load_config(None, ["--data.zoom_out_scale=[0.5,0.9]"]).data.zoom_out_scale == (0.5, 0.9)
