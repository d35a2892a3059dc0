"""Architecture facts: parameter counts, shapes, initialisation, pooling and the exact text-length saving."""

from __future__ import annotations

import math

import pytest
import torch

import torchclip
from torchclip.config import PRESETS, CLIPConfig, TextConfig, VisionConfig, get_preset
from torchclip.model import CLIP
from torchclip.reference.layers import LayerNorm, QuickGELU

# Reference table (clip-reference.md §2): total and visual parameter counts from instantiation.
COUNTS = {
    "RN50": (102_007_137, 38_316_896),
    "RN101": (119_688_033, 56_259_936),
    "RN50x4": (178_300_601, 87_137_080),
    "RN50x16": (290_979_217, 167_328_912),
    "RN50x64": (623_258_305, 420_380_352),
    "ViT-B/32": (151_277_313, 87_849_216),
    "ViT-B/16": (149_620_737, 86_192_640),
    "ViT-L/14": (427_616_513, 303_966_208),
    "ViT-L/14@336px": (427_944_193, 304_293_888),
}


@pytest.mark.parametrize("name", list(COUNTS))
def test_parameter_counts_match_reference(name: str) -> None:
    with torch.device("meta"):
        model = CLIP(get_preset(name))
    total, visual = COUNTS[name]
    assert model.num_params() == total
    assert sum(p.numel() for p in model.visual.parameters()) == visual


def test_available_models_lists_the_nine_first() -> None:
    assert torchclip.available_models()[:9] == list(COUNTS)
    # OpenCLIP's ViT-B-32 is GELU; OpenAI's ViT-B/32 is its QuickGELU twin
    assert get_preset("ViT-B-32") == PRESETS["ViT-B/32"].replace(activation="gelu")
    assert get_preset("ViT-B-32-quickgelu") == PRESETS["ViT-B/32"]
    with pytest.raises(KeyError, match="unknown model"):
        get_preset("ViT-Z/99")


def tiny(resnet: bool = False, activation: str = "quick_gelu") -> CLIPConfig:
    vision = (VisionConfig(image_size=64, layers=(1, 1, 1, 1), width=16, patch_size=None) if resnet
              else VisionConfig(image_size=32, layers=2, width=64, patch_size=8))
    return CLIPConfig(embed_dim=32, vision=vision, activation=activation,
                      text=TextConfig(context_length=16, vocab_size=100, width=64, heads=1, layers=2))


def ids_batch(cfg: CLIPConfig, lengths: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = cfg.text
    ids = torch.zeros(len(lengths), t.context_length, dtype=torch.long)
    for i, n in enumerate(lengths):  # n content tokens between SOT and EOT
        ids[i, 0] = t.sot_id
        ids[i, 1:n + 1] = torch.randint(1, t.vocab_size - 2, (n,), generator=g)
        ids[i, n + 1] = t.eot_id
    return ids


@pytest.mark.parametrize("resnet", [False, True])
def test_forward_returns_typed_result(resnet: bool) -> None:
    torch.manual_seed(0)
    cfg = tiny(resnet)
    model = CLIP(cfg).eval()
    px = torch.randn(3, 3, cfg.vision.image_size, cfg.vision.image_size)
    ids = ids_batch(cfg, [2, 5])
    with torch.no_grad():
        out = model(px, ids)
        img, txt = model.encode_image(px), model.encode_text(ids)
    assert isinstance(out, torchclip.CLIPOutput)
    assert out.logits_per_image.shape == (3, 2) and out.logits_per_text.shape == (2, 3)
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(img.norm(dim=-1), torch.ones(3))  # encode_* are unnormalized
    expected = math.exp(math.log(1 / 0.07)) * torch.nn.functional.normalize(img, dim=-1) @ \
        torch.nn.functional.normalize(txt, dim=-1).t()
    torch.testing.assert_close(out.logits_per_image, expected)
    torch.testing.assert_close(out.logits_per_text, expected.t())


def test_logit_scale_init_is_paper_temperature() -> None:
    model = CLIP(tiny())
    assert model.logit_scale.shape == ()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_resnet_init_zeroes_last_bn_of_each_block_only() -> None:
    model = CLIP(tiny(resnet=True))
    for stage in model.visual.stages:
        for block in stage:
            assert torch.all(block.bn3.weight == 0)
            assert torch.all(block.bn1.weight == 1)
            if block.downsample is not None:
                assert torch.all(block.downsample.bn.weight == 1)


def test_text_init_follows_reference_stds() -> None:
    torch.manual_seed(0)
    cfg = CLIPConfig(embed_dim=64, vision=tiny().vision, text=TextConfig(width=256, heads=4, layers=4))
    text = CLIP(cfg).text
    assert text.token_embed.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert text.pos_embed.std().item() == pytest.approx(0.01, rel=0.05)
    blk = text.transformer.blocks[0]
    assert blk.attn.qkv.weight.std().item() == pytest.approx(256**-0.5, rel=0.05)
    assert blk.attn.proj.weight.std().item() == pytest.approx(256**-0.5 * 8**-0.5, rel=0.05)
    assert blk.mlp.fc1.weight.std().item() == pytest.approx(512**-0.5, rel=0.05)


def test_trailing_tokens_after_eot_cannot_change_features() -> None:
    """The causal mask makes positions after the last EOT irrelevant; we skip computing them."""
    torch.manual_seed(0)
    cfg = tiny()
    model = CLIP(cfg).eval()
    ids = ids_batch(cfg, [1, 4, 9])
    noisy = ids.clone()
    noisy[0, 3:] = 7  # garbage after the first row's EOT, up to the full context
    with torch.no_grad():
        together = model.encode_text(ids)
        alone = torch.cat([model.encode_text(ids[i:i + 1]) for i in range(3)])
        with_noise = model.encode_text(noisy)
        full = full_length_reference(model, ids)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(together, with_noise, atol=1e-5, rtol=0)
    torch.testing.assert_close(together, full, atol=1e-5, rtol=0)


def full_length_reference(model: CLIP, ids: torch.Tensor) -> torch.Tensor:
    """OpenAI's computation: all positions, explicit additive -inf mask, argmax pooling."""
    t = model.text
    n = ids.shape[1]
    x = t.token_embed(ids) + t.pos_embed[:n]
    mask = torch.full((n, n), float("-inf")).triu(1)
    for blk in t.transformer.blocks:
        h = blk.norm1(x)
        b, L, d = h.shape
        q, k, v = blk.attn.qkv(h).view(b, L, 3, blk.attn.heads, -1).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + mask
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, L, d)
        x = x + blk.attn.proj(y)
        x = x + blk.mlp(blk.norm2(x))
    x = t.norm_final(x)
    return x[torch.arange(len(ids)), ids.argmax(dim=-1)] @ t.proj


