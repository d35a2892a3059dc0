"""Checkpoints of a training run: written atomically, complete enough to resume bit-for-bit.

A checkpoint is one ``torch.save`` file ``ckpt-<step>.pt`` holding model, optimizer, scheduler, grad scaler,
data position (per-stream cursors), skip counters and every RNG state. It is written to a temporary file
in the same folder, fsynced, then renamed over its final name (``os.replace`` is atomic on POSIX), and the
folder is fsynced: a reader -- or a run killed with SIGKILL at any instant -- sees either no file or a
complete one, never half of one. Only plain containers and tensors are stored, so the file loads with
``torch.load(weights_only=True)`` and ``torchclip.load()`` / ``load_model`` read its weights directly (the
``model`` and ``torchclip_config`` keys).
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "list_checkpoints", "latest_checkpoint", "rng_state",
           "set_rng_state", "clean_temp_files"]

_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(folder: str | os.PathLike[str], step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as ``folder/ckpt-<step>.pt`` atomically, then delete all but the newest ``keep``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"ckpt-{step:08d}.pt"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(folder)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if keep > 0:
        for old in list_checkpoints(folder)[:-keep]:
            old.unlink(missing_ok=True)
    return final


def list_checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (temporary files are never listed)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def clean_temp_files(folder: str | os.PathLike[str]) -> int:
    """Remove temporaries a killed run left behind; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.iterdir() if p.name.startswith(".ckpt-") and p.name.endswith(".tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint with the weights-only unpickler (no code from the file is ever run)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states, as weights-only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": _py_state_to_list(random.getstate()),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_py_state_from_list(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_list(s: tuple) -> list[Any]:
    version, internal, gauss = s
    return [version, list(internal), gauss]


def _py_state_from_list(s: list[Any]) -> tuple:
    version, internal, gauss = s
    return (version, tuple(internal), gauss)
