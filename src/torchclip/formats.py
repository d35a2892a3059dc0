"""Explicit, shape-checked conversions between torchclip's parameter names and foreign layouts.

Layouts handled (reference §3-4):
- OpenAI (also OpenCLIP's built-in ``CLIP``): ``transformer.resblocks.{i}.attn.in_proj_weight``, ...
- HF transformers ``CLIPModel`` (ViT only): ``text_model.encoder.layers.{i}.self_attn.q_proj.weight``, ...

Each layout is a table of key templates; a template's ``{i}`` matches a layer index and ``{p}`` a
parameter suffix, so one table converts in both directions. Conversions never guess: an unmatched key, a
missing key or a wrong shape is a ``CheckpointError`` naming the file, the key and both shapes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .config import OPENAI_MEAN, OPENAI_STD, CLIPConfig, PreprocessConfig, TextConfig, VisionConfig

__all__ = [
    "CheckpointError",
    "openai_to_torchclip",
    "torchclip_to_openai",
    "hf_to_openai",
    "openai_to_hf",
    "infer_openai_config",
    "logit_bias_of",
    "hf_config_to_torchclip",
    "torchclip_to_hf_config",
    "check_state_dict",
    "check_config_bounds",
    "shape_signature",
    "torchclip_to_open_clip_config",
    "open_clip_preprocess_config",
    "hf_preprocess_config",
    "torchclip_to_hf_preprocess_config",
    "OPENAI_NON_WEIGHT_KEYS",
]

# Entries that OpenAI/TorchScript archives hold besides weights (reference §2; fixtures README).
OPENAI_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read into the model, with the file and key that caused it."""


_P = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


# A transformer block's parameters by role, in each layout (HF keeps q/k/v apart: its converters split the
# fused projection themselves).
_BLOCK_KEYS: dict[str, dict[str, str]] = {
    "torchclip": {"ln_1": "norm1.{p}", "ln_2": "norm2.{p}", "qkv_w": "attn.qkv.weight", "qkv_b": "attn.qkv.bias",
                  "out": "attn.proj.{p}", "fc_1": "mlp.fc1.{p}", "fc_2": "mlp.fc2.{p}"},
    "openai": {"ln_1": "ln_1.{p}", "ln_2": "ln_2.{p}", "qkv_w": "attn.in_proj_weight", "qkv_b": "attn.in_proj_bias",
               "out": "attn.out_proj.{p}", "fc_1": "mlp.c_fc.{p}", "fc_2": "mlp.c_proj.{p}"},
    "hf": {"ln_1": "layer_norm1.{p}", "ln_2": "layer_norm2.{p}", "out": "self_attn.out_proj.{p}",
           "fc_1": "mlp.fc1.{p}", "fc_2": "mlp.fc2.{p}"},
}


def _block_rules(a: str, a_prefix: str, b: str, b_prefix: str) -> list[tuple[str, str]]:
    """(layout ``a`` template, layout ``b`` template) for every block parameter both layouts name."""
    ka, kb = _BLOCK_KEYS[a], _BLOCK_KEYS[b]
    return [(f"{a_prefix}.{{i}}.{ka[role]}", f"{b_prefix}.{{i}}.{kb[role]}") for role in ka if role in kb]


