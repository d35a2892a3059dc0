"""The fast path (``torchclip.fast``) computes what the reference model computes, and runs only where
``fast.applies`` lets it.

Inference packs text rows of different lengths, folds eval-mode BatchNorm into the convs (cached), runs
the ResNet channels-last, embeds ViT patches with a matmul, adds residuals inside the projections
(oneDNN's on x86). None of it may change a feature beyond float rounding, a state
dict key, or what training sees.
"""

from __future__ import annotations

import pytest
import torch

from torchclip import fast
from torchclip.config import CLIPConfig, TextConfig, VisionConfig
from torchclip.fast import kernels
from torchclip.fast import text as fast_text
from torchclip.fast import vision as fast_vision
from torchclip.fast.kernels import inference_linear
from torchclip.fast.transformer import Packing
from torchclip.fast.transformer import mlp as fast_mlp
from torchclip.model import CLIP
from torchclip.reference.layers import MLP


def tiny(resnet: bool) -> CLIPConfig:
    vision = (VisionConfig(image_size=64, layers=(1, 2, 1, 1), width=16, patch_size=None) if resnet
              else VisionConfig(image_size=32, layers=2, width=64, patch_size=8))
    return CLIPConfig(embed_dim=32, vision=vision,
                      text=TextConfig(context_length=16, vocab_size=100, width=64, heads=2, layers=2))


def ids_batch(cfg: CLIPConfig, lengths: list[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = cfg.text
    ids = torch.zeros(len(lengths), t.context_length, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0] = t.sot_id
        ids[i, 1:n + 1] = torch.randint(1, t.vocab_size - 2, (n,), generator=g)
        ids[i, n + 1] = t.eot_id
    return ids


def randomize_batchnorm(model: CLIP) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t, lo, hi in ((m.weight, 0.5, 1.5), (m.bias, -0.2, 0.2), (m.running_mean, -0.2, 0.2),
                              (m.running_var, 0.5, 2.0)):
                t.data.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)


def test_packing_layout() -> None:
    p = Packing.from_lengths(torch.tensor([2, 4, 1]))
    assert (p.batch, p.length) == (3, 4)
    # row 0: tokens 0,1 then copies of 1; row 1: 2..5; row 2: token 6 four times
    assert p.gather.tolist() == [0, 1, 1, 1, 2, 3, 4, 5, 6, 6, 6, 6]
    assert p.scatter.tolist() == [0, 1, 4, 5, 6, 7, 8]


def test_packed_text_equals_padded_text_and_the_reference(monkeypatch) -> None:
    torch.manual_seed(0)
    cfg = tiny(False)
    model = CLIP(cfg).eval()
    ids = ids_batch(cfg, [1, 12, 3, 0, 7])
    ref = model.encode_text(ids).detach()  # autograd on: the reference tower, padded
    with torch.no_grad():
        packed = model.encode_text(ids)
        monkeypatch.setattr(fast_text, "PACK_MIN_PADDING", 2.0)  # never pack
        padded = model.encode_text(ids)
        alone = torch.cat([model.encode_text(ids[i:i + 1]) for i in range(len(ids))])
    torch.testing.assert_close(packed, padded, atol=1e-6, rtol=0)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed, ref, atol=1e-5, rtol=0)


def test_text_backward_is_the_same_every_time_on_threads() -> None:
    """Seeded training must repeat: the text tower's backward sums in a fixed order on two threads."""
    torch.manual_seed(0)
    cfg = tiny(False)
    model = CLIP(cfg)
    g = torch.Generator().manual_seed(1)
    ids = ids_batch(cfg, torch.randint(1, cfg.text.context_length - 2, (256,), generator=g).tolist())
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(6):
            model.zero_grad()
            model.encode_text(ids).square().sum().backward()
            grads.append(model.text.pos_embed.grad.clone())
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(grads[0], other) for other in grads[1:])


