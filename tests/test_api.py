"""End to end: a preset name downloads (from a local HTTP server), verifies and loads like OpenAI's."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import torchclip
from torchclip import pretrained
from torchclip.checkpoints import read_checkpoint
from torchclip.download import ChecksumError


def _publish(root: Path, src: Path, name: str) -> str:
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    (root / digest).mkdir()
    shutil.copy(src, root / digest / name)
    return digest


def _serve_openai_b32(monkeypatch: pytest.MonkeyPatch, base: str, digest: str) -> None:
    """Point OpenAI's ViT-B/32 entries (under both OpenCLIP names) at the local server."""
    for arch in ("ViT-B-32", "ViT-B-32-quickgelu"):
        entry = pretrained.get_pretrained(arch, "openai")
        monkeypatch.setitem(pretrained._REGISTRY, (arch, "openai"),
                            dataclasses.replace(entry, url=f"{base}/{digest}/ViT-B-32.pt", sha256=digest))


def test_load_by_name_downloads_verifies_and_matches_reference(shared, served, cache_dir, monkeypatch) -> None:
    root, base = served
    fixture = shared("fixtures/models/vit-tiny")
    digest = _publish(root, fixture / "openai_torchscript.pt", "ViT-B-32.pt")
    _serve_openai_b32(monkeypatch, base, digest)
    model, preprocess = torchclip.load("ViT-B/32")
    assert (cache_dir / "ViT-B-32.pt").exists()
    e = np.load(fixture / "expected.npz")
    with torch.no_grad():
        feats = model.encode_image(torch.from_numpy(e["pixel_values"]))
    assert (feats - torch.from_numpy(e["image_features"])).abs().max() <= 1e-4
    assert preprocess.image_size == 32
    # a second load is served from the cache: the server may be gone
    (root / digest / "ViT-B-32.pt").unlink()
    torchclip.load("ViT-B-32")


def test_corrupted_download_is_refused(shared, served, cache_dir, monkeypatch) -> None:
    root, base = served
    digest = _publish(root, shared("fixtures/models/vit-tiny/openai_torchscript.pt"), "ViT-B-32.pt")
    path = root / digest / "ViT-B-32.pt"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    _serve_openai_b32(monkeypatch, base, digest)
    with pytest.raises(ChecksumError):
        torchclip.load("ViT-B/32")
    assert not (cache_dir / "ViT-B-32.pt").exists()


def test_create_model_with_pretrained_checks_architecture(shared) -> None:
    path = shared("fixtures/models/vit-tiny/openai_state_dict.pt")
    cfg = read_checkpoint(path).config
    model = torchclip.create_model(cfg, pretrained=path)
    assert model.config == cfg
    with pytest.raises(ValueError, match="different architecture"):
        torchclip.create_model("cpu-vit-32", pretrained=path)
