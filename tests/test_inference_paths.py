"""The inference shortcuts compute what the plain (autograd) path computes.

Inference (no autograd recording) packs text rows of different lengths, folds eval-mode BatchNorm into
the convs (cached), runs the ResNet channels-last, embeds ViT patches with a matmul, splits large image
batches, adds residuals in place (fused into oneDNN's projections on x86). None of it may change a feature beyond float rounding, a state dict
key, or what training sees.
"""

from __future__ import annotations

import pytest
import torch

from torchclip import layers
from torchclip.config import CLIPConfig, TextConfig, VisionConfig
from torchclip.layers import Packing, inference_linear
from torchclip.model import CLIP


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


def test_packed_text_equals_padded_text_and_backprops_the_same() -> None:
    torch.manual_seed(0)
    cfg = tiny(False)
    model = CLIP(cfg).eval()
    ids = ids_batch(cfg, [1, 12, 3, 0, 7])
    with torch.no_grad():
        packed = model.encode_text(ids)
        model.text.pack_min_padding = 2.0  # never pack
        padded = model.encode_text(ids)
        alone = torch.cat([model.encode_text(ids[i:i + 1]) for i in range(len(ids))])
    torch.testing.assert_close(packed, padded, atol=1e-6, rtol=0)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)

    grads = []
    for pack in (0.1, 2.0):
        model.zero_grad()
        model.text.pack_min_padding = pack
        model.encode_text(ids).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.text.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_packed_text_backward_is_the_same_every_time_on_threads() -> None:
    """Seeded training must repeat: the packed positional-embedding lookup's backward sums repeated
    positions in a fixed order on any thread count (plain indexing's did not: 9 of 10 repeats differed on
    two threads, and the demo's 300 steps ended at 96.0% or 99.6%)."""
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
    model.visual.chunk_images = 2
    with torch.inference_mode():
        fast = model.encode_image(px)
    with torch.no_grad():
        again = model.encode_image(px)  # the cached folded weights, outside inference mode
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, fast, atol=0, rtol=0)
    assert set(model.state_dict()) == keys  # the fold cache is no state

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
        a = model.encode_image(px)  # batch statistics, in no_grad too
    b = model.encode_image(px).detach()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_vit_inference_path_equals_autograd_path() -> None:
    torch.manual_seed(0)
    model = CLIP(tiny(False)).eval()
    px = torch.randn(7, 3, 32, 32)
    ref = model.encode_image(px).detach()  # conv patch embedding, one batch
    model.visual.chunk_tokens = 3 * 17  # chunks of three images
    with torch.inference_mode():
        fast = model.encode_image(px)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


needs_onednn = pytest.mark.skipif(not layers.ONEDNN,
                                  reason="oneDNN projections are off here (not x86, no MKL-DNN, or TORCHCLIP_ONEDNN=0)")


@pytest.fixture
def onednn_switch():
    """Restores ``layers.ONEDNN`` after a test flips it."""
    saved = layers.ONEDNN
    yield
    layers.ONEDNN = saved