def test_resnet_inference_path_equals_autograd_path() -> None:
    torch.manual_seed(0)
    cfg = tiny(True)
    model = CLIP(cfg).eval()
    randomize_batchnorm(model)
    keys = set(model.state_dict())
    px = torch.randn(5, 3, 64, 64)
    ref = model.encode_image(px).detach()  # autograd on: plain conv -> BN -> ReLU, NCHW
    with torch.inference_mode():
        fast = model.encode_image(px)
    with torch.no_grad():
        again = model.encode_image(px)  # the cached folded weights, outside inference mode
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, fast, atol=0, rtol=0)
    assert set(model.state_dict()) == keys  # the fold cache is no state
    assert "_folded" in model.visual.stem.bn1.__dict__  # and the fast path did run

    # A changed running statistic or a loaded state dict rebuilds the cache.
    other = CLIP(cfg).eval()
    randomize_batchnorm(other)
    other.visual.stem.bn1.running_var.mul_(3)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        after = model.encode_image(px)
    torch.testing.assert_close(after, other.encode_image(px).detach(), atol=1e-5, rtol=1e-5)


def test_resnet_train_mode_never_folds_batchnorm() -> None:
    torch.manual_seed(0)
    model = CLIP(tiny(True)).train()
    randomize_batchnorm(model)
    px = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert not fast.applies(model.visual, px)  # training mode: the reference tower
        a = model.encode_image(px)  # batch statistics, in no_grad too
    b = model.encode_image(px).detach()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_vit_inference_path_equals_autograd_path(monkeypatch) -> None:
    torch.manual_seed(0)
    model = CLIP(tiny(False)).eval()
    px = torch.randn(7, 3, 32, 32)
    before = px.clone()
    ref = model.encode_image(px).detach()  # conv patch embedding, one batch
    ref_pre = model.encode_image(px, projected=False).detach()
    calls = []
    real = fast_vision.stack_first_token
    monkeypatch.setattr(fast_vision, "stack_first_token", lambda t, x: calls.append(len(x)) or real(t, x))
    with torch.inference_mode():
        out = model.encode_image(px)
        pre = model.encode_image(px, projected=False)
    assert calls == [7, 7]  # the fast path ran, on the whole batch
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pre, ref_pre, atol=1e-5, rtol=1e-5)
    assert torch.equal(px, before)  # the caller's pixels are never written


needs_onednn = pytest.mark.skipif(not kernels.ONEDNN,
                                  reason="oneDNN projections are off here (not x86, no MKL-DNN, or TORCHCLIP_ONEDNN=0)")


@pytest.fixture
def onednn_switch():
    """Restores ``kernels.ONEDNN`` after a test flips it."""
    saved = kernels.ONEDNN
    yield
    kernels.ONEDNN = saved


@pytest.mark.parametrize("use_onednn", [True, False])
def test_inference_linear_is_linear_plus_residual(use_onednn: bool, onednn_switch) -> None:
    if use_onednn and not kernels.ONEDNN:
        pytest.skip("oneDNN projections are off here")
    kernels.ONEDNN = use_onednn
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 17, generator=g).transpose(0, 1)  # [40, 3, 17], not contiguous
    w, b = torch.randn(24, 17, generator=g), torch.randn(24, generator=g)
    res = torch.randn(40, 3, 24, generator=g)
    ref = (x.double() @ w.double().t() + b.double()).float()
    with torch.inference_mode():
        y = inference_linear(x, w, b)
        y_res = inference_linear(x, w, b, res.clone())
        y_nob = inference_linear(x, w)
    assert y.shape == (40, 3, 24)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_res, ref + res, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_nob, ref - b, atol=1e-5, rtol=1e-5)


