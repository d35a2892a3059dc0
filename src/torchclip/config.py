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
    "HFTextConfig",
    "CLIPConfig",
    "PRESETS",
    "OPENAI_MODELS",
    "OPENAI_TWINS",
    "canonical_name",
    "from_open_clip",
    "get_preset",
    "list_presets",
    "PreprocessConfig",
    "OPEN_CLIP_MODELS",
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


HF_TEXT_POOLINGS = ("cls", "mean", "eot")
HF_TEXT_PROJECTIONS = ("linear", "mlp", "none")


@dataclass(frozen=True)
class HFTextConfig:
    """A pretrained transformers encoder as the text tower (LiT, Zhai et al. 2022), plus its tokenizer contract.

    ``encoder`` is the encoder's own ``config.json`` (as a JSON string: the config stays hashable), so a saved
    model rebuilds the tower without its source folder. ``pooling``: ``cls`` (the first token), ``mean`` (over
    real tokens) or ``eot`` (the end-of-text token, ``[SEP]`` for BERT); ``proj``: ``linear`` or ``mlp`` (one
    hidden GELU layer) into the shared embedding, or ``none``: the pooled features are the embedding (the
    encoder's own space kept as it is; needs ``embed_dim`` equal to the encoder's width). The special ids are
    the tokenizer's (``[CLS]``, ``[SEP]``, ``[PAD]`` for BERT).
    """

    encoder: str
    vocab_size: int
    sot_id: int
    eot_id: int
    pad_id: int
    context_length: int = 64
    pooling: str = "mean"
    proj: str = "linear"
    source: str = field(default="", compare=False)  # the folder or hub repo the encoder came from

    def __post_init__(self) -> None:
        if self.pooling not in HF_TEXT_POOLINGS:
            raise ValueError(f"text pooling must be 'cls', 'mean' or 'eot', got {self.pooling!r}")
        if self.proj not in HF_TEXT_PROJECTIONS:
            raise ValueError(f"text projection must be 'linear', 'mlp' or 'none', got {self.proj!r}")
        for name in ("sot_id", "eot_id", "pad_id"):
            v = getattr(self, name)
            if not 0 <= v < self.vocab_size:
                raise ValueError(f"{name}={v} outside the vocabulary [0, {self.vocab_size})")
        enc = self.encoder_config
        limit = enc.get("max_position_embeddings")
        if isinstance(limit, int) and not 2 <= self.context_length <= limit:
            raise ValueError(f"context_length {self.context_length} outside the encoder's [2, {limit}]")

    @property
    def encoder_config(self) -> dict[str, Any]:
        import json

        cfg = json.loads(self.encoder)
        if not isinstance(cfg, dict) or "model_type" not in cfg:
            raise ValueError("the text encoder's config must be a transformers config with a model_type")
        return cfg

    # What the sanity bounds and tokenizer checks read, as for TextConfig.
    @property
    def width(self) -> int:
        return int(self.encoder_config["hidden_size"])

    @property
    def layers(self) -> int:
        return int(self.encoder_config.get("num_hidden_layers", 1))

    @property
    def heads(self) -> int:
        return int(self.encoder_config.get("num_attention_heads", 1))

    @property
    def mlp_ratio(self) -> float:
        return float(self.encoder_config.get("intermediate_size", 4 * self.width)) / self.width


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int
    vision: VisionConfig
    text: TextConfig | HFTextConfig
    activation: str = "quick_gelu"  # "quick_gelu" (all OpenAI checkpoints) or "gelu"
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None  # a learned logit bias, as models trained with the sigmoid loss carry
    source: str = field(default="", compare=False)  # where the preset's numbers come from

    def __post_init__(self) -> None:
        if self.activation not in ("quick_gelu", "gelu"):
            raise ValueError(f"activation must be 'quick_gelu' or 'gelu', got {self.activation!r}")
        if isinstance(self.text, HFTextConfig) and self.text.proj == "none" and self.embed_dim != self.text.width:
            raise ValueError(f"text projection 'none' keeps the encoder's {self.text.width}-wide features as the "
                             f"embedding: embed_dim must be {self.text.width}, got {self.embed_dim}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["vision"]["layers"] = (
            list(self.vision.layers) if isinstance(self.vision.layers, tuple) else self.vision.layers
        )
        if self.init_logit_bias is None:  # files of models without one stay readable by earlier versions
            del d["init_logit_bias"]
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
        text = dict(d.pop("text"))
        text_cls = HFTextConfig if "encoder" in text else TextConfig
        return cls(vision=VisionConfig(**vision), text=text_cls(**text), **d)

    def replace(self, **kw: Any) -> CLIPConfig:
        return dataclasses.replace(self, **kw)


