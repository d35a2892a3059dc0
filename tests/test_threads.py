"""Chunks of a batch on single-threaded workers (``torchclip.threads``): same features, thread-local limits,
the caller's modes carried over, and serial whenever a worker could not see what the caller sees."""

from __future__ import annotations

import multiprocessing as mp
import platform
import sys
import threading

import pytest
import torch
from evalkit import tiny_config
from torch.utils.flop_counter import FlopCounterMode

from torchclip import threads
from torchclip.model import CLIP

# The CI platform (Linux x86-64 torch wheels: OpenMP runtime + MKL) must have the workers; elsewhere they may
# be missing, and the batch then runs whole, which the other tests still check.
EXPECT_WORKERS = sys.platform.startswith("linux") and platform.machine() == "x86_64" and torch.backends.mkl.is_available()


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _need_workers() -> None:
    with torch.no_grad():
        n = threads.workers(torch.zeros(1))
    if n == 1:
        if EXPECT_WORKERS:
            pytest.fail("no chunk workers on Linux x86-64 with MKL: the OpenMP/MKL thread controls were not found")
        pytest.skip("no per-thread OpenMP/MKL controls on this platform")


def test_workers_run_side_by_side_with_one_thread_each(two_threads: None) -> None:
    _need_workers()
    barrier = threading.Barrier(2, timeout=30)  # both chunks must be in flight at once, or this times out
    mkl_threads = threads._controls[2]  # type: ignore[index]

    def fn(x: torch.Tensor) -> tuple:
        barrier.wait()
        return threading.current_thread().name, torch.get_num_threads(), mkl_threads(), x.sum().item()

    with torch.no_grad():
        out = threads.map_chunks(fn, [torch.ones(2), torch.ones(3)])
    assert [o[3] for o in out] == [2.0, 3.0]  # in order
    assert {o[1] for o in out} == {1} and {o[2] for o in out} == {1}  # torch/OpenMP and MKL: one thread each
    assert len({o[0] for o in out}) == 2 and all(o[0].startswith("torchclip-chunk") for o in out)
    assert torch.get_num_threads() == 2 and mkl_threads() == 2  # the caller's counts are untouched


def test_exceptions_reach_the_caller(two_threads: None) -> None:
    _need_workers()

    def fn(x: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"bad chunk of {x.numel()}")

    with torch.no_grad(), pytest.raises(ValueError, match="bad chunk of 2"):
        threads.map_chunks(fn, [torch.ones(2), torch.ones(2)])


def _count_map_chunks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = threads.map_chunks

    def counted(fn, chunks):  # noqa: ANN001, ANN202
        calls.append(len(chunks))
        return real(fn, chunks)

    monkeypatch.setattr(threads, "map_chunks", counted)
    return calls


def test_vit_on_workers_equals_the_whole_batch(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _need_workers()
    torch.manual_seed(0)
    model = CLIP(tiny_config()).eval()
    px = torch.randn(7, 3, 32, 32)
    ref = model.encode_image(px).detach()  # autograd on: one batch, the plain path
    calls = _count_map_chunks(monkeypatch)
    with threads.chunk_threads(False), torch.inference_mode():
        serial = model.encode_image(px)
    assert calls == []  # negative control: switched off, nothing went to the workers
    with torch.inference_mode():
        fast = model.encode_image(px)
    assert calls == [2]  # 7 images under the default chunk: one chunk per worker
    model.visual.chunk_tokens = 2 * 17  # at most 2 images at a time across both workers: 7 chunks
    with torch.inference_mode():
        small = model.encode_image(px)
    assert calls == [2, 7]
    for y in (serial, fast, small):
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    assert fast.is_inference()  # the caller's inference mode reached the workers
    with torch.no_grad():
        plain = model.encode_image(px)
    assert not plain.is_inference() and calls[-1] == 7  # ...and so did its absence
    torch.testing.assert_close(plain, ref, atol=1e-5, rtol=1e-5)


def test_serial_where_workers_would_miss_something(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _need_workers()
    torch.manual_seed(0)
    model = CLIP(tiny_config()).eval()
    px = torch.randn(4, 3, 32, 32)
    calls = _count_map_chunks(monkeypatch)
    seen: list[tuple[str, int]] = []
    hook = model.visual.norm_pre.register_forward_hook(
        lambda m, i, o: seen.append((threading.current_thread().name, o.shape[0])))
    with torch.inference_mode():
        model.encode_image(px)
    hook.remove()
    assert calls == [] and seen == [(threading.current_thread().name, 4)]  # a hook sees the calling thread
    with torch.inference_mode(), FlopCounterMode(display=False) as flops:
        model.encode_image(px)  # a dispatch mode is thread-local: the workers' ops would go uncounted
    assert calls == [] and flops.get_total_flops() > 0
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.encode_image(px)  # autocast is thread-local too
    assert calls == []
    model.encode_image(px)  # grad mode: the plain path
    assert calls == []
    with torch.inference_mode():
        model.encode_image(px[:1])  # one image: nothing to share out
    assert calls == []
    torch.set_num_threads(1)
    with torch.inference_mode():
        model.encode_image(px)
    assert calls == []
    torch.set_num_threads(2)
    with torch.inference_mode():
        model.encode_image(px)
    assert calls == [2]  # positive control


def test_resnet_stays_on_the_callers_threads(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _need_workers()
    torch.manual_seed(0)
    model = CLIP(tiny_config(resnet=True)).eval()
    calls = _count_map_chunks(monkeypatch)
    model.visual.chunk_images = 2
    with torch.inference_mode():
        model.encode_image(torch.randn(5, 3, 32, 32))
    assert calls == []


def _child(conn, model: CLIP, px: torch.Tensor) -> None:  # noqa: ANN001
    # Only the workers compute: GNU OpenMP cannot start a multi-threaded team in a child forked from a
    # parent that used one (torch's own limitation, the reason DataLoader workers run single-threaded).
    with torch.inference_mode():
        conn.send((threads.workers(px), model.encode_image(px).tolist()))  # plain data: no shared memory
    conn.close()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_a_forked_child_gets_its_own_workers(two_threads: None) -> None:
    _need_workers()
    torch.manual_seed(0)
    model = CLIP(tiny_config()).eval()
    px = torch.randn(6, 3, 32, 32)
    with torch.inference_mode():
        parent = model.encode_image(px)  # the parent's pool exists; its threads do not survive a fork
    assert threads._pool is not None
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, model, px))
    proc.start()
    try:
        assert recv.poll(120), "the forked child hung (it reused the parent's dead pool?)"
        n, child = recv.recv()
    finally:
        proc.join(30)
        if proc.exitcode is None:
            proc.kill()
    assert proc.exitcode == 0 and n == 2
    torch.testing.assert_close(torch.tensor(child), parent, atol=1e-6, rtol=1e-6)
