"""Training-time image augmentation: crops and flips as before, colour jitter and grayscale when asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from torchclip.data import ImageAugment
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
