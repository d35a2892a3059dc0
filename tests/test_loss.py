"""Contrastive losses: single-process unit tests, and real multi-process (gloo) runs checked for exactness.

The distributed proof: a tiny two-tower model is run on W processes, each on its shard of one global batch;
after ``backward()`` the gradients are summed over ranks and divided by W, which is DDP's reduction (done by
hand: constructing a ``DistributedDataParallel`` costs each process seconds of lazy imports). The mean of the per-rank losses and every parameter's gradient must
equal a single-process run on the concatenated batch. The negative control swaps the autograd gather for
a plain one and must then *fail* that comparison, showing the comparison can fail.

One run of 4 processes serves every distributed test: world size 4 on the default group, world size 2 as
two independent pairs through ``group=``. It runs once per session (even under xdist) and saves per-rank
results that the tests then read.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import time
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import torchclip.loss as loss_mod
from torchclip.loss import clip_loss, gather_features, siglip_loss

GLOBAL_BATCH = 12  # divisible by both world sizes: B_local = 6 (W=2) and 3 (W=4)
EXACT_CASES = ("clip_local", "clip_global", "clip_soft_local", "clip_soft_global", "siglip")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
TOL = {"float64": 1e-12, "float32": 1e-5}
SPAWN_TIMEOUT_S = 120


# ----------------------------------------------------------------------------- the tiny model


class _Towers(nn.Module):
    """Two small MLP towers emitting normalized features, plus the learnable temperature (and bias)."""

    def __init__(self, siglip: bool) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4))
        self.text = nn.Sequential(nn.Linear(7, 8), nn.Tanh(), nn.Linear(8, 4))
        # SigLIP's published init is s = 10, b = -10; CLIP's is s = 1/0.07. Only SigLIP has a bias, so
        # every parameter gets a gradient (as DDP requires).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0) if siglip else math.log(1 / 0.07)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0)) if siglip else None

    def forward(self, xi: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.image(xi), dim=-1), F.normalize(self.text(xt), dim=-1)  # [B, 4] each


def _make(case: str, dtype: torch.dtype) -> tuple[_Towers, torch.Tensor, torch.Tensor]:
    """Same weights and the same global batch in every process (seeded), in ``dtype``."""
    torch.manual_seed(0)
    model = _Towers(siglip=case.startswith("siglip")).to(dtype)
    g = torch.Generator().manual_seed(1)
    xi = torch.randn(GLOBAL_BATCH, 5, generator=g).to(dtype)  # [N, 5]
    xt = torch.randn(GLOBAL_BATCH, 7, generator=g).to(dtype)  # [N, 7]
    return model, xi, xt


def _loss(case: str, model: _Towers, img: torch.Tensor, txt: torch.Tensor, group=None) -> torch.Tensor:
    scale = model.logit_scale.exp()
    if case.startswith("siglip"):
        return siglip_loss(img, txt, scale, model.logit_bias, group=group)
    soft = 0.5 if "soft" in case else 0.0  # a temperature that spreads the targets well beyond the diagonal
    return clip_loss(img, txt, scale, group=group, local_loss=not case.endswith("global"), soft_targets=soft)


def _reference(case: str, dtype: torch.dtype) -> dict:
    """Single process, whole global batch: the ground truth."""
    model, xi, xt = _make(case, dtype)
    loss = _loss(case, model, *model(xi, xt))
    loss.backward()
    return {"loss": loss.detach(), "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}


# ----------------------------------------------------------------------------- per-rank side


def _plain_gather(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """The naive gather: no gradient to other ranks; own slot keeps its graph (OpenCLIP's plain mode)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous(), group=group)
    parts[rank] = x
    return torch.cat(parts)


def _rank_step(case: str, dtype: torch.dtype, group: dist.ProcessGroup | None) -> dict:
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    model, xi, xt = _make(case, dtype)
    b = GLOBAL_BATCH // world
    xi, xt = xi[rank * b : (rank + 1) * b], xt[rank * b : (rank + 1) * b]  # this rank's shard, [B, *]
    naive = case == "clip_naive"
    with mock.patch.object(loss_mod, "gather_features", _plain_gather) if naive else contextlib.nullcontext():
        loss = _loss(case, model, *model(xi, xt), group=group)
        loss.backward()
    for p in model.parameters():  # DDP's reduction: sum over ranks, divide by W
        dist.all_reduce(p.grad, group=group)
        p.grad /= world
    global_loss = loss.detach().clone()
    dist.all_reduce(global_loss, group=group)
    global_loss /= world  # the global loss is defined as the mean of the per-rank losses
    return {
        "loss": global_loss,
        "rank_loss": loss.detach(),
        "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
    }


def _gather_check(group: dist.ProcessGroup | None) -> dict:
    """gather_features directly: forward order, and a backward that sums every rank's gradient."""
    rank = dist.get_rank(group)
    x = torch.full((2, 3), float(rank), dtype=torch.float64, requires_grad=True)  # [B, 3]
    y = gather_features(x, group)  # [W*B, 3]
    ((rank + 1) * y).sum().backward()  # d(rank's loss)/dy = rank + 1 everywhere
    return {"forward": y.detach(), "grad": x.grad.clone()}


def _unequal_check(group: dist.ProcessGroup | None) -> dict:
    f = F.normalize(torch.randn(3 if dist.get_rank(group) == 0 else 2, 4), dim=-1)
    out = {}
    for name, fn in (
        ("clip", lambda: clip_loss(f, f, 10.0, group=group)),
        ("siglip", lambda: siglip_loss(f, f, 10.0, -10.0, group=group)),
    ):
        try:
            fn()
            out[name] = None
        except ValueError as e:
            out[name] = str(e)
    return out


def _worker(rank: int, store: str, out_dir: str) -> None:
    """One of 4 ranks. World size 4 uses the default group; world size 2 runs as two independent pairs,
    {0, 1} and {2, 3}, through ``group=`` (so the pair {2, 3} also checks that group ranks, not global
    ranks, place the labels and slices)."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=4, timeout=timedelta(seconds=60)
    )
    try:
        pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank must create every group
        res: dict = {}
        for world, group in ((4, None), (2, pairs[rank // 2])):
            cases = {}
            for dname, dtype in DTYPES.items():
                for case in (*EXACT_CASES, "clip_naive"):
                    cases[case, dname] = _rank_step(case, dtype, group)
            res[world] = {"cases": cases, "gather": _gather_check(group)}
        res[2]["unequal"] = _unequal_check(pairs[rank // 2])
        torch.save(res, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- parent side


def _spawn(root: Path) -> None:
    """Start 4 fresh processes and wait for them (bounded, so a hung collective fails instead of hanging).

    ``forkserver`` where available: like ``spawn`` the children share nothing with this (threaded, pytest)
    process, but they fork from one server that has imported torch once, instead of each paying the
    import (seconds per process on a 2-core machine).
    """
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    if method == "forkserver":  # takes effect only if this process has not started its forkserver yet
        multiprocessing.get_context("forkserver").set_forkserver_preload(["torch", _worker.__module__])
    with pytest.MonkeyPatch.context() as mp_env:
        mp_env.setenv("OMP_NUM_THREADS", "1")  # inherited by the children before torch loads
        ctx = mp.start_processes(
            _worker, args=(str(root / "store"), str(root)), nprocs=4, join=False, start_method=method
        )
        deadline = time.monotonic() + SPAWN_TIMEOUT_S
        while not ctx.join(timeout=0.2):  # re-raises a child's exception with its traceback
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail(f"4 gloo processes did not finish in {SPAWN_TIMEOUT_S}s")


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Per-rank results of the one 4-process run, spawned once per session even under pytest-xdist.

    Under xdist every worker has its own module fixtures; their basetemp's parent is shared, and the
    atomic ``mkdir`` there elects the one worker that spawns. The others wait for its ``done`` marker.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    root = base / "loss_dist"
    try:
        root.mkdir()
    except FileExistsError:
        deadline = time.monotonic() + SPAWN_TIMEOUT_S + 60
        while not (root / "done").exists():
            if (root / "failed").exists():
                pytest.fail(
                    "the distributed run failed in another xdist worker: " + (root / "failed").read_text()
                )
            if time.monotonic() > deadline:
                pytest.fail("timed out waiting for another xdist worker's distributed run")
            time.sleep(0.2)
    else:
        try:
            _spawn(root)
        except BaseException as e:
            (root / "failed").write_text(repr(e))
            raise
        (root / "done").touch()
    return [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(4)]


def _runs(results: list[dict], world: int) -> list[list[dict]]:
    """The independent runs of one world size, each a list of its ranks' results in group-rank order."""
    per_rank = [r[world] for r in results]
    return [per_rank] if world == 4 else [per_rank[:2], per_rank[2:]]


def _max_diffs(got: dict, ref: dict) -> tuple[float, float]:
    assert got["grads"].keys() == ref["grads"].keys()
    dl = (got["loss"] - ref["loss"]).abs().item()
    dg = max((got["grads"][n] - ref["grads"][n]).abs().max().item() for n in ref["grads"])
    return dl, dg


WORLDS = pytest.mark.parametrize("world", [2, 4], ids=lambda w: f"world{w}")


@WORLDS
@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("case", EXACT_CASES)
def test_distributed_matches_single_process(
    dist_results: list[dict], world: int, case: str, dname: str
) -> None:
    ref = _reference(case, DTYPES[dname])
    assert all(g.abs().max() > 1e-3 for g in ref["grads"].values()), "vacuous: a reference gradient is ~0"
    for i, ranks in enumerate(_runs(dist_results, world)):
        for r, res in enumerate(ranks):
            dl, dg = _max_diffs(res["cases"][case, dname], ref)
            print(f"[{case} {dname} W={world} run{i} rank{r}] max |dloss| = {dl:.2e}, max |dgrad| = {dg:.2e}")
            assert dl <= TOL[dname] and dg <= TOL[dname], (case, dname, world, i, r, dl, dg)
        if not case.endswith("global"):  # *_global: every rank computes the whole [N, N] loss by design
            # The shards really differ: the per-rank losses are not each the global one.
            rank_losses = torch.stack([res["cases"][case, dname]["rank_loss"] for res in ranks])
            assert (rank_losses - ref["loss"]).abs().max() > 1e-3


@WORLDS
def test_naive_plain_gather_gives_wrong_gradients(dist_results: list[dict], world: int) -> None:
    """Negative control: local loss with a gather that carries no gradient to other ranks.

    The loss value is still right (the forward is identical), but each rank loses the terms in which its
    features are negatives in other ranks' rows, so the averaged gradient is wrong by far more than any
    tolerance. This is what makes the exactness test above able to fail.
    """
    ref = _reference("clip_local", torch.float64)
    biggest = max(g.abs().max().item() for g in ref["grads"].values())
    for ranks in _runs(dist_results, world):
        dl, dg = _max_diffs(ranks[0]["cases"]["clip_naive", "float64"], ref)
        print(
            f"[naive W={world}] max |dloss| = {dl:.2e}, max |dgrad| = {dg:.2e} (largest grad {biggest:.2e})"
        )
        assert dl <= TOL["float64"]
        assert dg > 1e-3 and dg > 0.05 * biggest


@WORLDS
def test_gather_features_forward_and_summed_backward(dist_results: list[dict], world: int) -> None:
    expected_fwd = torch.arange(world, dtype=torch.float64).repeat_interleave(2)[:, None].expand(-1, 3)
    for ranks in _runs(dist_results, world):
        for res in ranks:
            assert torch.equal(res["gather"]["forward"], expected_fwd)
            # rank r's loss weights every gathered row by (r + 1): the owner receives sum_r (r + 1).
            assert torch.all(res["gather"]["grad"] == world * (world + 1) / 2)


def test_unequal_local_batch_raises_on_every_rank(dist_results: list[dict]) -> None:
    for ranks in _runs(dist_results, 2):
        for res in ranks:
            for name in ("clip", "siglip"):
                msg = res["unequal"][name]
                assert msg is not None, f"{name}: unequal local batches did not raise"
                assert "same local batch size" in msg and "(3, 4)" in msg and "(2, 4)" in msg


# ----------------------------------------------------------------------------- single process


def _feats(
    b: int = 5, d: int = 4, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1) for _ in range(2))


