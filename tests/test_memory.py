"""Huge-page advice for large inference temporaries (torchclip.fast.memory): it reaches the kernel, and changes no value."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from torchclip.config import CLIPConfig, TextConfig, VisionConfig
from torchclip.fast import kernels, memory
from torchclip.model import CLIP

linux_madvise = pytest.mark.skipif(
    not sys.platform.startswith("linux") or memory.thp_mode() != "madvise",
    reason="needs Linux with transparent huge pages in 'madvise' mode",
)


def vma_flags(address: int) -> list[str]:
    """VmFlags of the mapping of this process that holds ``address`` (from /proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def test_thp_mode_reads_the_bracketed_choice(tmp_path: Path) -> None:
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert memory.thp_mode(f) == "madvise"
    f.write_text("[always] madvise never\n")
    assert memory.thp_mode(f) == "always"
    f.write_text("garbage\n")
    assert memory.thp_mode(f) is None
    assert memory.thp_mode(tmp_path / "missing") is None


@linux_madvise
def test_large_buffers_are_advised_and_others_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    # 64 MiB is above glibc's largest mmap threshold (32 MiB): each tensor gets a fresh mapping of its own.
    like = torch.empty(0)
    monkeypatch.setattr(memory, "ENABLED", False)
    plain = memory.empty(4096, 4096, like=like)
    monkeypatch.setattr(memory, "ENABLED", True)
    huge = memory.empty(4096, 4096, like=like)
    assert "hg" in vma_flags(huge.data_ptr() + memory.HUGE_PAGE)
    assert "hg" not in vma_flags(plain.data_ptr() + memory.HUGE_PAGE)  # negative control
    assert huge.shape == (4096, 4096) and huge.dtype == like.dtype
    # Below MIN_BYTES nothing is advised (the heap's flags depend on what else this process advised).
    advised: list[int] = []
    real = memory.advise_huge
    monkeypatch.setattr(memory, "advise_huge", lambda t: advised.append(t.numel()) or real(t))
    memory.empty(16, 16, like=like)
    assert advised == []
    memory.empty(4096, 4096, like=like)
    assert advised == [4096 * 4096]  # the counter sees an advised buffer


def test_advice_is_refused_politely_for_buffers_without_a_whole_huge_page() -> None:
    assert memory.advise_huge(torch.empty(1000)) is False  # 4 kB: no aligned 2 MiB inside
    assert memory.advise_huge(torch.empty(0)) is False


@pytest.mark.parametrize("shape", [(300, 64), (3, 100, 64)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gemm_into_a_fresh_buffer_equals_linear_exactly(shape: tuple[int, ...], with_bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(*shape, generator=g), torch.randn(48, 64, generator=g)
    b = torch.randn(48, generator=g) if with_bias else None
    with torch.inference_mode(), kernels.onednn_enabled(False):
        assert torch.equal(kernels.inference_linear(x, w, b), F.linear(x, w, b))


def test_inference_gives_the_same_bits_with_and_without_huge_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    cfg = CLIPConfig(embed_dim=32, vision=VisionConfig(image_size=64, layers=2, width=64, patch_size=8),
                     text=TextConfig(context_length=16, vocab_size=100, width=64, heads=2, layers=2))
    model = CLIP(cfg).eval()
    pixels = torch.randn(12, 3, 64, 64)
    ids = torch.randint(1, 98, (40, 16))
    ids[:, -1] = cfg.text.eot_id
    advised: list[int] = []

    def counting(t: torch.Tensor) -> bool:
        advised.append(t.numel())
        return real(t)

    real = memory.advise_huge
    monkeypatch.setattr(memory, "advise_huge", counting)
    monkeypatch.setattr(memory, "MIN_BYTES", 0)  # advise every buffer of this small model
    with torch.inference_mode(), kernels.onednn_enabled(False):  # torch's GEMM path (oneDNN allocates its own)
        monkeypatch.setattr(memory, "ENABLED", True)
        on = model.encode_image(pixels), model.encode_text(ids)
        assert advised, "no inference buffer went through memory.empty"
        monkeypatch.setattr(memory, "ENABLED", False)
        n = len(advised)
        off = model.encode_image(pixels), model.encode_text(ids)
        assert len(advised) == n
    assert all(torch.equal(a, b) for a, b in zip(on, off))