# (torchclip template, OpenAI template)
_OPENAI_RULES: list[tuple[str, str]] = [
    ("logit_scale", "logit_scale"),
    ("logit_bias", "logit_bias"),  # OpenCLIP's name, in models trained with the sigmoid loss (OpenAI has none)
    ("text.token_embed.weight", "token_embedding.weight"),
    ("text.pos_embed", "positional_embedding"),
    ("text.norm_final.{p}", "ln_final.{p}"),
    ("text.proj", "text_projection"),
    *_block_rules("torchclip", "text.transformer.blocks", "openai", "transformer.resblocks"),
    # ViT
    ("visual.patch_embed.weight", "visual.conv1.weight"),
    ("visual.cls_token", "visual.class_embedding"),
    ("visual.pos_embed", "visual.positional_embedding"),
    ("visual.norm_pre.{p}", "visual.ln_pre.{p}"),
    ("visual.norm_post.{p}", "visual.ln_post.{p}"),
    ("visual.proj", "visual.proj"),
    *_block_rules("torchclip", "visual.transformer.blocks", "openai", "visual.transformer.resblocks"),
    # ModifiedResNet
    ("visual.stem.conv{n}.weight", "visual.conv{n}.weight"),
    ("visual.stem.bn{n}.{p}", "visual.bn{n}.{p}"),
    ("visual.stages.{s}.{i}.conv{n}.weight", "visual.layer{s1}.{i}.conv{n}.weight"),
    ("visual.stages.{s}.{i}.bn{n}.{p}", "visual.layer{s1}.{i}.bn{n}.{p}"),
    ("visual.stages.{s}.{i}.downsample.conv.weight", "visual.layer{s1}.{i}.downsample.0.weight"),
    ("visual.stages.{s}.{i}.downsample.bn.{p}", "visual.layer{s1}.{i}.downsample.1.{p}"),
    ("visual.attn_pool.pos_embed", "visual.attnpool.positional_embedding"),
    ("visual.attn_pool.{x}_proj.{p}", "visual.attnpool.{x}_proj.{p}"),
    ("visual.attn_pool.out_proj.{p}", "visual.attnpool.c_proj.{p}"),
]

_FIELDS = {"i": r"\d+", "n": r"[123]", "s": r"[0-3]", "s1": r"[1-4]", "p": _P[1:-1], "x": r"[qkv]"}


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for name, rx in _FIELDS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{rx})")
    return re.compile(pattern)


def _fill(template: str, groups: dict[str, str]) -> str:
    g = dict(groups)
    if "s" in g and "s1" not in g:
        g["s1"] = str(int(g["s"]) + 1)
    if "s1" in g and "s" not in g:
        g["s"] = str(int(g["s1"]) - 1)
    return template.format(**g)


_COMPILED = [(_compile(a), _compile(b), a, b) for a, b in _OPENAI_RULES]


def _rename(keys: Iterable[str], to_openai: bool, where: str) -> dict[str, str]:
    keys = list(keys)
    # ``visual.conv1.weight`` is the patch embedding of a ViT but the first stem conv of a ResNet.
    vit = ("visual.proj" if not to_openai else "visual.patch_embed.weight") in keys
    skip = "visual.stem.conv{n}.weight" if vit else "visual.patch_embed.weight"
    out = {}
    for key in keys:
        for ours_rx, theirs_rx, ours_t, theirs_t in _COMPILED:
            if ours_t == skip:
                continue
            m = (ours_rx if to_openai else theirs_rx).fullmatch(key)
            if m:
                out[key] = _fill(theirs_t if to_openai else ours_t, m.groupdict())
                break
        else:
            raise CheckpointError(f"{where}: unexpected key {key!r} (no {'OpenAI' if to_openai else 'torchclip'} "
                                  "counterpart; is this a CLIP checkpoint of a supported layout?)")
    return out


