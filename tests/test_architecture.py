"""The rooms' one-way doors (ARCHITECTURE.md): reference <- fast <- model <- library <- apps, and a base
install without any extra loads a checkpoint and encodes."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
APPS = {"train", "evaluation", "embed", "search", "serve", "export", "export_cli", "demo", "cli", "__main__"}


def import_edges(root: Path = SRC / "torchclip") -> set[tuple[str, str]]:
    """(importer, imported) for every torchclip import in the package, lazy ones inside functions included."""
    edges = set()
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        module = ".".join(parts if parts[-1] != "__init__" else parts[:-1])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                targets = [base] if node.module else [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges.update((module, t) for t in targets if t.startswith("torchclip"))
    return edges


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "library"  # the package's __init__
    if parts[1] in ("config", "reference", "fast", "model"):
        return parts[1]
    return "app" if parts[1] in APPS else "library"


# Which rooms each room may import from.
ALLOWED = {
    "config": {"config"},
    "reference": {"config", "reference"},
    "fast": {"config", "reference", "fast"},
    "model": {"config", "reference", "fast", "model"},
    "library": {"config", "reference", "model", "library"},
    "app": {"config", "reference", "model", "library", "app"},
}


def violations(edges: set[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, b in edges if room(b) not in ALLOWED[room(a)])


def test_imports_point_one_way() -> None:
    edges = import_edges()
    assert len(edges) > 50  # the walk found the package's imports
    assert violations(edges) == []
    assert {a for a, b in edges if room(b) == "fast" and room(a) != "fast"} == {"torchclip.model"}  # one dispatch point
    # Negative controls: the rule catches a reference module reaching for the fast path, and the library
    # reaching for an app or around the dispatch point.
    assert violations({("torchclip.reference.layers", "torchclip.fast.kernels")})
    assert violations({("torchclip.checkpoints", "torchclip.train.loop")})
    assert violations({("torchclip.api", "torchclip.fast")})


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})


STANDALONE = f"""
    import sys, types
    pkg = types.ModuleType("torchclip")  # the package without its __init__, which imports everything
    pkg.__path__ = [{str(SRC / "torchclip")!r}]
    sys.modules["torchclip"] = pkg
    import torch
    import {{module}}
    loaded = sorted(m for m in sys.modules if m.startswith("torchclip."))
    print(loaded)
    assert not any(m.startswith("torchclip.fast") for m in loaded), loaded
"""


def test_reference_model_runs_without_the_fast_path() -> None:
    res = run_python(STANDALONE.format(module="torchclip.reference") + """
    from torchclip.config import get_preset
    from torchclip.reference import CLIP
    model = CLIP(get_preset("cpu-vit-32")).eval()
    ids = torch.full((2, 77), 7)
    ids[:, 5] = model.config.text.eot_id
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 32, 32), ids)
    assert out.logits_per_image.shape == (2, 2)
    """)
    assert res.returncode == 0, res.stderr[-3000:]
    # Negative control: the same check fails for the module that does import the fast path.
    res = run_python(STANDALONE.format(module="torchclip.model"))
    assert res.returncode != 0 and "torchclip.fast" in res.stderr


BLOCK_EXTRAS = """
    import sys
    EXTRAS = ("matplotlib", "sklearn", "yaml", "tensorboard", "faiss", "pyarrow", "onnx", "onnxruntime",
              "onnxscript", "fsspec", "s3fs", "aiohttp", "transformers", "open_clip")
    for name in EXTRAS:
        sys.modules[name] = None  # as if not installed: importing it raises ModuleNotFoundError
"""


def test_base_install_loads_and_encodes(tmp_path: Path) -> None:
    """Without any extra (their imports blocked), ``import torchclip`` loads a checkpoint and encodes."""
    res = run_python(BLOCK_EXTRAS + f"""
    import torch, torchclip
    torchclip.save(torchclip.create_model("cpu-rn-64"), {str(tmp_path / "m.safetensors")!r})
    model, preprocess = torchclip.load({str(tmp_path / "m.safetensors")!r})
    from PIL import Image
    pixels = preprocess(Image.new("RGB", (80, 60), (200, 30, 30)))[None]
    ids = torch.full((1, 77), 5)
    ids[0, 3] = model.config.text.eot_id
    with torch.inference_mode():
        assert model(pixels, ids).logits_per_image.shape == (1, 1)
    print("extras imported:", sorted(m for m in sys.modules if m.split(".")[0] in EXTRAS and sys.modules[m]))
    """)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "extras imported: []" in res.stdout
    # Negative control: the blocker does block, e.g. the linear probe's scikit-learn.
    res = run_python(BLOCK_EXTRAS + """
    import numpy as np
    from torchclip.evaluation.probe import fit_logistic
    fit_logistic(np.zeros((4, 2)), np.array([0, 1, 0, 1]), 1.0)
    """)
    assert res.returncode != 0 and "ModuleNotFoundError" in res.stderr and "sklearn" in res.stderr


@pytest.mark.parametrize("module", ["torchclip.reference", "torchclip.fast"])
def test_packages_have_no_measurement_history_in_their_text(module: str) -> None:
    """Code says why; numbers and history belong to BENCHMARKS.md and git (no "session N", no timings)."""
    import re

    folder = SRC / Path(*module.split("."))
    pattern = re.compile(r"session \d|\d+(\.\d+)?x (faster|slower)|\d\.\d+x\b|results_encode|\d+ ?(MB|ms|us)\b", re.I)
    hits = [f"{p.name}:{i}: {line.strip()}" for p in folder.rglob("*.py")
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert hits == []
    assert pattern.search("ran 1.18x faster, session 8")  # negative control


def test_public_api_is_short_and_resolves() -> None:
    import torchclip

    exported = [name for names in torchclip._EXPORTS.values() for name in names]
    assert sorted(torchclip.__all__) == sorted(exported) and len(torchclip.__all__) <= 15
    assert {"available_models", "load", "tokenize"} <= set(torchclip.__all__)  # OpenAI's three
    for name in torchclip.__all__:
        assert getattr(torchclip, name) is not None


def _export_pairs(source: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(module, name) pairs of a lazy package's ``_EXPORTS`` table, and of its ``if TYPE_CHECKING:`` imports."""
    tree = ast.parse(source)
    table: set[tuple[str, str]] = set()
    static: set[tuple[str, str]] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            table = {(m, n) for m, names in ast.literal_eval(node.value).items() for n in names}
        elif isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            static = {(imp.module or "", a.name) for imp in node.body if isinstance(imp, ast.ImportFrom)
                      for a in imp.names}
    return table, static


def test_lazy_packages_export_what_static_tools_see() -> None:
    """A lazy package states its exports twice (the table ``attach`` resolves at run time, the imports type
    checkers read): both name the same names from the same submodules."""
    inits = [p for p in (SRC / "torchclip").rglob("__init__.py") if "attach(__name__, _EXPORTS)" in p.read_text()]
    assert len(inits) >= 6
    for path in inits:
        table, static = _export_pairs(path.read_text(encoding="utf-8"))
        assert table and table == static, (path, table ^ static)
    # Negative control: a name exported from the wrong submodule is caught.
    table, static = _export_pairs('_EXPORTS = {"api": ("load",)}\nif TYPE_CHECKING:\n    from .model import load\n')
    assert table != static