def test_bad_token_ids_are_clear_errors() -> None:
    cfg = tiny()
    model = CLIP(cfg)
    ids = ids_batch(cfg, [3, 3])
    no_eot = ids.clone()
    no_eot[1, 4] = 5
    with pytest.raises(ValueError, match=r"rows \[1\] hold no end-of-text id 99"):
        model.encode_text(no_eot)
    with pytest.raises(ValueError, match="outside"):
        model.encode_text(ids + 200)
    with pytest.raises(ValueError, match="context length 16"):
        model.encode_text(torch.cat([ids, ids], dim=1))


def test_activation_is_selectable() -> None:
    assert isinstance(CLIP(tiny()).text.transformer.blocks[0].mlp.act, QuickGELU)
    assert isinstance(CLIP(tiny(activation="gelu")).text.transformer.blocks[0].mlp.act, torch.nn.GELU)
    with pytest.raises(ValueError, match="activation"):
        tiny(activation="relu")


def test_layernorm_computes_in_fp32_for_half_inputs() -> None:
    ln = LayerNorm(512)
    x = (torch.randn(4, 512) * 300).to(torch.bfloat16)
    y = ln(x)
    assert y.dtype == torch.bfloat16
    ref = torch.nn.functional.layer_norm(x.float(), (512,))
    torch.testing.assert_close(y.float(), ref.to(torch.bfloat16).float())