# OpenCLIP config fields torchclip has no knob for, with the value that means "CLIP's architecture"
# (open_clip's CLIPVisionCfg / CLIPTextCfg defaults). Any other value is a different architecture.
_OC_VISION_DEFAULTS: dict[str, Any] = {
    "ls_init_value": None, "attentional_pool": False, "attn_pooler_queries": 256, "attn_pooler_heads": 8,
    "no_ln_pre": False, "pos_embed_type": "learnable", "final_ln_after_pool": False, "pool_type": "tok",
    "output_tokens": False, "act_kwargs": None, "norm_kwargs": None, "block_type": None, "qk_norm": False,
    "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
    "scale_fc": False, "timm_model_name": None, "timm_model_pretrained": False, "timm_pool": "avg",
    "timm_proj": "linear", "timm_proj_bias": False, "timm_drop": 0.0, "timm_drop_path": None,
}
_OC_TEXT_DEFAULTS: dict[str, Any] = {
    "hf_tokenizer_name": None, "tokenizer_mode": None, "tokenizer_kwargs": None, "ls_init_value": None,
    "embed_cls": False, "eos_id": 2, "no_causal_mask": False, "final_ln_after_pool": False, "pool_type": "argmax",
    "proj_bias": False, "proj_type": "linear", "output_tokens": False, "act_kwargs": None, "norm_kwargs": None,
    "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "hf_model_name": None,
    "hf_model_pretrained": True, "hf_proj_type": "mlp", "hf_pooler_type": "mean_pooler",
}
_OC_TOP_DEFAULTS: dict[str, Any] = {"custom_text": False, "nonscalar_logit_scale": False, "cast_dtype": None,
                                    "output_dict": False}


def from_open_clip(model_cfg: dict[str, Any], where: str = "open_clip config") -> CLIPConfig:
    """The exact config of an OpenCLIP ``model_cfg`` (``model_configs/*.json``, ``open_clip_config.json``).

    Raises ValueError naming the field when the config sets anything torchclip does not build (a timm or HF
    tower, attentional pooling, no ln_pre, another text pooling, ...): an approximate model is never returned.
    """
    def refuse(field_: str, value: Any) -> ValueError:
        return ValueError(f"{where}: {field_}={value!r} is not CLIP's architecture; torchclip cannot build it")

    known_top = {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "init_logit_scale", "init_logit_bias",
                 *_OC_TOP_DEFAULTS}
    for k, v in model_cfg.items():
        if k not in known_top:
            raise refuse(k, v)
        if k in _OC_TOP_DEFAULTS and v != _OC_TOP_DEFAULTS[k]:
            raise refuse(k, v)
    v_cfg, t_cfg = dict(model_cfg["vision_cfg"]), dict(model_cfg["text_cfg"])
    for prefix, cfg, defaults in (("vision_cfg", v_cfg, _OC_VISION_DEFAULTS), ("text_cfg", t_cfg, _OC_TEXT_DEFAULTS)):
        for k in [k for k in cfg if k in defaults]:
            value = cfg.pop(k)
            if value != defaults[k]:
                raise refuse(f"{prefix}.{k}", value)
    size = v_cfg.pop("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise refuse("vision_cfg.image_size", size)
        size = size[0]
    layers = v_cfg.pop("layers", 12)
    vision_kw = {k: v_cfg.pop(k) for k in ("width", "head_width", "mlp_ratio", "patch_dropout") if k in v_cfg}
    patch = v_cfg.pop("patch_size", 16)
    text_kw = {k: t_cfg.pop(k) for k in ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio",
                                         "pad_id") if k in t_cfg}
    for prefix, rest in (("vision_cfg", v_cfg), ("text_cfg", t_cfg)):
        if rest:
            k = next(iter(rest))
            raise refuse(f"{prefix}.{k}", rest[k])
    resnet = isinstance(layers, (list, tuple))
    return CLIPConfig(
        embed_dim=int(model_cfg["embed_dim"]),
        vision=VisionConfig(image_size=int(size), layers=tuple(layers) if resnet else int(layers),
                            patch_size=None if resnet else int(patch), **vision_kw),
        text=TextConfig(**text_kw),
        activation="quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
        init_logit_scale=float(model_cfg.get("init_logit_scale", math.log(1 / 0.07))),
        init_logit_bias=None if model_cfg.get("init_logit_bias") is None else float(model_cfg["init_logit_bias"]),
        source=where,
    )