@pytest.mark.parametrize("use_onednn", [True, False])
def test_inference_linear_is_linear_plus_residual(use_onednn: bool, onednn_switch) -> None:
    if use_onednn and not layers.ONEDNN:
        pytest.skip("oneDNN projections are off here")
    layers.ONEDNN = use_onednn
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
        layers.ONEDNN = on
        with grad_ctx(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out[on] = model.encode_image(px), model.encode_text(ids)
        ops[on] = {e.key for e in prof.key_averages()}
    assert "mkldnn::_linear_pointwise" in ops[True] and "mkldnn::_linear_pointwise" not in ops[False]
    for on in (True, False):
        torch.testing.assert_close(out[on][0], ref_img, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[on][1], ref_txt, atol=1e-5, rtol=1e-5)
    # Nothing is cached from the weights: an in-place change shows at once.
    layers.ONEDNN = True
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


def test_half_precision_models_use_their_own_gemm() -> None:
    torch.manual_seed(0)
    model = CLIP(tiny(False)).eval()
    px = torch.randn(2, 3, 32, 32)
    ref = model.encode_image(px).detach()
    model = model.to(torch.bfloat16)
    with torch.inference_mode():
        out = model.encode_image(px.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.1)


@needs_onednn
def test_resnet_packed_convs_match_and_survive_copies(onednn_switch) -> None:
    """Pre-packed oneDNN convs give the plain features at every batch size, packed per input shape (two
    kept); a model holding them still copies and pickles."""
    import copy
    import io

    torch.manual_seed(0)
    model = CLIP(tiny(True)).eval()
    randomize_batchnorm(model)
    model.visual.chunk_images = 3
    px = torch.randn(1, 3, 64, 64)
    ref = model.encode_image(px).detach()
    out, ops = {}, {}
    for on in (True, False, True):
        layers.ONEDNN = on
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out[on] = model.encode_image(px)
        ops[on] = {e.key for e in prof.key_averages()}
        torch.testing.assert_close(out[on], ref, atol=1e-5, rtol=1e-5)
    assert "mkldnn::_convolution_pointwise" in ops[True]
    assert "mkldnn::_convolution_pointwise" not in ops[False]
    cache = model.visual.stem.bn1.__dict__["_packed"]
    assert cache.entry[0] == ((1, 3, 64, 64),)
    with torch.no_grad():  # other batch sizes: packed for their own shape, same features per image
        many = model.encode_image(px.expand(6, -1, -1, -1))  # two chunks of 3
        torch.testing.assert_close(many, out[True].expand(6, -1), atol=1e-5, rtol=1e-5)
        assert cache.entry[0] == ((3, 3, 64, 64), (1, 3, 64, 64))  # the chunks' shape, then the last other
        model.encode_image(px.expand(2, -1, -1, -1))  # a third shape evicts the oldest
        assert cache.entry[0] == ((2, 3, 64, 64), (3, 3, 64, 64))
        plain = model.encode_image(px.expand(2, -1, -1, -1))  # a hit reuses the pack, same numbers
        assert cache.entry[0] == ((2, 3, 64, 64), (3, 3, 64, 64))
        layers.ONEDNN = False
        torch.testing.assert_close(model.encode_image(px.expand(2, -1, -1, -1)), plain, atol=1e-5, rtol=1e-5)
        layers.ONEDNN = True

    twin = copy.deepcopy(model)  # the packed cache is dropped, not copied
    buf = io.BytesIO()
    torch.save(model, buf)
    with torch.no_grad():
        torch.testing.assert_close(twin.encode_image(px), out[True], atol=0, rtol=0)
        model.to(torch.float64)  # another dtype rebuilds the fold, unpacked
        torch.testing.assert_close(model.encode_image(px.double()).float(), ref, atol=1e-5, rtol=1e-5)
        twin.visual.stages[-1][-1].conv3.weight.mul_(-1)  # an in-place change rebuilds the fold and the pack
        changed = twin.encode_image(px)
        layers.ONEDNN = False
        torch.testing.assert_close(changed, twin.encode_image(px), atol=1e-5, rtol=1e-5)
        assert (changed - out[True]).abs().max() > 1e-3


@needs_onednn
def test_onednn_max_rows_sends_larger_products_to_torch_gemm(onednn_switch, monkeypatch) -> None:
    """Above ``ONEDNN_MAX_ROWS`` rows torch's GEMM runs, with the same result; by default there is no limit."""
    assert layers.ONEDNN_MAX_ROWS is None
    x, w = torch.randn(5000, 5), torch.randn(6, 5)
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        inference_linear(x, w)
    assert "mkldnn::_linear_pointwise" in {e.key for e in prof.key_averages()}
    monkeypatch.setattr(layers, "ONEDNN_MAX_ROWS", 4)
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(6, 5, generator=g), torch.randn(6, generator=g)
    for rows, expect in ((4, True), (8, False)):
        x = torch.randn(rows, 5, generator=g)
        with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = inference_linear(x, w, b)
        assert ("mkldnn::_linear_pointwise" in {e.key for e in prof.key_averages()}) == expect
        torch.testing.assert_close(y, x @ w.t() + b, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_packed_weights_match_plain_and_follow_the_parameters(onednn_switch, monkeypatch) -> None:
    """Projections run on oneDNN-packed weights cached on their modules (fc1/fc2 of QuickGELU MLPs scaled
    by 1.702 and 1/1.702): the plain-weight numbers, rebuilt when a weight changes in place or is
    replaced, dropped by copies, never above ``PACK_MAX_ROWS``."""
    import copy
    import io

    torch.manual_seed(0)
    cfg = tiny(False)
    model = CLIP(cfg).eval()
    px, ids = torch.randn(2, 3, 32, 32), ids_batch(cfg, [1, 12])
    fc1 = model.visual.transformer.blocks[0].mlp.fc1

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return model.encode_image(px), model.encode_text(ids)

    monkeypatch.setattr(layers, "PACK_MAX_ROWS", 0)  # never pack: the reference
    plain = run()
    assert "_packed_linear" not in fc1.__dict__
    monkeypatch.setattr(layers, "PACK_MAX_ROWS", None)  # the default: every product of 2 rows or more
    packed = run()
    entry = fc1.__dict__["_packed_linear"].entry
    assert entry[1][0].is_mkldnn and entry[1][1] is fc1.weight
    scale = 1.702 if isinstance(model.visual.transformer.blocks[0].mlp.act, layers.QuickGELU) else 1.0
    assert entry[0][1] == scale
    for a, b in zip(packed, plain):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    with torch.no_grad():  # an in-place change (an optimizer step) is seen at once
        fc1.weight.mul_(-1)
    changed = run()
    assert (changed[0] - packed[0]).abs().max() > 1e-3
    assert fc1.__dict__["_packed_linear"].entry[0][0][1] == fc1.weight._version
    fc1.weight = torch.nn.Parameter(fc1.weight.detach() * -1)  # a replaced parameter too
    torch.testing.assert_close(run()[0], packed[0], atol=1e-6, rtol=1e-6)
    twin = copy.deepcopy(model)  # the cache is dropped, not copied (oneDNN tensors cannot be)
    assert twin.visual.transformer.blocks[0].mlp.fc1.__dict__["_packed_linear"].entry == (None, ())
    torch.save(model, io.BytesIO())
    monkeypatch.setattr(layers, "PACK_MAX_ROWS", 4)  # more rows than that: the plain weight, no new cache
    twin.visual.chunk_tokens = 10**6
    with torch.inference_mode():
        twin.encode_image(px)
    assert twin.visual.transformer.blocks[0].mlp.fc1.__dict__["_packed_linear"].entry == (None, ())


@pytest.mark.parametrize("resnet", [False, True])
def test_models_built_in_inference_mode_encode(resnet: bool) -> None:
    """Parameters created under ``torch.inference_mode()`` count no versions: nothing derived from them is
    cached (packed weights, folded BatchNorm), and every path still gives the plain numbers."""
    torch.manual_seed(0)
    with torch.inference_mode():
        model = CLIP(tiny(resnet)).eval()
        if resnet:
            randomize_batchnorm(model)
        assert next(model.parameters()).is_inference()
        px = torch.randn(3, 3, *(2 * [model.config.vision.image_size]))
        one, three = model.encode_image(px[:1]), model.encode_image(px)
        with layers.plain_ops():
            ref = model.encode_image(px)
    torch.testing.assert_close(one, ref[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(three, ref, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_onednn_enabled_switches_and_restores() -> None:
    x, w = torch.randn(3, 5), torch.randn(4, 5)
    before = layers.ONEDNN
    with torch.inference_mode():
        for flag in (False, True):
            with layers.onednn_enabled(flag), torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                assert layers.ONEDNN is flag
                inference_linear(x, w)
            assert ("mkldnn::_linear_pointwise" in {e.key for e in prof.key_averages()}) is flag
            assert layers.ONEDNN is before


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
    out = layers.attend_one_query(q, x, w_k, w_v, b_v, heads)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # Negative controls: the value bias and the head split both matter.
    assert not torch.allclose(layers.attend_one_query(q, x, w_k, w_v, None, heads), ref, atol=1e-3)
    if heads > 1:
        assert not torch.allclose(layers.attend_one_query(q, x, w_k, w_v, b_v, 1), ref, atol=1e-3)


def test_attention_pool_never_projects_every_token() -> None:
    """The ResNet's pool projects one query per image; keys and values stay unprojected (fewer FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    pool = CLIP(tiny(True)).eval().visual.attn_pool
    fmap = torch.randn(3, pool.k_proj.in_features, 2, 2)
    counts = {}
    for name, ctx in (("plain", torch.enable_grad), ("fast", torch.inference_mode)):
        with ctx(), FlopCounterMode(display=False) as counter:
            out = pool(fmap)
        counts[name] = (counter.get_total_flops(), out.detach())
    torch.testing.assert_close(counts["fast"][1], counts["plain"][1], atol=1e-5, rtol=1e-5)
    c, tokens = pool.k_proj.in_features, 3 * 5
    assert counts["plain"][0] - counts["fast"][0] >= 2 * tokens * c * c  # at least the key projection


def test_resnet_blocks_overwrite_only_unobserved_inputs(monkeypatch) -> None:
    """Blocks write their output into their input only when no hook can hold either, never a caller's tensor."""
    from torchclip import vision

    torch.manual_seed(0)
    model = CLIP(tiny(True)).eval()
    randomize_batchnorm(model)
    px = torch.randn(3, 3, 64, 64)
    blocks = [b for stage in model.visual.stages for b in stage]
    expected = []
    handles = [b.register_forward_hook(lambda _m, _a, out: expected.append(out.detach().clone())) for b in blocks]
    model.encode_image(px)  # autograd on: the plain path
    for h in handles:
        h.remove()

    def run_hooked() -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        hs = [b.register_forward_hook(lambda _m, _a, out: seen.append(out)) for b in blocks]
        with torch.inference_mode():  # forward_features: the shortcuts' own guard (encode_image goes plain)
            model.visual.forward_features(px)
        for h in hs:
            h.remove()
        return seen

    for got, want in zip(run_hooked(), expected, strict=True):  # held outputs survive the rest of the forward
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(vision, "observed", lambda *_a, **_k: False)  # negative control: overwriting regardless
    clobbered = run_hooked()
    assert any(not torch.allclose(g, w, atol=1e-3) for g, w in zip(clobbered, expected, strict=True))

    block = model.visual.stages[1][1]  # an identity-shortcut block called directly keeps the caller's tensor
    t = torch.randn(2, block.conv1.in_channels, 8, 8).contiguous(memory_format=torch.channels_last)
    before = t.clone()
    with torch.inference_mode():
        block(t)
    assert torch.equal(t, before)


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_mlp_on_torch_gemm_folds_quick_gelu_into_silu(activation: str) -> None:
    """Many rows (torch's GEMM): QuickGELU runs as one in-place SiLU with its factors inside the GEMMs."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    mlp = layers.MLP(24, 96, activation).eval()
    x, res = torch.randn(5, 7, 24), torch.randn(5, 7, 24)
    ref = (mlp(x) + res).detach()  # autograd on: the plain module path
    with layers.onednn_enabled(False), torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        out = mlp(x, residual=res)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    ops = {e.key for e in prof.key_averages()}
    assert ("aten::silu_" in ops) == (activation == "quick_gelu")  # the fold ran exactly where it applies
    mlp.fc1.bias = None  # and without biases
    mlp.fc2.bias = None
    with torch.inference_mode(), layers.onednn_enabled(False):
        out = mlp(x, residual=res)
    torch.testing.assert_close(out, (mlp(x) + res).detach(), atol=1e-5, rtol=1e-5)


@needs_onednn
@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize(("activation", "approximate"), [("quick_gelu", None), ("gelu", "none"), ("gelu", "tanh")])
def test_mlp_on_onednn_runs_the_activation_in_place(activation: str, approximate: str | None, pack: bool,
                                                     monkeypatch) -> None:
    """oneDNN runs fc1 and fc2 without fused post-ops, the activation in place in between (QuickGELU as
    one SiLU, its factors inside the packed weights): the plain module's numbers, for each activation,
    with and without biases, packed or not."""
    from torch.profiler import ProfilerActivity, profile

    monkeypatch.setattr(layers, "PACK_MAX_ROWS", None if pack else 0)
    torch.manual_seed(0)
    mlp = layers.MLP(24, 96, activation).eval()
    if approximate is not None:
        mlp.act = torch.nn.GELU(approximate=approximate)
    x, res = torch.randn(5, 7, 24), torch.randn(5, 7, 24)
    for with_bias in (True, False):
        if not with_bias:
            mlp.fc1.bias = None
            mlp.fc2.bias = None
        ref = (mlp(x) + res).detach()  # autograd on: the plain module path
        with layers.onednn_enabled(True), torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            out = mlp(x, residual=res)
        assert out.shape == res.shape
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        counts = {e.key: e.count for e in prof.key_averages()}
        assert counts["mkldnn::_linear_pointwise"] == 2  # fc1, fc2
        assert counts.get("aten::silu_", 0) == (activation == "quick_gelu")
        assert counts.get("aten::gelu_", 0) == (activation == "gelu")
        assert "aten::sigmoid" not in counts and "aten::gelu" not in counts  # no out-of-place temporaries
        # packed: the 1.702 factors live in the packed weights, so nothing rescales the hidden layer
        assert counts.get("aten::mul_", 0) == (activation == "quick_gelu" and not pack)
        entry = mlp.fc1.__dict__.get("_packed_linear")
        assert (entry is not None and entry.entry[0] is not None) == pack
    if approximate is not None:  # the approximation reaches the kernel: the other one is measurably off
        other = torch.nn.GELU(approximate="tanh" if approximate == "none" else "none")
        assert (mlp.fc2(other(mlp.fc1(x))) + res - out).abs().max() > 1e-5


@pytest.mark.parametrize("resnet", [False, True])
def test_hooks_on_skipped_modules_fire_in_inference(resnet: bool, monkeypatch) -> None:
    """The shortcuts call projections, convs and the ViT's last block as functions: a hook there makes
    the tower run its plain module calls, so the hook fires with what it sees with grad on."""
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
    # Negative control: without the check the shortcuts skip those modules.
    monkeypatch.setattr(layers, "observed", lambda *_a, **_k: False)
    seen.clear()
    with torch.inference_mode():
        model.encode_image(px), model.encode_text(ids)
    assert seen == []
    monkeypatch.undo()
    for h in handles:
        h.remove()
    calls: list[int] = []
    hook = targets[0].register_forward_hook(lambda _m, _i, _o: calls.append(1))
    with torch.inference_mode(), layers.plain_ops():
        model.encode_image(px)
    hook.remove()
    assert calls == [1]
