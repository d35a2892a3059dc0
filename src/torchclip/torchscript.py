"""Read the tensors of a TorchScript archive without executing anything in it.

OpenAI's released ``.pt`` files are TorchScript archives: zip files holding ``<prefix>/data.pkl`` (a pickle
of the module tree), ``<prefix>/data/<key>`` (raw tensor storages) and ``<prefix>/code/`` (TorchScript
source). ``torch.jit.load`` compiles and runs that code and ``pickle`` would import whatever the pickle
names, so neither is safe on an untrusted file. Here the pickle is replayed by an unpickler that knows a
closed set of globals: tensor rebuilding, storage types, ``OrderedDict``, and TorchScript class names,
which become inert attribute bags. Anything else is refused. The code directory is never read.

Every size comes from the archive, never from what the pickle claims: a storage is the bytes its zip
member holds, and a tensor must lie inside its storage without overlapping itself.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from .formats import CheckpointError

__all__ = ["is_torchscript_archive", "read_torchscript", "read_torchscript_tensors", "archive_prefix",
           "UnsafeArchiveError", "activation_of_archive"]

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

# A module tree is a few levels deep and holds a few thousand objects; far more is a hostile file.
_MAX_NODES = 1_000_000


class UnsafeArchiveError(CheckpointError, pickle.UnpicklingError):
    """The archive's pickle names something outside the closed set this reader accepts."""


class _ScriptObject:
    """Stand-in for a TorchScript class instance: keeps the attribute state, runs no code."""

    _qualname = "?"

    def __setstate__(self, state: Any) -> None:
        self.state = state


def archive_prefix(names: list[str]) -> str | None:
    """``<prefix>/`` of a TorchScript layout (``<prefix>/data.pkl`` beside ``<prefix>/code/``), else None.

    One pass over the names: the archive's member list can be long.
    """
    pickles = set()
    code = set()
    for name in names:
        head, sep, rest = name.partition("/")
        if not sep:
            continue
        if rest == "data.pkl":
            pickles.add(head)
        elif rest.startswith("code/"):
            code.add(head)
    both = sorted(pickles & code)
    return both[0] + "/" if both else None


def is_torchscript_archive(zf: zipfile.ZipFile) -> bool:
    """True for a zip whose top folder has both ``data.pkl`` and a ``code/`` tree (TorchScript layout)."""
    return archive_prefix(zf.namelist()) is not None


