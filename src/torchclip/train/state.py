"""Checkpoints of a training run: written atomically, complete enough to resume bit-for-bit.

A run folder holds one run (``run_contents`` says whether it holds one, ``clear_run`` removes one). A
checkpoint is one ``torch.save`` file ``ckpt-<step>.pt`` holding model, optimizer, scheduler, grad scaler,
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

__all__ = ["save_checkpoint", "load_checkpoint", "list_checkpoints", "latest_checkpoint", "checkpoint_step",
           "read_resume_state", "latest_intact_checkpoint", "run_contents", "clear_run", "RunFolderError",
           "RunWriteError", "rng_state", "set_rng_state", "clean_temp_files"]

_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")

# What a run writes into its folder: files, then folders.
RUN_FILES = ("config.json", "environment.json", "metrics.jsonl", "train.log", "model.safetensors", "tokenizer.txt.gz",
             "tokenizer.json", "tokenizer_config.json")
RUN_DIRS = ("checkpoints", "tensorboard")
RESUME_KEYS = ("step", "model", "optimizer", "scheduler", "scaler", "rng", "data", "skips", "nonfinite",
               "world_size")


class RunFolderError(ValueError):
    """The run folder cannot be used as asked: it holds another run, or nothing in it can be resumed."""


class RunWriteError(RuntimeError):
    """Writing to the run folder failed (full disk, read-only folder); the message says what was kept."""


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
    """Write ``state`` as ``folder/ckpt-<step>.pt`` atomically, then delete all but the newest ``keep`` of
    the checkpoints up to ``step``. Later ones (another run's, or this run's before it resumed from an
    earlier checkpoint) are neither counted nor deleted: retention never removes what it did not write."""
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
        for old in [p for p in list_checkpoints(folder) if checkpoint_step(p) <= step][:-keep]:
            old.unlink(missing_ok=True)
    return final


def checkpoint_step(path: str | os.PathLike[str]) -> int:
    m = _NAME.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not named like a checkpoint (ckpt-<8 digits>.pt)")
    return int(m.group(1))


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


def read_resume_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint that training can continue from; ValueError naming the file and the reason otherwise."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint {path} is damaged (an empty file)")
    try:
        state = load_checkpoint(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.load raises many types (RuntimeError, EOFError, pickle errors)
        reason = " ".join(str(e).split()).split(". ")[0][:200] or "unreadable"  # torch's first sentence says it
        raise ValueError(f"checkpoint {path} is damaged ({type(e).__name__}: {reason})") from None
    missing = [k for k in RESUME_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"checkpoint {path} cannot resume training (it has no {', '.join(missing)})")
    return state


def latest_intact_checkpoint(folder: str | os.PathLike[str], *, set_aside: bool = True
                             ) -> tuple[Path, dict[str, Any], list[tuple[Path, str]]] | None:
    """The newest checkpoint that loads, its state, and the newer ones that did not (with the reason).

    With ``set_aside``, damaged checkpoints newer than the one returned are renamed ``*.damaged``: kept
    for inspection, out of the way of resume and retention. None when the folder holds no checkpoint;
    RunFolderError when it holds only damaged ones (which are then left as they are).
    """
    damaged: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(folder)):
        try:
            state = read_resume_state(path)
        except (ValueError, FileNotFoundError) as e:
            damaged.append((path, str(e)))
            continue
        if set_aside:
            for bad, _ in damaged:
                try:
                    bad.rename(bad.with_name(bad.name + ".damaged"))
                except OSError:  # another rank set it aside first, or the folder is read-only: keep going
                    pass
        return path, state, damaged
    if damaged:
        raise RunFolderError(f"no intact checkpoint in {folder} to resume from: "
                             + "; ".join(reason for _, reason in damaged)
                             + ". Start the run again with --overwrite, or resume from a copy with --resume FILE")
    return None


def run_contents(folder: str | os.PathLike[str]) -> list[str]:
    """What of a run ``folder`` holds (names relative to it, checkpoints listed), empty for a fresh folder."""
    folder = Path(folder)
    found = [name for name in RUN_FILES if (folder / name).exists()]
    found += [f"checkpoints/{p.name}" for p in list_checkpoints(folder / "checkpoints")]
    if (folder / "tensorboard").is_dir() and any((folder / "tensorboard").iterdir()):
        found.append("tensorboard/")
    return found


def clear_run(folder: str | os.PathLike[str]) -> None:
    """Remove what a run wrote into ``folder`` (and nothing else that may be there)."""
    import shutil

    folder = Path(folder)
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)


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