def calibrate_batchnorm(model: CLIP, pixels: torch.Tensor) -> None:
    """Running statistics from a batch, as training leaves them: each layer's output then varies with its
    input instead of drowning in the BatchNorm biases of a random init."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0
    with torch.no_grad():
        model.visual.train()(pixels)
    model.visual.eval()


def varied_pixels(n: int, size: int, seed: int) -> torch.Tensor:
    """Noise images of different brightness and contrast per image and channel."""
    g = torch.Generator().manual_seed(seed)
    scale, shift = torch.rand(n, 3, 1, 1, generator=g) * 2, torch.randn(n, 3, 1, 1, generator=g)
    return torch.randn(n, 3, size, size, generator=g) * scale + shift


@pytest.mark.parametrize("resnet", [False, True])
def test_half_precision_model_tracks_fp32(resnet: bool) -> None:
    """bf16 logits follow the fp32 ones in what depends on the images and on the texts (each centred over
    the other axis): within a tolerance that a tower ignoring its input fails."""
    torch.manual_seed(0)
    cfg = tiny(resnet)
    model = CLIP(cfg).eval()
    size = cfg.vision.image_size
    if resnet:
        calibrate_batchnorm(model, varied_pixels(8, size, seed=2))
    px, other = varied_pixels(4, size, seed=3), varied_pixels(4, size, seed=4)
    ids, other_ids = ids_batch(cfg, [3, 6, 1]), ids_batch(cfg, [3, 6, 1], seed=5)
    half = CLIP(cfg).eval()
    half.load_state_dict(model.state_dict())
    half.to(torch.bfloat16)
    with torch.no_grad():
        ref = model(px, ids).logits_per_image  # [4, 3]
        out = half(px, ids).logits_per_image
        blind_image = half(other, ids).logits_per_image  # what a tower that ignores its input would give
        blind_text = half(px, other_ids).logits_per_image
    assert out.dtype == torch.bfloat16

    def rel(a: torch.Tensor, dim: int) -> float:  # error of the part that varies along the other axis
        da, dr = a.float() - a.float().mean(dim, keepdim=True), ref - ref.mean(dim, keepdim=True)
        return float((da - dr).norm() / dr.norm())

    assert rel(out, 0) < 0.1 and rel(out, 1) < 0.1
    assert rel(blind_image, 0) > 0.5 and rel(blind_text, 1) > 0.5  # negative controls


def test_grad_checkpointing_gives_same_gradients() -> None:
    torch.manual_seed(0)
    cfg = tiny()
    a = CLIP(cfg)
    b = CLIP(cfg)
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    px = torch.randn(2, 3, 32, 32)
    ids = ids_batch(cfg, [3, 6])
    for m in (a, b):
        m(px, ids).logits_per_image.logsumexp(-1).sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


def test_config_round_trips_through_dict() -> None:
    for cfg in PRESETS.values():
        assert CLIPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown CLIPConfig keys"):
        CLIPConfig.from_dict({**PRESETS["RN50"].to_dict(), "bogus": 1})


def test_patch_dropout_only_while_training() -> None:
    """FLIP patch dropout: training drops a share of patches per image; eval always sees all of them."""
    vision = VisionConfig(image_size=32, layers=1, width=64, patch_size=4, patch_dropout=0.75)
    cfg = CLIPConfig(embed_dim=16, vision=vision, text=TextConfig(context_length=8, vocab_size=50, width=32,
                                                                    heads=2, layers=1))
    torch.manual_seed(0)
    model = CLIP(cfg).eval()
    full = CLIP(cfg.replace(vision=VisionConfig(image_size=32, layers=1, width=64, patch_size=4)))
    full.load_state_dict(model.state_dict())
    full.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.encode_image(x), full.encode_image(x))
    model.train()
    tokens = model.visual.embed(x)  # [B, 1 + k, W]
    assert tokens.shape[1] == 1 + 16  # 64 patches, a quarter kept, plus the class token
    a, b = model.encode_image(x), model.encode_image(x)
    assert not torch.allclose(a, b)  # a fresh draw per call
    with pytest.raises(ValueError, match="patch_dropout"):
        VisionConfig(patch_dropout=1.0)
    with pytest.raises(ValueError, match="ViT"):
        VisionConfig(image_size=64, layers=(1, 1, 1, 1), width=16, patch_size=None, patch_dropout=0.5)
    assert CLIPConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("resnet", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_encode_image_rejects_raw_or_mis_sized_pixels(resnet: bool, grad: bool, monkeypatch) -> None:
    """uint8 images or another resolution: one clear error naming the expected [B, 3, R, R] float input,
    on the reference and the fast path alike."""
    from torchclip.fast import vision as fast_vision
    from torchclip.reference import vision as ref_vision

    cfg = tiny(resnet)
    model = CLIP(cfg).eval()
    r = cfg.vision.image_size
    raw = torch.randint(0, 256, (2, 3, r, r), dtype=torch.uint8)
    with torch.set_grad_enabled(grad):
        assert model.encode_image(torch.randn(2, 3, r, r)).shape == (2, 32)
        for bad in (raw, torch.randn(2, 3, r + 32, r + 32), torch.randn(2, r, r, 3), torch.randn(3, r, r)):
            with pytest.raises(ValueError, match=rf"expected pixels as a float tensor \[B, 3, {r}, {r}\]"):
                model.encode_image(bad)
        # Negative control: without the check a uint8 batch silently encodes to features.
        for module in (ref_vision, fast_vision):
            monkeypatch.setattr(module, "check_pixels", lambda *_a: None)
        assert model.encode_image(raw).shape == (2, 32)
