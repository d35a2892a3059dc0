"""The tests that need the peers themselves (openai/CLIP's ``clip``, OpenCLIP's ``open_clip``), run in their venv.

The peers live in their own venv (``make peers`` builds ``.bench-venv``, which the benchmarks use too) and
this test runs the peer suites there; where PyPI's CUDA torchvision cannot load its ops next to the CPU
torch, through ``benchmarks/openclip_shim.py``, which declares them: ``tests/test_peers_compat.py`` (the peers'
README quick-starts, OpenCLIP folders both ways, preprocessing modes) and ``tests/test_zoo.py``'s
``test_open_clip_*`` group (the registry against open_clip, state-dict parity), and
``tests/test_clip_benchmark_interop.py`` (the real CLIP_benchmark command line on a torchclip checkpoint).

``$TORCHCLIP_PEERS_PYTHON`` names the interpreter (default ``.bench-venv/bin/python``). Without one the test
skips with a reason; CI sets ``TORCHCLIP_REQUIRE_PEERS=1``, which makes that a failure.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITES = [("tests/test_peers_compat.py", None), ("tests/test_zoo.py", "open_clip"),
          ("tests/test_clip_benchmark_interop.py", None)]


SHIM = REPO / "benchmarks" / "openclip_shim.py"


def _peers_python() -> list[str]:
    """The peers' interpreter, with the torchvision shim in front where its plain import fails."""
    py = os.environ.get("TORCHCLIP_PEERS_PYTHON") or str(REPO / ".bench-venv" / "bin" / "python")
    problem = None
    if not Path(py).exists():
        problem = f"no peers' interpreter at {py} (make peers, or set TORCHCLIP_PEERS_PYTHON)"
    else:
        plain = subprocess.run([py, "-c", "import torchvision"], capture_output=True).returncode == 0
        launcher = [py] if plain else [py, str(SHIM)]  # the shim runs `-m MODULE` after declaring the ops
        shim = "" if plain else f"import runpy; runpy.run_path({str(SHIM)!r}, run_name='shim'); "
        probe = subprocess.run([py, "-c", shim + "import clip, open_clip"], capture_output=True, text=True)
        if probe.returncode != 0:
            problem = f"{py} cannot import clip and open_clip: {probe.stderr.strip().splitlines()[-1:]}"
    if problem:
        if os.environ.get("TORCHCLIP_REQUIRE_PEERS") == "1":
            pytest.fail(problem + "; TORCHCLIP_REQUIRE_PEERS=1 makes this a failure")
        pytest.skip(problem)
    return launcher


@pytest.mark.slow
@pytest.mark.parametrize("path,keyword", SUITES, ids=[p for p, _ in SUITES])
def test_peer_suite_in_the_peers_venv(path: str, keyword: str | None) -> None:
    if importlib.util.find_spec("open_clip") is not None and importlib.util.find_spec("clip") is not None:
        pytest.skip("the peers are importable here: their suites run directly in this session")
    launcher = _peers_python()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    cmd = [*launcher, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", path]
    if keyword:
        cmd += ["-k", keyword]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=1200)
    tail = (out.stdout + out.stderr)[-4000:]
    assert out.returncode == 0, tail
    summary = [line for line in tail.splitlines() if line.strip()][-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, tail
