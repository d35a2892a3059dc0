"""Model configurations: small frozen dataclasses and the named presets.

A config fully determines the module tree and the tokenizer contract (context length, vocabulary size and
the special ids), so that a checkpoint, its tokenizer and its preprocessing can be checked against each
other instead of failing silently (pooling at the wrong position, a mis-sized position table).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "VisionConfig",
    "TextConfig",
    "CLIPConfig",
    "PRESETS",
    "get_preset",
    "list_presets",
    "PreprocessConfig",
    "OPENAI_MEAN",
    "OPENAI_STD",
]


@dataclass(frozen=True)
class VisionConfig:
    """Image tower. ``patch_size=None`` selects the ModifiedResNet, whose ``layers`` is a 4-tuple."""

    image_size: int = 224
    layers: int | tuple[int, ...] = 12
    width: int = 768
    patch_size: int | None = 32
    head_width: int = 64
    mlp_ratio: float = 4.0
    # Training only: share of patch tokens dropped at random per image (FLIP, Li et al. 2023). A
    # regulariser on small data and a speed-up per step; evaluation always sees every patch.
    patch_dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.is_resnet:
            if not (isinstance(self.layers, tuple) and len(self.layers) == 4):
                raise ValueError(f"a ResNet tower needs 4 stage depths, got layers={self.layers!r}")
            if self.image_size % 32:
                raise ValueError(f"ResNet image_size must be a multiple of 32, got {self.image_size}")
        else:
            if not isinstance(self.layers, int):
                raise ValueError(f"a ViT tower needs an int layer count, got layers={self.layers!r}")
            if self.image_size % self.patch_size:
                raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ValueError(f"patch_dropout must be in [0, 1), got {self.patch_dropout}")
        if self.patch_dropout and self.is_resnet:
            raise ValueError("patch_dropout needs a ViT image tower (patch_size set)")
        attn_width = self.width * 32 if self.is_resnet else self.width
        if attn_width % self.head_width:
            raise ValueError(f"attention width {attn_width} is not a multiple of head_width {self.head_width}")

    @property
    def is_resnet(self) -> bool:
        return self.patch_size is None

    @property
    def heads(self) -> int:
        # ResNet: the attention pool runs at 32*width channels.
        return (self.width * 32 if self.is_resnet else self.width) // self.head_width

    @property
    def grid_size(self) -> int:
        return self.image_size // 32 if self.is_resnet else self.image_size // self.patch_size


@dataclass(frozen=True)
class TextConfig:
    """Causal text transformer plus its tokenizer contract.

    The special ids default to OpenAI's layout, where ``<|startoftext|>`` and ``<|endoftext|>`` are the two
    largest ids; the tower pools at the first end-of-text id, which equals OpenAI's argmax pooling there.
    """

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    sot_id: int | None = None
    eot_id: int | None = None
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.sot_id is None:
            object.__setattr__(self, "sot_id", self.vocab_size - 2)
        if self.eot_id is None:
            object.__setattr__(self, "eot_id", self.vocab_size - 1)
        for name in ("sot_id", "eot_id", "pad_id"):
            v = getattr(self, name)
            if not 0 <= v < self.vocab_size:
                raise ValueError(f"{name}={v} outside the vocabulary [0, {self.vocab_size})")
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} is not divisible by heads {self.heads}")


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    activation: str = "quick_gelu"  # "quick_gelu" (all OpenAI checkpoints) or "gelu"
    init_logit_scale: float = math.log(1 / 0.07)
    source: str = field(default="", compare=False)  # where the preset's numbers come from

    def __post_init__(self) -> None:
        if self.activation not in ("quick_gelu", "gelu"):
            raise ValueError(f"activation must be 'quick_gelu' or 'gelu', got {self.activation!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["vision"]["layers"] = (
            list(self.vision.layers) if isinstance(self.vision.layers, tuple) else self.vision.layers
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLIPConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown CLIPConfig keys: {sorted(unknown)}")
        vision = dict(d.pop("vision"))
        if isinstance(vision.get("layers"), list):
            vision["layers"] = tuple(vision["layers"])
        return cls(vision=VisionConfig(**vision), text=TextConfig(**d.pop("text")), **d)

    def replace(self, **kw: Any) -> CLIPConfig:
        return dataclasses.replace(self, **kw)


def _vit(e: int, r: int, layers: int, w: int, p: int, wt: int, src: str) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=e,
        vision=VisionConfig(image_size=r, layers=layers, width=w, patch_size=p),
        text=TextConfig(width=wt, heads=wt // 64, layers=12),
        source=src,
    )


def _rn(e: int, r: int, layers: tuple[int, int, int, int], w: int, wt: int, src: str) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=e,
        vision=VisionConfig(image_size=r, layers=layers, width=w, patch_size=None),
        text=TextConfig(width=wt, heads=wt // 64, layers=12),
        source=src,
    )


_T = "Radford et al. 2021, Table 19/20 (ResNet/ViT hyperparameters); released OpenAI checkpoint"

PRESETS: dict[str, CLIPConfig] = {
    # The nine released OpenAI models (paper Tables 19-20; shapes as in the released checkpoints).
    "RN50": _rn(1024, 224, (3, 4, 6, 3), 64, 512, _T),
    "RN101": _rn(512, 224, (3, 4, 23, 3), 64, 512, _T),
    "RN50x4": _rn(640, 288, (4, 6, 10, 6), 80, 640, _T),
    "RN50x16": _rn(768, 384, (6, 8, 18, 8), 96, 768, _T),
    "RN50x64": _rn(1024, 448, (3, 15, 36, 10), 128, 1024, _T),
    "ViT-B/32": _vit(512, 224, 12, 768, 32, 512, _T),
    "ViT-B/16": _vit(512, 224, 12, 768, 16, 512, _T),
    "ViT-L/14": _vit(768, 224, 24, 1024, 14, 768, _T),
    "ViT-L/14@336px": _vit(768, 336, 24, 1024, 14, 768, _T),
    # Small presets that train on a 2-core CPU in minutes. Shapes follow the paper's scaling rules
    # (head width 64, MLP ratio 4, text width tied to embed size) shrunk to 32-64 px inputs.
    "cpu-vit-32": CLIPConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=32, layers=4, width=128, patch_size=4),
        text=TextConfig(width=128, heads=2, layers=4),
        activation="gelu",
        source="small ViT for CPU training (paper Table 20 shape rules, scaled down)",
    ),
    "cpu-vit-64": CLIPConfig(
        embed_dim=192,
        vision=VisionConfig(image_size=64, layers=4, width=192, patch_size=8),
        text=TextConfig(width=192, heads=3, layers=4),
        activation="gelu",
        source="small ViT for CPU training (paper Table 20 shape rules, scaled down)",
    ),
    "cpu-rn-64": CLIPConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=64, layers=(1, 1, 1, 1), width=16, patch_size=None),
        text=TextConfig(width=128, heads=2, layers=4),
        activation="gelu",
        source="small ModifiedResNet for CPU training (paper Table 19 shape rules, scaled down)",
    ),
}

_ALIASES = {name.replace("/", "-"): name for name in PRESETS}
_ALIASES.update({"ViT-L-14-336": "ViT-L/14@336px", "ViT-L/14-336": "ViT-L/14@336px"})


def canonical_name(name: str) -> str | None:
    """Return the preset key for ``name`` or its OpenCLIP-style spelling (``ViT-B-32``), else None."""
    if name in PRESETS:
        return name
    return _ALIASES.get(name)


def get_preset(name: str) -> CLIPConfig:
    key = canonical_name(name)
    if key is None:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[key]


def list_presets() -> list[str]:
    return list(PRESETS)


OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclass(frozen=True)
class PreprocessConfig:
    """How images are prepared for a model: what a checkpoint bundle records next to its weights.

    ``resize_mode`` as OpenCLIP's: ``shortest`` (resize the short side, center crop: OpenAI's),
    ``longest`` (resize the long side, pad), ``squash`` (resize both sides, aspect not kept).
    """

    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            v = tuple(float(x) for x in getattr(self, name))
            if len(v) != 3 or not all(math.isfinite(x) for x in v):
                raise ValueError(f"preprocess {name} must be 3 finite numbers, got {getattr(self, name)!r}")
            object.__setattr__(self, name, v)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"preprocess std must be positive, got {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {self.image_size!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PreprocessConfig keys: {sorted(unknown)}")
        return cls(**d)