def _clip(e: int, r: int, layers: int | tuple[int, int, int, int], w: int, p: int | None, wt: int, src: str,
          *, act: str = "quick_gelu", head_width: int = 64, mlp_ratio: float = 4.0,
          text_layers: int = 12) -> CLIPConfig:
    """A preset from the paper's table columns: embed dim, resolution, image layers (a ViT's count or a ResNet's
    four stage depths), image width, patch size (None: ModifiedResNet), text width (64-wide text heads)."""
    return CLIPConfig(
        embed_dim=e,
        vision=VisionConfig(image_size=r, layers=layers, width=w, patch_size=p, head_width=head_width,
                            mlp_ratio=mlp_ratio),
        text=TextConfig(width=wt, heads=wt // 64, layers=text_layers),
        activation=act,
        source=src,
    )


_T = "Radford et al. 2021, Table 19/20 (ResNet/ViT hyperparameters); released OpenAI checkpoint"
_OC = "OpenCLIP model config of the same name (model_configs/*.json)"
_CPU_VIT = "small ViT for CPU training (paper Table 20 shape rules, scaled down)"
_CPU_RN = "small ModifiedResNet for CPU training (paper Table 19 shape rules, scaled down)"


def _open_clip_archs() -> dict[str, CLIPConfig]:
    """OpenCLIP's CLIP-family architectures that have pretrained weights, under OpenCLIP's names.

    OpenCLIP builds a name with nn.GELU unless it ends in ``-quickgelu``; that includes ``RN50``..``RN50x64``,
    whose text towers are GELU there (OpenAI's released ResNets are QuickGELU: ``RN50-quickgelu``).
    """
    base: dict[str, CLIPConfig] = {
        "RN50": _clip(1024, 224, (3, 4, 6, 3), 64, None, 512, _OC),
        "RN101": _clip(512, 224, (3, 4, 23, 3), 64, None, 512, _OC),
        "RN50x4": _clip(640, 288, (4, 6, 10, 6), 80, None, 640, _OC),
        "RN50x16": _clip(768, 384, (6, 8, 18, 8), 96, None, 768, _OC),
        "RN50x64": _clip(1024, 448, (3, 15, 36, 10), 128, None, 1024, _OC),
        "ViT-B-32": _clip(512, 224, 12, 768, 32, 512, _OC),
        "ViT-B-32-256": _clip(512, 256, 12, 768, 32, 512, _OC),
        "ViT-B-16": _clip(512, 224, 12, 768, 16, 512, _OC),
        "ViT-B-16-plus-240": _clip(640, 240, 12, 896, 16, 640, _OC),
        "ViT-L-14": _clip(768, 224, 24, 1024, 14, 768, _OC),
        "ViT-L-14-336": _clip(768, 336, 24, 1024, 14, 768, _OC),
        "ViT-H-14": _clip(1024, 224, 32, 1280, 14, 1024, _OC, head_width=80, text_layers=24),
        "ViT-H-14-378": _clip(1024, 378, 32, 1280, 14, 1024, _OC, head_width=80, text_layers=24),
        "ViT-g-14": _clip(1024, 224, 40, 1408, 14, 1024, _OC, head_width=88, mlp_ratio=4.3637, text_layers=24),
        "ViT-bigG-14": _clip(1280, 224, 48, 1664, 14, 1280, _OC, head_width=104, mlp_ratio=4.9231,
                             text_layers=32),
    }
    # The twins OpenCLIP ships as model configs (``<name>-quickgelu.json``).
    quick = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336",
             "ViT-H-14", "ViT-H-14-378", "ViT-bigG-14")
    out: dict[str, CLIPConfig] = {}
    for name, cfg in base.items():
        out[name] = cfg.replace(activation="gelu")
        if name in quick:
            out[f"{name}-quickgelu"] = cfg.replace(activation="quick_gelu")
    return out


