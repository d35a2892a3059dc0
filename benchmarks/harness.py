"""The shared timing harness of the encode benchmarks (bench_encode, bench_encode_fresh, bench_compile,
bench_inference_ab): implementations timed in interleaved rounds, FLOP counts, a matmul ceiling, the
peers' models and a description of the machine.

Interleaving (every implementation once per round, the order rotated) makes load that drifts on a shared
machine hit every implementation alike; "paired" ratios compare implementations within each round.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

PEER_NAMES = {"ViT-B/32": "ViT-B-32", "RN50": "RN50"}  # torchclip name -> OpenCLIP name


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: CPU, cores, torch and its threads, Python, load average."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (f"{cpu_name()}, {cores()} cores ({platform.machine()}), torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}, load average "
            f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}")


def command(script: str) -> str:
    """How this run was started, for the markdown it prints."""
    return f"    python benchmarks/{script}" + "".join(f" {a}" for a in sys.argv[1:])


def import_peers() -> tuple[types.ModuleType, types.ModuleType]:
    """Import open_clip and transformers, working around PyPI's torchvision on a CPU-only torch.

    Both import torchvision, whose PyPI wheel is a CUDA build: under the CPU torch wheel its ``_C``
    extension cannot load and ``torchvision._meta_registrations`` raises while registering fake kernels
    for ops that do not exist. Neither peer's CLIP calls a torchvision op, so when (and only when) that
    import fails, torchvision is imported again without those registrations.
    """
    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # noqa: F401
    import open_clip
    import transformers

    transformers.logging.set_verbosity_error()
    return open_clip, transformers


def peer_image_encoders(name: str, peers: list[str]) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """``encode_image`` of each peer's model for ``name`` (random weights, eval mode); HF has no ResNet."""
    if not peers or name not in PEER_NAMES:
        return {}
    open_clip, transformers = import_peers()
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    if "open_clip" in peers:
        out["open_clip"] = open_clip.create_model(PEER_NAMES[name], pretrained=None).eval().encode_image
    if "hf" in peers and name == "ViT-B/32":
        hf = transformers.CLIPModel(transformers.CLIPConfig()).eval()  # its defaults are ViT-B/32's shapes
        out["HF"] = lambda x, hf=hf: hf.get_image_features(pixel_values=x).pooler_output
    return out


def peer_text_encoders(name: str, peers: list[str]) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    if not peers or name not in PEER_NAMES:
        return {}
    open_clip, transformers = import_peers()
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    if "open_clip" in peers:
        out["open_clip"] = open_clip.create_model(PEER_NAMES[name], pretrained=None).eval().encode_text
    if "hf" in peers and name == "ViT-B/32":
        hf = transformers.CLIPModel(transformers.CLIPConfig()).eval()
        out["HF"] = lambda t, hf=hf: hf.get_text_features(input_ids=t).pooler_output
    return out


def count_flops(fn: Callable[[], object], plain: bool = False) -> int:
    """FLOPs of ``fn()`` (2 per multiply-add, attention included through the math SDPA backend);
    ``plain``: with autograd on, so torchclip runs its reference path and peers their full maths."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    mode = torch.enable_grad() if plain else torch.inference_mode()
    with mode, sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def mm_ceiling(n: int) -> Callable[[], object]:
    """Two fp32 ``n x n`` operands and ``torch.mm`` on them: the machine's matmul speed, now."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    return lambda: torch.mm(a, b, out=out)


def minor_faults() -> int:
    """This process's minor page faults so far (first touches of freshly mapped memory); 0 without resource."""
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@dataclass
class Case:
    """One workload (``name`` at ``batch`` items per call) and the implementations timed on it."""

    name: str
    batch: int
    unit: str  # "img/s" | "text/s" | "GFLOP/s"
    impls: dict[str, Callable[[], object]]
    flops: dict[str, int] = field(default_factory=dict)  # per call, per implementation
    inner: dict[str, int] = field(default_factory=dict)  # calls per sample
    samples: dict[str, list[float]] = field(default_factory=dict)  # seconds per call, one per round
    faults: dict[str, list[float]] = field(default_factory=dict)  # minor page faults per call

    def seconds(self, impl: str, how: str = "median") -> float:
        s = self.samples[impl]
        return statistics.median(s) if how == "median" else min(s)

    def rate(self, impl: str, how: str = "median") -> float:
        work = self.flops[impl] / 1e9 if self.unit == "GFLOP/s" else self.batch
        return work / self.seconds(impl, how)

    def gflops(self, impl: str, how: str = "median") -> float:
        return self.flops[impl] / 1e9 / self.seconds(impl, how)

    def paired(self, impl: str, others: list[str]) -> list[float]:
        """Per round: ``impl``'s speed over the fastest of ``others`` in that round, sorted."""
        rounds = range(len(self.samples[impl]))
        return sorted(min(self.samples[o][r] for o in others) / self.samples[impl][r] for r in rounds)


def calibrate(case: Case, min_sample_s: float, warmup: int) -> None:
    """Warm every implementation up and choose how many calls make one sample of at least ``min_sample_s``."""
    for impl, fn in case.impls.items():
        for _ in range(warmup):
            fn()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        case.inner[impl] = max(1, math.ceil(min_sample_s / max(dt, 1e-9)))
        case.samples[impl], case.faults[impl] = [], []


def run_round(cases: list[Case], r: int) -> None:
    """One sample of every implementation of every case, the order rotated by round."""
    for case in cases:
        names = list(case.impls)
        k = r % len(names)
        for impl in names[k:] + names[:k]:
            fn, n = case.impls[impl], case.inner[impl]
            f0, t0 = minor_faults(), time.perf_counter()
            for _ in range(n):
                fn()
            case.samples[impl].append((time.perf_counter() - t0) / n)
            case.faults[impl].append((minor_faults() - f0) / n)


def run(cases: list[Case], rounds: int, warmup: int = 1, min_sample_s: float = 0.5) -> float:
    """Calibrate, then time ``rounds`` interleaved rounds; returns the seconds it took."""
    t_start = time.perf_counter()
    for case in cases:
        calibrate(case, min_sample_s, warmup)
    for r in range(rounds):
        run_round(cases, r)
        print(f"round {r + 1}/{rounds} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
    return time.perf_counter() - t_start


def ratio_cell(values: list[float]) -> str:
    """A sorted list of per-round ratios as 'median× (min–max)'."""
    return f"{statistics.median(values):.2f}× ({values[0]:.2f}–{values[-1]:.2f})"