def openai_to_torchclip(sd: Mapping[str, torch.Tensor], where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """OpenAI/OpenCLIP key layout -> torchclip names. Non-weight archive entries must be dropped first."""
    names = _rename(sd.keys(), to_openai=False, where=where)
    return {names[k]: v for k, v in sd.items()}


def torchclip_to_openai(sd: Mapping[str, torch.Tensor], where: str = "model") -> dict[str, torch.Tensor]:
    names = _rename(sd.keys(), to_openai=True, where=where)
    return {names[k]: v for k, v in sd.items()}


def _shape(sd: Mapping[str, Any], key: str, where: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"{where}: required key {key!r} is missing")
    return tuple(sd[key].shape)


def infer_openai_config(sd: Mapping[str, torch.Tensor], where: str = "checkpoint",
                        activation: str = "quick_gelu") -> CLIPConfig:
    """Every hyperparameter from an OpenAI-layout state dict, by the reference's §3 rules."""
    embed_dim = _shape(sd, "text_projection", where)[1]
    ctx = _shape(sd, "positional_embedding", where)[0]
    vocab = _shape(sd, "token_embedding.weight", where)[0]
    wt = _shape(sd, "ln_final.weight", where)[0]
    lt = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    if "visual.proj" in sd:
        wv, _, _, patch = _shape(sd, "visual.conv1.weight", where)
        layers: int | tuple[int, ...] = sum(
            1 for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")
        )
        grid = round(math.sqrt(_shape(sd, "visual.positional_embedding", where)[0] - 1))
        hidden = _shape(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight", where)[0]
        vision = VisionConfig(image_size=patch * grid, layers=layers, width=wv, patch_size=patch,
                              mlp_ratio=_ratio(hidden, wv))
    else:
        layers = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{s}.")}) for s in (1, 2, 3, 4))
        width = _shape(sd, "visual.layer1.0.conv1.weight", where)[0]
        rows = _shape(sd, "visual.attnpool.positional_embedding", where)[0]
        side = round(math.sqrt(rows - 1))
        if side * side + 1 != rows:
            raise CheckpointError(f"{where}: visual.attnpool.positional_embedding has {rows} rows, not s*s+1")
        vision = VisionConfig(image_size=32 * side, layers=layers, width=width, patch_size=None)
    if wt % 64:
        raise CheckpointError(f"{where}: text width {wt} is not a multiple of the head width 64")
    hidden_t = _shape(sd, "transformer.resblocks.0.mlp.c_fc.weight", where)[0]
    text = TextConfig(context_length=ctx, vocab_size=vocab, width=wt, heads=wt // 64, layers=lt,
                      mlp_ratio=_ratio(hidden_t, wt))
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=text, activation=activation,
                      init_logit_bias=logit_bias_of(sd))


def logit_bias_of(sd: Mapping[str, torch.Tensor]) -> float | None:
    """The learned bias of a model trained with the sigmoid loss (OpenCLIP's ``logit_bias``), else None."""
    return float(sd["logit_bias"]) if "logit_bias" in sd else None


def _ratio(hidden: int, width: int) -> float:
    """An MLP ratio whose ``int(width * ratio)`` is ``hidden`` (the modules' rule), 4.0 when it is 4."""
    ratio = hidden / width
    while int(width * ratio) < hidden:  # float rounding may land just below
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def shape_signature(config: CLIPConfig) -> tuple:
    """What a state dict's shapes fix of an architecture: everything but the head count and activation."""
    v, t = config.vision, config.text
    vision = (v.image_size, v.layers, v.width, v.patch_size, None if v.is_resnet else int(v.width * v.mlp_ratio))
    text = (t.context_length, t.vocab_size, t.width, t.layers, int(t.width * t.mlp_ratio))
    return config.embed_dim, vision, text


def check_state_dict(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise ``CheckpointError`` on the first missing/unexpected key or shape mismatch, with both shapes."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing:
        raise CheckpointError(f"{where}: missing {len(missing)} key(s), first {missing[:3]}")
    if unexpected:
        raise CheckpointError(f"{where}: {len(unexpected)} unexpected key(s), first {unexpected[:3]}")
    for k, ref in expected.items():
        if tuple(sd[k].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{where}: key {k!r} has shape {list(sd[k].shape)}, expected {list(ref.shape)}"
            )


# ---------------------------------------------------------------- HF transformers CLIPModel (ViT only)

_HF_RULES: list[tuple[str, str]] = [
    ("logit_scale", "logit_scale"),
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.final_layer_norm.{p}", "ln_final.{p}"),
    *_block_rules("hf", "text_model.encoder.layers", "openai", "transformer.resblocks"),
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm.{p}", "visual.ln_pre.{p}"),
    ("vision_model.post_layernorm.{p}", "visual.ln_post.{p}"),
    *_block_rules("hf", "vision_model.encoder.layers", "openai", "visual.transformer.resblocks"),
]
_HF_COMPILED = [(_compile(a), b) for a, b in _HF_RULES]
_HF_REVERSE = [(_compile(b), a) for a, b in _HF_RULES]


def _apply_rules(rules: list[tuple[re.Pattern[str], str]], key: str) -> str | None:
    """``key`` renamed by the first rule whose pattern matches it; None when none does."""
    for rx, template in rules:
        m = rx.fullmatch(key)
        if m:
            return template.format(**m.groupdict())
    return None


_HF_QKV = re.compile(r"(?P<tower>text_model|vision_model)\.encoder\.layers\.(?P<i>\d+)\.self_attn\.(?P<x>[qkv])_proj\.(?P<p>weight|bias)")
_HF_IGNORED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def hf_to_openai(sd: Mapping[str, torch.Tensor], where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """HF ``CLIPModel`` state dict -> OpenAI layout: q/k/v concatenated, projections transposed."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        if key in _HF_IGNORED:  # stale buffers written by transformers < 4.31
            continue
        if key == "text_projection.weight":
            out["text_projection"] = t.t().contiguous()
            continue
        if key == "visual_projection.weight":
            out["visual.proj"] = t.t().contiguous()
            continue
        m = _HF_QKV.fullmatch(key)
        if m:
            base = "transformer.resblocks" if m["tower"] == "text_model" else "visual.transformer.resblocks"
            name = f"{base}.{m['i']}.attn.in_proj_{m['p']}"
            qkv.setdefault(name, {})[m["x"]] = t
            continue
        name = _apply_rules(_HF_COMPILED, key)
        if name is None:
            raise CheckpointError(f"{where}: unexpected key {key!r} for an HF CLIPModel (ResNet CLIP has no HF form)")
        out[name] = t
    for name, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{where}: {name} lacks {sorted({'q', 'k', 'v'} - set(parts))} projection(s)")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def openai_to_hf(sd: Mapping[str, torch.Tensor], where: str = "model") -> dict[str, torch.Tensor]:
    """OpenAI layout -> HF ``CLIPModel`` state dict (ViT models only)."""
    if "visual.proj" not in sd:
        raise CheckpointError(f"{where}: HF transformers has no ResNet CLIP; save ResNet models in OpenAI layout")
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key == "text_projection":
            out["text_projection.weight"] = t.t().contiguous()
        elif key == "visual.proj":
            out["visual_projection.weight"] = t.t().contiguous()
        elif key.endswith((".attn.in_proj_weight", ".attn.in_proj_bias")):
            tower = "vision_model" if key.startswith("visual.") else "text_model"
            i = key.split(".")[-3]
            p = "weight" if key.endswith("weight") else "bias"
            for x, chunk in zip("qkv", t.chunk(3, dim=0)):
                out[f"{tower}.encoder.layers.{i}.self_attn.{x}_proj.{p}"] = chunk.contiguous()
        else:
            name = _apply_rules(_HF_REVERSE, key)
            if name is None:
                raise CheckpointError(f"{where}: key {key!r} has no HF counterpart")
            out[name] = t
    return out


def hf_config_to_torchclip(cfg: Mapping[str, Any], where: str = "config.json") -> CLIPConfig:
    """HF ``CLIPConfig`` JSON -> ours. Raises on architectures this mapping cannot represent."""
    if cfg.get("model_type") != "clip":
        raise CheckpointError(f"{where}: model_type {cfg.get('model_type')!r} is not an HF CLIPModel")
    try:
        t, v = cfg["text_config"], cfg["vision_config"]
        acts = {t.get("hidden_act", "quick_gelu"), v.get("hidden_act", "quick_gelu")}
        if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
            raise CheckpointError(f"{where}: unsupported hidden_act {sorted(acts)}")
        vocab = t.get("vocab_size", 49408)
        # Legacy configs say eos_token_id=2 and mean "pool at argmax", i.e. OpenAI's layout where the
        # special tokens are the two largest ids.
        legacy = t.get("eos_token_id", 2) == 2
        text = TextConfig(
            context_length=t.get("max_position_embeddings", 77),
            vocab_size=vocab,
            width=t["hidden_size"],
            heads=t["num_attention_heads"],
            layers=t["num_hidden_layers"],
            mlp_ratio=t.get("intermediate_size", 4 * t["hidden_size"]) / t["hidden_size"],
            sot_id=vocab - 2 if legacy else t.get("bos_token_id", vocab - 2),
            eot_id=vocab - 1 if legacy else t["eos_token_id"],
        )
        width = v["hidden_size"]
        head_width = width // v["num_attention_heads"]
        vision = VisionConfig(
            image_size=v["image_size"], layers=v["num_hidden_layers"], width=width,
            patch_size=v["patch_size"], head_width=head_width,
            mlp_ratio=v.get("intermediate_size", 4 * width) / width,
        )
        return CLIPConfig(
            embed_dim=cfg.get("projection_dim", 512), vision=vision, text=text, activation=acts.pop(),
            init_logit_scale=cfg.get("logit_scale_init_value", math.log(1 / 0.07)),
        )
    except KeyError as e:
        raise CheckpointError(f"{where}: HF CLIP config lacks field {e}") from e
    except (TypeError, ValueError, ZeroDivisionError, AttributeError) as e:
        raise CheckpointError(f"{where}: malformed HF CLIP config ({type(e).__name__}: {e})") from e


def torchclip_to_hf_config(config: CLIPConfig) -> dict[str, Any]:
    """Our config -> an HF ``CLIPConfig`` dict that ``transformers.CLIPModel`` loads (ViT only)."""
    v, t = config.vision, config.text
    if v.is_resnet:
        raise CheckpointError("HF transformers has no ResNet CLIP; export is ViT only")
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": config.init_logit_scale,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.width,
            "intermediate_size": int(t.width * t.mlp_ratio),
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length,
            "hidden_act": config.activation,
            "layer_norm_eps": 1e-5,
            "projection_dim": config.embed_dim,
            "bos_token_id": t.sot_id,
            "eos_token_id": t.eot_id,
            "pad_token_id": t.pad_id,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": v.width,
            "intermediate_size": int(v.width * v.mlp_ratio),
            "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": 3,
            "hidden_act": config.activation,
            "layer_norm_eps": 1e-5,
            "projection_dim": config.embed_dim,
        },
    }


# ---------------------------------------------------------------- sanity bounds for configs read from files

# Far beyond every published CLIP-family model; a file claiming more is broken or hostile, and building
# it would hang or exhaust memory before any shape could be compared.
_BOUNDS = {
    "embed_dim": 16384, "image_size": 4096, "vision layers": 256, "vision width": 16384, "stage depth": 256,
    "resnet width": 1024, "text layers": 256, "text width": 16384, "heads": 1024, "context_length": 16384,
    "vocab_size": 1 << 22, "mlp_ratio": 64.0, "tokens": 1 << 16,
}


def check_config_bounds(config: CLIPConfig, where: str) -> None:
    """Raise ``CheckpointError`` unless every size in ``config`` lies in a sane range (see ``_BOUNDS``)."""
    v, t = config.vision, config.text
    checks: list[tuple[str, float, float]] = [
        ("embed_dim", config.embed_dim, _BOUNDS["embed_dim"]),
        ("image_size", v.image_size, _BOUNDS["image_size"]),
        ("vision mlp_ratio", v.mlp_ratio, _BOUNDS["mlp_ratio"]),
        ("text layers", t.layers, _BOUNDS["text layers"]),
        ("text width", t.width, _BOUNDS["text width"]),
        ("text heads", t.heads, _BOUNDS["heads"]),
        ("text mlp_ratio", t.mlp_ratio, _BOUNDS["mlp_ratio"]),
        ("context_length", t.context_length, _BOUNDS["context_length"]),
        ("vocab_size", t.vocab_size, _BOUNDS["vocab_size"]),
    ]
    if v.is_resnet:
        checks += [(f"stage {i + 1} depth", d, _BOUNDS["stage depth"]) for i, d in enumerate(v.layers)]
        checks.append(("resnet width", v.width, _BOUNDS["resnet width"]))
    else:
        checks += [("vision layers", v.layers, _BOUNDS["vision layers"]), ("vision width", v.width,
                   _BOUNDS["vision width"]), ("vision tokens", v.grid_size ** 2 + 1, _BOUNDS["tokens"])]
    for name, value, limit in checks:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= limit:
            raise CheckpointError(f"{where}: config {name}={value!r} is outside the sane range (0, {limit}]")
    if not v.is_resnet and not 0 < v.patch_size <= v.image_size:
        raise CheckpointError(f"{where}: config patch_size={v.patch_size!r} does not fit image_size {v.image_size}")


# ---------------------------------------------------------------- OpenCLIP's model and preprocess configs

def torchclip_to_open_clip_config(config: CLIPConfig) -> dict[str, Any]:
    """Our config -> OpenCLIP's ``model_cfg`` (what ``open_clip_config.json`` holds under that key)."""
    v, t = config.vision, config.text
    if (t.sot_id, t.eot_id) != (t.vocab_size - 2, t.vocab_size - 1):
        raise CheckpointError("OpenCLIP pools text at argmax(ids): it needs the special tokens to be the two "
                              f"largest ids, this model has sot {t.sot_id}, eot {t.eot_id}, vocab {t.vocab_size}")
    vision: dict[str, Any] = {"image_size": v.image_size, "layers": list(v.layers) if v.is_resnet else v.layers,
                              "width": v.width, "patch_size": v.patch_size}
    if not v.is_resnet:
        vision.update(head_width=v.head_width, mlp_ratio=v.mlp_ratio)
    out = {
        "embed_dim": config.embed_dim,
        "quick_gelu": config.activation == "quick_gelu",
        "vision_cfg": vision,
        "text_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                     "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio, "pad_id": t.pad_id},
    }
    if config.init_logit_bias is not None:
        out["init_logit_bias"] = config.init_logit_bias
    return out


def open_clip_preprocess_config(pp: Mapping[str, Any], image_size: int) -> PreprocessConfig:
    """OpenCLIP's ``preprocess_cfg`` (``mean``, ``std``, ``interpolation``, ``resize_mode``, ``size``) -> ours."""
    size = pp.get("size", image_size)
    if isinstance(size, (list, tuple)):
        size = size[0]
    return PreprocessConfig(image_size=int(size), mean=tuple(pp.get("mean", OPENAI_MEAN)),
                            std=tuple(pp.get("std", OPENAI_STD)), interpolation=pp.get("interpolation", "bicubic"),
                            resize_mode=pp.get("resize_mode", "shortest"))


_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def hf_preprocess_config(pp: Mapping[str, Any], image_size: int) -> PreprocessConfig:
    """HF ``CLIPImageProcessor``'s ``preprocessor_config.json`` -> ours (resize shortest edge, center crop)."""
    crop = pp.get("crop_size", image_size)
    crop = crop.get("height", image_size) if isinstance(crop, Mapping) else crop
    resample = pp.get("resample", 3)
    if resample not in _PIL_RESAMPLE:
        raise ValueError(f"resample={resample!r} (torchclip knows {sorted(_PIL_RESAMPLE)})")
    return PreprocessConfig(image_size=int(crop), mean=tuple(pp.get("image_mean", OPENAI_MEAN)),
                            std=tuple(pp.get("image_std", OPENAI_STD)), interpolation=_PIL_RESAMPLE[resample],
                            resize_mode="shortest")


def torchclip_to_hf_preprocess_config(pp: PreprocessConfig) -> dict[str, Any]:
    """Ours -> ``preprocessor_config.json`` for ``CLIPImageProcessor`` (``CLIPProcessor.from_pretrained``)."""
    if pp.resize_mode != "shortest":
        raise CheckpointError(f"HF's CLIPImageProcessor cannot express resize_mode {pp.resize_mode!r}")
    return {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "do_resize": True,
        "size": {"shortest_edge": pp.image_size},
        "resample": {v: k for k, v in _PIL_RESAMPLE.items()}[pp.interpolation],
        "do_center_crop": True,
        "crop_size": {"height": pp.image_size, "width": pp.image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pp.mean),
        "image_std": list(pp.std),
        "do_convert_rgb": True,
    }