def _checked_view(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, where: str) -> torch.Tensor:
    """``storage[offset:]`` viewed as ``size``/``stride``, refused unless it is a dense view inside the storage."""
    if not (isinstance(offset, int) and all(isinstance(v, int) for v in (*size, *stride))):
        raise CheckpointError(f"{where}: a tensor has a non-integer size, stride or offset")
    if len(size) != len(stride) or offset < 0 or any(v < 0 for v in (*size, *stride)):
        raise CheckpointError(f"{where}: a tensor has a negative or mismatched size/stride {size}/{stride}")
    numel = 1
    for v in size:
        numel *= v
    if numel == 0:
        return storage.new_empty(size)
    extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if extent > storage.numel() or numel > storage.numel() - offset:
        raise CheckpointError(
            f"{where}: a tensor of shape {list(size)} (stride {list(stride)}) claims more elements than its "
            f"storage holds ({storage.numel()})"
        )
    # Dense: sorted by stride, each dimension's stride covers the ones inside it, so no element repeats.
    span = 1
    for n, s in sorted(((n, s) for n, s in zip(size, stride) if n > 1), key=lambda p: p[1]):
        if s < span:
            raise CheckpointError(f"{where}: a tensor of shape {list(size)} overlaps itself (stride {list(stride)})")
        span = s * n
    return torch.as_strided(storage, size, stride, offset).clone()


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(io.BytesIO(data))
        self._zf = zf
        self._prefix = prefix
        self._where = str(path)
        self._storages: dict[str, torch.Tensor] = {}
        self._classes: dict[str, type] = {}
        self.class_names: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            qual = f"{module}.{name}"
            self.class_names.add(qual)
            if qual not in self._classes:
                self._classes[qual] = type(name, (_ScriptObject,), {"_qualname": qual})
            return self._classes[qual]
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            where = self._where

            def rebuild(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
                return _checked_view(storage, offset, tuple(size), tuple(stride), where)

            return rebuild
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise UnsafeArchiveError(
            f"{self._where}: the archive's pickle asks for {module}.{name}, which a weights-only reader "
            "does not execute; convert the file with a trusted tool first"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeArchiveError(f"{self._where}: unexpected persistent id {pid!r:.100}")
        _, dtype, key, _location, numel = pid[:5]
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str) or not isinstance(numel, int):
            raise UnsafeArchiveError(f"{self._where}: storage {key!r:.40} has an unknown type or size")
        if key not in self._storages:
            member = f"{self._prefix}data/{key}"
            try:
                raw = self._zf.read(member)  # sizes were bounded by the archive check before this
            except KeyError as e:
                raise CheckpointError(f"{self._where}: archive lacks storage member {member!r} (truncated?)") from e
            itemsize = torch.empty((), dtype=dtype).element_size()
            if numel < 0 or len(raw) < numel * itemsize:
                raise CheckpointError(
                    f"{self._where}: storage {member!r} holds {len(raw)} bytes, the pickle claims {numel * itemsize}"
                )
            self._storages[key] = torch.frombuffer(bytearray(raw[: numel * itemsize]), dtype=dtype)
        return self._storages[key]


def _collect(root: Any, where: str) -> dict[str, Any]:
    """Flat ``{dotted.name: value}`` of the tensors and numbers in the module tree, each object once.

    Iterative, and every container is visited once: shared or self-containing objects (a hostile pickle)
    cannot make the walk deep or exponential.
    """
    out: dict[str, Any] = {}
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    visited = 0
    while stack:
        prefix, obj = stack.pop()
        visited += 1
        if visited > _MAX_NODES:
            raise CheckpointError(f"{where}: the archive's module tree holds more than {_MAX_NODES} objects")
        if isinstance(obj, torch.Tensor):
            if prefix:
                out[prefix.rstrip(".")] = obj
            continue
        if isinstance(obj, (int, float)) and not isinstance(obj, bool):
            if prefix:
                out[prefix.rstrip(".")] = obj
            continue
        if isinstance(obj, (_ScriptObject, dict)):
            if id(obj) in seen:
                continue
            seen.add(id(obj))
        if isinstance(obj, _ScriptObject):
            obj = getattr(obj, "state", None)
            if isinstance(obj, dict):
                seen.add(id(obj))
        if isinstance(obj, dict):
            items = [(k, v) for k, v in obj.items() if isinstance(k, str)]
            stack.extend((f"{prefix}{k}.", v) for k, v in reversed(items))
    return out


def activation_of_archive(class_names: set[str]) -> str | None:
    """The MLP activation the archive's module classes name, or None if they name neither or both."""
    quick = any(n.rsplit(".", 1)[-1] == "QuickGELU" for n in class_names)
    gelu = any(n.endswith("torch.nn.modules.activation.GELU") for n in class_names)
    if quick != gelu:
        return "quick_gelu" if quick else "gelu"
    return None


def read_torchscript_tensors(path: str | Path) -> dict[str, Any]:
    """Flat ``{dotted.name: tensor or number}`` of every tensor and number in the archive's module tree."""
    return read_torchscript(Path(path))[0]


def read_torchscript(path: Path) -> tuple[dict[str, Any], set[str]]:
    """``({dotted.name: tensor or number}, class names)`` of the archive's module tree.

    Numeric (non-tensor) attributes such as ``input_resolution`` come back as Python numbers so callers can
    drop them by name; booleans (``training``) are skipped. The archive is checked first (member count,
    compression ratios: ``readers.open_zip``).
    """
    from .readers import open_zip

    zf = open_zip(path)
    if zf is None:
        raise CheckpointError(f"{path}: not a zip archive, so not a TorchScript file")
    with zf:
        return _read(zf, path)


def _read(zf: zipfile.ZipFile, path: Path) -> tuple[dict[str, Any], set[str]]:
    prefix = archive_prefix(zf.namelist())
    if prefix is None:
        raise CheckpointError(f"{path}: not a TorchScript archive (no <name>/data.pkl with code/)")
    unpickler = _Unpickler(zf.read(prefix + "data.pkl"), zf, prefix, path)
    try:
        root = unpickler.load()
    except (CheckpointError, MemoryError):
        raise
    except RecursionError as e:
        raise CheckpointError(f"{path}: the archive's pickle nests too deeply") from e
    except Exception as e:  # a malformed pickle: any of pickle's many error types
        raise CheckpointError(f"{path}: the archive's pickle is corrupt ({type(e).__name__}: {e})") from e
    return _collect(root, str(path)), unpickler.class_names