@needs_onednn
@pytest.mark.parametrize("grad_ctx", [torch.no_grad, torch.inference_mode])
def test_onednn_projections_match_default_gemm(grad_ctx, onednn_switch) -> None:
    """Both towers through oneDNN give the default-GEMM features, and see weights changed in place."""
    torch.manual_seed(0)
    cfg = tiny(False)
    model = CLIP(cfg).eval()
    px = torch.randn(3, 3, 32, 32)
    ids = ids_batch(cfg, [1, 12, 5])
    ref_img, ref_txt = model.encode_image(px).detach(), model.encode_text(ids).detach()  # autograd path
    out, ops = {}, {}
    for on in (True, False):
        kernels.ONEDNN = on
        with grad_ctx(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out[on] = model.encode_image(px), model.encode_text(ids)
        ops[on] = {e.key for e in prof.key_averages()}
    assert "mkldnn::_linear_pointwise" in ops[True] and "mkldnn::_linear_pointwise" not in ops[False]
    for on in (True, False):
        torch.testing.assert_close(out[on][0], ref_img, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[on][1], ref_txt, atol=1e-5, rtol=1e-5)
    # Nothing is cached from the weights: an in-place change shows at once.
    kernels.ONEDNN = True
    with torch.no_grad():
        model.visual.transformer.blocks[0].mlp.fc1.weight.mul_(-1)
        changed = model.encode_image(px)
    assert (changed - out[True][0]).abs().max() > 1e-3
    torch.testing.assert_close(changed, model.encode_image(px).detach(), atol=1e-5, rtol=1e-5)


def test_flop_counter_sees_every_projection() -> None:
    """Under a dispatch mode (FlopCounterMode) the model runs standard ops, so all its FLOPs are counted."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = CLIP(tiny(False)).eval()
    px = torch.randn(2, 3, 32, 32)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.encode_image(px)
    v = model.config.vision
    b, w = 2, v.width
    tokens = b * (1 + (32 // 8) ** 2)
    full = 2 * tokens * w * (3 * w + w + 2 * 4 * w)  # one block: qkv, proj, fc1, fc2
    last = 2 * tokens * w * 2 * w + 2 * b * w * (w + w + 2 * 4 * w)  # keys/values of all, the rest for cls
    assert counter.get_total_flops() >= (v.layers - 1) * full + last


def test_vit_last_block_runs_for_the_class_token_only() -> None:
    """The inference forward skips the last block's work for patch tokens: fewer FLOPs, same features."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = CLIP(tiny(False)).eval()
    px = torch.randn(4, 3, 32, 32)
    counts = {}
    for name, ctx in (("plain", torch.enable_grad), ("fast", torch.inference_mode)):
        with ctx(), FlopCounterMode(display=False) as counter:
            out = model.encode_image(px)
        counts[name] = (counter.get_total_flops(), out.detach())
    torch.testing.assert_close(counts["fast"][1], counts["plain"][1], atol=1e-5, rtol=1e-5)
    w, tokens = model.config.vision.width, 4 * 16  # patch tokens skipped in the last block
    saved = 2 * tokens * w * (w + w + 8 * w)  # their query, output projection and MLP
    assert counts["plain"][0] - counts["fast"][0] >= saved


def _gemms_in(model: CLIP, px: torch.Tensor, dtype: torch.dtype) -> tuple[int, bool]:
    """Encode ``px`` on the fast path: (GEMMs whose every input has ``dtype``, whether any other product ran)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        model.encode_image(px)
    name = {torch.bfloat16: "c10::BFloat16", torch.float32: "float"}[dtype]
    gemms = [e for e in prof.events() if e.key in ("aten::addmm", "aten::mm")]
    own = sum(all(d in (name, "Scalar", "") for d in e.input_dtypes) for e in gemms)
    other = own < len(gemms) or any(e.key == "mkldnn::_linear_pointwise" for e in prof.events())
    return own, other


def test_half_precision_models_use_their_own_gemm() -> None:
    """A bf16 model runs every projection as a bf16 GEMM (never oneDNN's fp32 kernels, never a cast to
    fp32), within bf16 rounding of the fp32 features: a tolerance a tower ignoring its input fails."""
    torch.manual_seed(0)
    model = CLIP(tiny(False)).eval()
    px, other = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    ref = model.encode_image(px).detach()
    half = CLIP(tiny(False)).eval()
    half.load_state_dict(model.state_dict())
    half.to(torch.bfloat16)
    own, mixed = _gemms_in(half, px.bfloat16(), torch.bfloat16)
    assert own >= 4 * model.config.vision.layers and not mixed  # qkv, proj, fc1, fc2 per block
    assert _gemms_in(model, px, torch.bfloat16)[0] == 0  # negative control: fp32 runs none of them
    with torch.inference_mode():
        out, wrong = half.encode_image(px.bfloat16()), half.encode_image(other.bfloat16())
    assert out.dtype == torch.bfloat16

    def rel(a: torch.Tensor) -> float:  # worst relative error of a row against the fp32 features
        return float(((a.float() - ref).norm(dim=-1) / ref.norm(dim=-1)).max())

    assert rel(out) < 0.03
    assert rel(wrong) > 0.1  # negative control: features of other pixels are far outside the tolerance


@needs_onednn
def test_resnet_packed_convs_match_and_survive_copies(onednn_switch, monkeypatch) -> None:
    """Pre-packed oneDNN convs give the plain features at every batch size, packed per input shape (two
    kept); a model holding them still copies and pickles."""
    import copy
    import io

    torch.manual_seed(0)
    model = CLIP(tiny(True)).eval()
    randomize_batchnorm(model)
    px = torch.randn(1, 3, 64, 64)
    ref = model.encode_image(px).detach()
    out, ops = {}, {}
    for on in (True, False, True):
        kernels.ONEDNN = on
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out[on] = model.encode_image(px)
        ops[on] = {e.key for e in prof.key_averages()}
        torch.testing.assert_close(out[on], ref, atol=1e-5, rtol=1e-5)
    assert "mkldnn::_convolution_pointwise" in ops[True]
    assert "mkldnn::_convolution_pointwise" not in ops[False]
    cache = model.visual.stem.bn1.__dict__["_packed"]
    assert cache.entry[0] == ((1, 3, 64, 64),)
    with torch.no_grad():  # other batch sizes: packed for their own shape, same features per image
        many = model.encode_image(px.expand(6, -1, -1, -1))
        torch.testing.assert_close(many, out[True].expand(6, -1), atol=1e-5, rtol=1e-5)
        assert cache.entry[0] == ((6, 3, 64, 64), (1, 3, 64, 64))  # the newest shape, then the last other
        model.encode_image(px.expand(2, -1, -1, -1))  # a third shape evicts the oldest
        assert cache.entry[0] == ((2, 3, 64, 64), (6, 3, 64, 64))
        plain = model.encode_image(px.expand(2, -1, -1, -1))  # a hit reuses the pack, same numbers
        assert cache.entry[0] == ((2, 3, 64, 64), (6, 3, 64, 64))
        kernels.ONEDNN = False
        torch.testing.assert_close(model.encode_image(px.expand(2, -1, -1, -1)), plain, atol=1e-5, rtol=1e-5)
        kernels.ONEDNN = True
        # Without packs oneDNN's convs take the folded weight as it is: same numbers, no pack built.
        monkeypatch.setattr(fast_vision, "PACK_CONVS", False)
        fresh = CLIP(tiny(True)).eval()
        fresh.load_state_dict(model.state_dict())
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            unpacked = fresh.encode_image(px.expand(2, -1, -1, -1))
        assert "mkldnn::_convolution_pointwise" in {e.key for e in prof.key_averages()}
        torch.testing.assert_close(unpacked, plain, atol=1e-5, rtol=1e-5)
        assert "_packed" not in fresh.visual.stem.bn1.__dict__ and "_folded" in fresh.visual.stem.bn1.__dict__
        monkeypatch.undo()

    twin = copy.deepcopy(model)  # the packed cache is dropped, not copied
    buf = io.BytesIO()
    torch.save(model, buf)
    with torch.no_grad():
        torch.testing.assert_close(twin.encode_image(px), out[True], atol=0, rtol=0)
        model.to(torch.float64)  # another dtype rebuilds the fold, unpacked
        torch.testing.assert_close(model.encode_image(px.double()).float(), ref, atol=1e-5, rtol=1e-5)
        twin.visual.stages[-1][-1].conv3.weight.mul_(-1)  # an in-place change rebuilds the fold and the pack
        changed = twin.encode_image(px)
        kernels.ONEDNN = False
        torch.testing.assert_close(changed, twin.encode_image(px), atol=1e-5, rtol=1e-5)
        assert (changed - out[True]).abs().max() > 1e-3


@needs_onednn
def test_onednn_max_rows_sends_larger_products_to_torch_gemm(onednn_switch, monkeypatch) -> None:
    """Above ``ONEDNN_MAX_ROWS`` rows torch's GEMM runs, with the same result (512 by default)."""
    assert kernels.ONEDNN_MAX_ROWS == 512
    w = torch.randn(6, 5)
    for rows, expect in ((512, True), (513, False), (5000, False)):
        with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            inference_linear(torch.randn(rows, 5), w)
        assert ("mkldnn::_linear_pointwise" in {e.key for e in prof.key_averages()}) == expect
    monkeypatch.setattr(kernels, "ONEDNN_MAX_ROWS", 4)
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(6, 5, generator=g), torch.randn(6, generator=g)
    for rows, expect in ((4, True), (8, False)):
        x = torch.randn(rows, 5, generator=g)
        with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = inference_linear(x, w, b)
        assert ("mkldnn::_linear_pointwise" in {e.key for e in prof.key_averages()}) == expect
        torch.testing.assert_close(y, x @ w.t() + b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("resnet", [False, True])
def test_models_built_in_inference_mode_encode(resnet: bool) -> None:
    """Parameters created under ``torch.inference_mode()`` count no versions: nothing derived from them is
    cached (folded BatchNorm, its packs), and every path still gives the plain numbers."""
    torch.manual_seed(0)
    with torch.inference_mode():
        model = CLIP(tiny(resnet)).eval()
        if resnet:
            randomize_batchnorm(model)
        assert next(model.parameters()).is_inference()
        px = torch.randn(3, 3, *(2 * [model.config.vision.image_size]))
        one, three = model.encode_image(px[:1]), model.encode_image(px)
        with fast.plain_ops():
            ref = model.encode_image(px)
    torch.testing.assert_close(one, ref[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(three, ref, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_onednn_enabled_switches_and_restores() -> None:
    x, w = torch.randn(3, 5), torch.randn(4, 5)
    before = kernels.ONEDNN
    with torch.inference_mode():
        for flag in (False, True):
            with kernels.onednn_enabled(flag), torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                assert kernels.ONEDNN is flag
                inference_linear(x, w)
            assert ("mkldnn::_linear_pointwise" in {e.key for e in prof.key_averages()}) is flag
            assert kernels.ONEDNN is before


@pytest.mark.parametrize(("heads", "d", "c", "n", "b"), [(4, 32, 32, 9, 3), (2, 16, 24, 5, 1), (8, 64, 64, 50, 2)])
def test_attend_one_query_equals_projected_attention(heads: int, d: int, c: int, n: int, b: int) -> None:
    """Moving the key/value projections across the products changes nothing, the key bias included."""
    g = torch.Generator().manual_seed(heads + n)
    q, x = torch.randn(b, d, generator=g), torch.randn(b, n, c, generator=g)
    w_k, w_v = torch.randn(d, c, generator=g) / c**0.5, torch.randn(d, c, generator=g) / c**0.5
    b_k, b_v = torch.randn(d, generator=g), torch.randn(d, generator=g)
    dh = d // heads
    k = torch.nn.functional.linear(x, w_k, b_k).view(b, n, heads, dh).transpose(1, 2)  # [B, H, N, Dh]
    v = torch.nn.functional.linear(x, w_v, b_v).view(b, n, heads, dh).transpose(1, 2)
    ref = torch.nn.functional.scaled_dot_product_attention(q.view(b, heads, 1, dh), k, v).reshape(b, d)
    out = kernels.attend_one_query(q, x, w_k, w_v, b_v, heads)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # Negative controls: the value bias and the head split both matter.
    assert not torch.allclose(kernels.attend_one_query(q, x, w_k, w_v, None, heads), ref, atol=1e-3)
    if heads > 1:
        assert not torch.allclose(kernels.attend_one_query(q, x, w_k, w_v, b_v, 1), ref, atol=1e-3)


def test_attention_pool_never_projects_every_token() -> None:
    """The ResNet's pool projects one query per image; keys and values stay unprojected (fewer FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = CLIP(tiny(True)).eval()
    randomize_batchnorm(model)
    px = torch.randn(3, 3, 64, 64)
    counts = {}
    for name, ctx in (("plain", torch.enable_grad), ("fast", torch.inference_mode)):
        with ctx(), FlopCounterMode(display=False) as counter:
            out = model.encode_image(px)
        counts[name] = (counter.get_total_flops(), out.detach())
    torch.testing.assert_close(counts["fast"][1], counts["plain"][1], atol=1e-5, rtol=1e-5)
    c, tokens = model.visual.attn_pool.k_proj.in_features, 3 * 5
    assert counts["plain"][0] - counts["fast"][0] >= 2 * tokens * c * c  # at least the key projection


@pytest.mark.parametrize("block", [(0, 0), (1, 0), (1, 1)])
def test_resnet_blocks_write_into_their_shortcut(block: tuple[int, int]) -> None:
    """A fast block gives the reference block's output, written into its input when the shortcut is the
    identity (the fast tower hands it only tensors nobody else holds) or into the fresh downsampled one."""
    torch.manual_seed(0)
    model = CLIP(tiny(True)).eval()
    randomize_batchnorm(model)
    blk = model.visual.stages[block[0]][block[1]]
    x = torch.randn(2, blk.conv1.in_channels, 16, 16).contiguous(memory_format=torch.channels_last)
    ref = blk(x).detach()
    mine = x.clone()
    with torch.inference_mode():
        out = fast_vision.bottleneck_(blk, mine)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert (out.data_ptr() == mine.data_ptr()) == (blk.downsample is None)


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_mlp_on_torch_gemm_folds_quick_gelu_into_silu(activation: str) -> None:
    """Many rows (torch's GEMM): QuickGELU runs as one in-place SiLU with its factors inside the GEMMs."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    mlp = MLP(24, 96, activation).eval()
    x, res = torch.randn(5, 7, 24), torch.randn(5, 7, 24)
    ref = (mlp(x) + res).detach()  # autograd on: the plain module path
    with kernels.onednn_enabled(False), torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        out = fast_mlp(mlp, x, res)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    ops = {e.key for e in prof.key_averages()}
    assert ("aten::silu_" in ops) == (activation == "quick_gelu")  # the fold ran exactly where it applies
    mlp.fc1.bias = None  # and without biases
    mlp.fc2.bias = None
    with torch.inference_mode(), kernels.onednn_enabled(False):
        out = fast_mlp(mlp, x, res)
    torch.testing.assert_close(out, (mlp(x) + res).detach(), atol=1e-5, rtol=1e-5)


@needs_onednn
@pytest.mark.parametrize(("activation", "approximate"), [("quick_gelu", None), ("gelu", "none"), ("gelu", "tanh")])
def test_mlp_on_onednn_runs_the_activation_in_place(activation: str, approximate: str | None) -> None:
    """oneDNN runs fc1 and fc2 without fused post-ops, the activation in place in between (QuickGELU as
    one SiLU, 1.702 on fc1's input, one pass dividing by it): the plain module's numbers, for each
    activation, with and without biases."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    mlp = MLP(24, 96, activation).eval()
    if approximate is not None:
        mlp.act = torch.nn.GELU(approximate=approximate)
    x, res = torch.randn(5, 7, 24), torch.randn(5, 7, 24)
    for with_bias in (True, False):
        if not with_bias:
            mlp.fc1.bias = None
            mlp.fc2.bias = None
        ref = (mlp(x) + res).detach()  # autograd on: the plain module path
        with kernels.onednn_enabled(True), torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            out = fast_mlp(mlp, x, res)
        assert out.shape == res.shape
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        counts = {e.key: e.count for e in prof.key_averages()}
        assert counts["mkldnn::_linear_pointwise"] == 2  # fc1, fc2
        assert counts.get("aten::silu_", 0) == (activation == "quick_gelu")
        assert counts.get("aten::gelu_", 0) == (activation == "gelu")
        assert "aten::sigmoid" not in counts and "aten::gelu" not in counts  # no out-of-place temporaries
        assert counts.get("aten::mul_", 0) == (activation == "quick_gelu")  # the division by 1.702
    if approximate is not None:  # the approximation reaches the kernel: the other one is measurably off
        other = torch.nn.GELU(approximate="tanh" if approximate == "none" else "none")
        assert (mlp.fc2(other(mlp.fc1(x))) + res - out).abs().max() > 1e-5


@pytest.mark.parametrize("resnet", [False, True])
def test_hooks_on_skipped_modules_fire_in_inference(resnet: bool, monkeypatch) -> None:
    """The fast path calls no module of the tower: a hook on one sends the tower to the reference path,
    so the hook fires with what it sees with grad on."""
    torch.manual_seed(0)
    model = CLIP(tiny(resnet)).eval()
    if resnet:
        randomize_batchnorm(model)
    v = model.visual
    size = 64 if resnet else 32
    px = torch.randn(3, 3, size, size)
    ids = ids_batch(model.config, [3, 9, 5])
    targets = ([v.stages[-1][-1].conv2, v.attn_pool.k_proj] if resnet
               else [v.transformer.blocks[-1], v.transformer.blocks[-1].mlp.fc1])
    targets.append(model.text.transformer.blocks[-1].mlp.fc1)
    seen: list[tuple[int, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda _m, _i, out, k=k: seen.append((k, out.detach().clone())))
               for k, m in enumerate(targets)]
    ref_img, ref_txt = model.encode_image(px).detach(), model.encode_text(ids).detach()  # grad on: plain
    ref_seen, seen[:] = list(seen), []
    with torch.inference_mode():
        img, txt = model.encode_image(px), model.encode_text(ids)
    assert [k for k, _ in seen] == [k for k, _ in ref_seen] and len(seen) == 3
    for (_, a), (_, b) in zip(seen, ref_seen):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(txt, ref_txt, atol=1e-5, rtol=1e-5)
    # Negative control: without the check the fast path skips those modules.
    monkeypatch.setattr(fast, "observed", lambda *_a, **_k: False)
    seen.clear()
    with torch.inference_mode():
        model.encode_image(px), model.encode_text(ids)
    assert seen == []
    monkeypatch.undo()
    for h in handles:
        h.remove()
    calls: list[int] = []
    hook = targets[0].register_forward_hook(lambda _m, _i, _o: calls.append(1))
    with torch.inference_mode(), fast.plain_ops():
        model.encode_image(px)
    hook.remove()
    assert calls == [1]


def test_fast_path_applies_only_where_it_may() -> None:
    """The one dispatch point: eval mode, CPU, no autograd, no tracing, no hooks, the reference classes."""
    from torchclip.reference.vision import VisionTransformer

    model = CLIP(tiny(False)).eval()
    v, px = model.visual, torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert fast.applies(v, px) and fast.applies(model.text, ids_batch(model.config, [2, 3]))
        with fast.plain_ops():
            assert not fast.applies(v, px)
        v.train()
        assert not fast.applies(v, px)
        v.eval()
        handle = v.norm_post.register_forward_pre_hook(lambda *_: None)
        assert not fast.applies(v, px)
        handle.remove()
        assert not fast.applies(v, px.to("meta"))  # not a CPU tensor

        class Custom(VisionTransformer):
            def forward(self, pixels: torch.Tensor, projected: bool = True) -> torch.Tensor:
                return super().forward(pixels, projected) * 0

        v.__class__ = Custom  # a subclass's own forward is what runs
        assert not fast.applies(v, px)
        assert torch.equal(model.encode_image(px), torch.zeros(2, 32))
        v.__class__ = VisionTransformer
    assert not fast.applies(v, px)  # autograd on
    seen = []

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(fast.applies(self.clip.visual, x))
            return self.clip.encode_image(x)

    with torch.no_grad(), pytest.warns(torch.jit.TracerWarning):
        traced = torch.jit.trace(Encoder(), (px,), check_trace=False)
    assert seen == [False]  # tracing records the reference modules' ops
    torch.testing.assert_close(traced(px), model.encode_image(px), atol=1e-5, rtol=1e-5)