def test_losses_are_symmetric_in_image_and_text() -> None:
    img, txt = _feats()
    s = torch.tensor(14.3)
    torch.testing.assert_close(clip_loss(img, txt, s), clip_loss(txt, img, s))
    torch.testing.assert_close(siglip_loss(img, txt, s, -3.0), siglip_loss(txt, img, s, -3.0))


def test_clip_loss_hand_computed_2x2() -> None:
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    # logits (scale 2) = [[2, 1.2], [0, 1.6]]; CE of a 2-way row with label logit a, other c: log(1 + e^(c - a))
    rows = math.log1p(math.exp(1.2 - 2)) + math.log1p(math.exp(0 - 1.6))
    cols = math.log1p(math.exp(0 - 2)) + math.log1p(math.exp(1.2 - 1.6))
    expected = (rows / 2 + cols / 2) / 2
    got = clip_loss(img, txt, torch.tensor(2.0, dtype=torch.float64))
    assert abs(got.item() - expected) < 1e-12


def test_siglip_loss_hand_computed_2x2() -> None:
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    s, b = 2.0, -1.0

    def log_sig(v: float) -> float:
        return -math.log1p(math.exp(-v))

    # cosines [[1, 0.6], [0, 0.8]]; diagonal positive, off-diagonal negative; divided by B = 2
    expected = (
        -(log_sig(s * 1 + b) + log_sig(-(s * 0.6 + b)) + log_sig(-(s * 0 + b)) + log_sig(s * 0.8 + b)) / 2
    )
    got = siglip_loss(img, txt, torch.tensor(s, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    assert abs(got.item() - expected) < 1e-12


def test_perfect_alignment_with_large_scale_gives_zero_loss() -> None:
    eye = torch.eye(4)
    assert clip_loss(eye, eye, torch.tensor(100.0)).item() < 1e-6  # log(1 + 3 e^-100)
    # SigLIP: positives at s + b = 50, negatives at b = -50.
    assert siglip_loss(eye, eye, torch.tensor(100.0), torch.tensor(-50.0)).item() < 1e-6
    # and a misaligned batch is far from zero, so the check is not vacuous
    assert clip_loss(eye, eye.roll(1, 0), torch.tensor(100.0)).item() > 10


def test_gradcheck_float64() -> None:
    img, txt = (f.requires_grad_() for f in _feats(dtype=torch.float64))
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, t, s: clip_loss(i, t, s), (img, txt, scale))
    assert torch.autograd.gradcheck(lambda i, t, s, b: siglip_loss(i, t, s, b), (img, txt, scale, bias))


def test_gradient_flows_into_logit_scale_and_bias() -> None:
    img, txt = _feats()
    raw = torch.tensor(math.log(10.0), requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    (clip_loss(img, txt, raw.exp()) + siglip_loss(img, txt, raw.exp(), bias)).backward()
    assert raw.grad is not None and raw.grad != 0
    assert bias.grad is not None and bias.grad != 0


def test_fp32_upcast_under_autocast() -> None:
    img, txt = (f.bfloat16() for f in _feats(b=16, d=32))
    s = torch.tensor(100.0)
    ref_clip = clip_loss(img.double(), txt.double(), s.double())
    ref_sig = siglip_loss(img.double(), txt.double(), 10.0, -10.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_clip = clip_loss(img, txt, s)
        got_sig = siglip_loss(img, txt, 10.0, -10.0)
    assert got_clip.dtype == torch.float32 and got_sig.dtype == torch.float32
    # the bf16 inputs are exact in fp32, so only fp32 rounding separates it from the fp64 result
    assert abs(got_clip.item() - ref_clip.item()) < 1e-5
    assert abs(got_sig.item() - ref_sig.item()) < 1e-5


def test_local_loss_flag_is_irrelevant_in_one_process() -> None:
    img, txt = _feats()
    s = torch.tensor(5.0)
    torch.testing.assert_close(
        clip_loss(img, txt, s, local_loss=True), clip_loss(img, txt, s, local_loss=False)
    )


def test_gather_features_is_identity_without_process_group() -> None:
    x = torch.randn(3, 2)
    assert gather_features(x) is x


def test_bad_shapes_raise() -> None:
    img, txt = _feats()
    with pytest.raises(ValueError, match="same"):
        clip_loss(img, txt[:-1], 1.0)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        siglip_loss(img[0], txt[0], 1.0, 0.0)
    with pytest.raises(ValueError, match="scalar"):
        clip_loss(img, txt, torch.ones(2))


def test_soft_targets_hand_computed_2x2() -> None:
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    tau = 0.5
    # caption similarity [[1, 0.6], [0.6, 1]] -> each row's target: own caption p, the other 1 - p
    p = 1 / (1 + math.exp((0.6 - 1) / tau))
    logits = [[2.0, 1.2], [0.0, 1.6]]  # scale 2

    def ce(row: list[float], target: list[float]) -> float:
        lse = math.log(sum(math.exp(v) for v in row))
        return -sum(t * (v - lse) for v, t in zip(row, target))

    targets = [[p, 1 - p], [1 - p, p]]
    rows = sum(ce(logits[i], targets[i]) for i in range(2)) / 2
    cols = sum(ce([logits[0][j], logits[1][j]], targets[j]) for j in range(2)) / 2
    got = clip_loss(img, txt, torch.tensor(2.0, dtype=torch.float64), soft_targets=tau)
    assert abs(got.item() - (rows + cols) / 2) < 1e-12
    # negative control: the one-hot loss is a different number on the same features
    assert abs(clip_loss(img, txt, torch.tensor(2.0, dtype=torch.float64)).item() - got.item()) > 1e-2


def test_soft_targets_at_a_tiny_temperature_are_one_hot() -> None:
    img, txt = _feats(b=4, d=6, dtype=torch.float64)
    txt = torch.cat([txt[:3], txt[:1]])  # caption 3 is caption 0 again
    s = torch.tensor(10.0, dtype=torch.float64)
    tiny = 1e-4  # far below any gap between distinct cosines: only exact ties share mass
    logits = s * img @ txt.T  # [4, 4]
    target = torch.eye(4, dtype=torch.float64)
    target[0, 3] = target[3, 0] = 1.0
    target[0] /= 2
    target[3] /= 2
    expected = (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean()) / 2
    torch.testing.assert_close(clip_loss(img, txt, s, soft_targets=tiny), expected)
    # the one-hot loss has the same value: a twin's logit equals its own in every row it meets
    torch.testing.assert_close(clip_loss(img, txt, s), expected)
    # with distinct captions a tiny temperature is the one-hot loss
    img, txt = _feats(b=4, d=6, dtype=torch.float64, seed=3)
    torch.testing.assert_close(clip_loss(img, txt, s, soft_targets=tiny), clip_loss(img, txt, s))


def test_soft_targets_carry_no_gradient() -> None:
    img, txt = _feats(b=5, d=4, dtype=torch.float64)
    txt.requires_grad_()
    s = torch.tensor(5.0, dtype=torch.float64)
    clip_loss(img, txt, s, soft_targets=0.3).backward()
    # the same loss with the targets as constants
    target = torch.softmax(txt.detach() @ txt.detach().T / 0.3, dim=-1)
    ref_txt = txt.detach().clone().requires_grad_()
    logits = s * img @ ref_txt.T
    ref = (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean()) / 2
    ref.backward()
    torch.testing.assert_close(txt.grad, ref_txt.grad)
    # negative control: targets that keep their graph give another gradient
    live_txt = txt.detach().clone().requires_grad_()
    live = torch.softmax(live_txt @ live_txt.T / 0.3, dim=-1)
    logits = s * img @ live_txt.T
    ((-(live * logits.log_softmax(1)).sum(1).mean() - (live * logits.T.log_softmax(1)).sum(1).mean()) / 2).backward()
    assert (live_txt.grad - ref_txt.grad).abs().max() > 1e-3


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_soft_targets_must_be_a_temperature(bad: float) -> None:
    img, txt = _feats()
    with pytest.raises(ValueError, match="soft_targets"):
        clip_loss(img, txt, torch.tensor(2.0), soft_targets=bad)