# OpenAI's spellings name OpenAI's architectures, which are QuickGELU; the ResNet names are spelled the same in
# both libraries and follow OpenCLIP here (see ``_open_clip_archs``).
OPENAI_TWINS: dict[str, str] = {
    "ViT-B/32": "ViT-B-32-quickgelu",
    "ViT-B/16": "ViT-B-16-quickgelu",
    "ViT-L/14": "ViT-L-14-quickgelu",
    "ViT-L/14@336px": "ViT-L-14-336-quickgelu",
}
# OpenAI's nine released models, in openai/CLIP's ``available_models()`` order.
OPENAI_MODELS: tuple[str, ...] = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16",
                                  "ViT-L/14", "ViT-L/14@336px")

_OPEN_CLIP = _open_clip_archs()
# OpenCLIP's architecture names torchclip builds, in OpenCLIP's spelling (``open_clip.list_models()``'s subset).
OPEN_CLIP_MODELS: tuple[str, ...] = tuple(_OPEN_CLIP)

PRESETS: dict[str, CLIPConfig] = {
    # OpenAI's nine first (openai/CLIP's order), then OpenCLIP's names, then the small CPU presets.
    **{n: _OPEN_CLIP[n] for n in OPENAI_MODELS if n in _OPEN_CLIP},
    **{n: _OPEN_CLIP[t].replace(source=_T) for n, t in OPENAI_TWINS.items()},
    **_OPEN_CLIP,
    # Small presets that train on a 2-core CPU in minutes. Shapes follow the paper's scaling rules
    # (head width 64, MLP ratio 4, text width tied to embed size) shrunk to 32-64 px inputs.
    "cpu-vit-32": _clip(128, 32, 4, 128, 4, 128, _CPU_VIT, act="gelu", text_layers=4),
    "cpu-vit-64": _clip(192, 64, 4, 192, 8, 192, _CPU_VIT, act="gelu", text_layers=4),
    "cpu-rn-64": _clip(128, 64, (1, 1, 1, 1), 16, None, 128, _CPU_RN, act="gelu", text_layers=4),
}

# Other spellings users type: OpenAI's L/14@336 without the suffix, OpenCLIP's ``/`` form of a name.
_ALIASES = {"ViT-L/14-336": "ViT-L/14@336px", "ViT-L-14@336px": "ViT-L-14-336"}


def canonical_name(name: str) -> str | None:
    """Return the preset key for ``name`` or a known alternative spelling, else None.

    ``ViT-B-32`` is OpenCLIP's GELU model and ``ViT-B/32`` OpenAI's QuickGELU one: the two spellings are
    different presets, never aliases of each other.
    """
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
