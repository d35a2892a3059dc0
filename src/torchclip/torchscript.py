"""Read the tensors of a TorchScript archive without executing anything in it.

OpenAI's released ``.pt`` files are TorchScript archives: zip files holding ``<prefix>/data.pkl`` (a pickle
of the module tree), ``<prefix>/data/<key>`` (raw tensor storages) and ``<prefix>/code/`` (TorchScript
source). ``torch.jit.load`` compiles and runs that code and ``pickle`` would import whatever the pickle
names, so neither is safe on an untrusted file. Here the pickle is replayed by an unpickler that knows a
closed set of globals: tensor rebuilding, storage types, ``OrderedDict``, and TorchScript class names,
which become inert attribute bags. Anything else is refused. The code directory is never read.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

__all__ = ["is_torchscript_archive", "read_torchscript_tensors", "UnsafeArchiveError"]

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


class UnsafeArchiveError(pickle.UnpicklingError):
    """The archive's pickle names something outside the closed set this reader accepts."""


class _ScriptObject:
    """Stand-in for a TorchScript class instance: keeps the attribute state, runs no code."""

    _qualname = "?"

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _archive_prefix(zf: zipfile.ZipFile) -> str | None:
    for name in zf.namelist():
        if name.endswith("/data.pkl") and name.count("/") == 1:
            prefix = name[: -len("data.pkl")]
            if any(n.startswith(prefix + "code/") for n in zf.namelist()):
                return prefix
    return None


def is_torchscript_archive(path: str | Path) -> bool:
    """True for a zip whose top folder has both ``data.pkl`` and a ``code/`` tree (TorchScript layout)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return _archive_prefix(zf) is not None
    except (zipfile.BadZipFile, OSError):
        return False


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(io.BytesIO(data))
        self._zf = zf
        self._prefix = prefix
        self._path = path
        self._storages: dict[str, torch.Tensor] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            qual = f"{module}.{name}"
            if qual not in self._classes:
                self._classes[qual] = type(name, (_ScriptObject,), {"_qualname": qual})
            return self._classes[qual]
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise UnsafeArchiveError(
            f"{self._path}: the archive's pickle asks for {module}.{name}, which a weights-only reader "
            "does not execute; convert the file with a trusted tool first"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeArchiveError(f"{self._path}: unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid[:5]
        if not isinstance(dtype, torch.dtype):
            raise UnsafeArchiveError(f"{self._path}: storage {key} has unknown type {dtype!r}")
        if key not in self._storages:
            member = f"{self._prefix}data/{key}"
            try:
                raw = self._zf.read(member)
            except KeyError as e:
                raise ValueError(f"{self._path}: archive lacks storage member {member!r} (truncated?)") from e
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) < numel * itemsize:
                raise ValueError(
                    f"{self._path}: storage {member!r} holds {len(raw)} bytes, expected {numel * itemsize}"
                )
            self._storages[key] = torch.frombuffer(bytearray(raw[: numel * itemsize]), dtype=dtype)
        return self._storages[key]


def _collect(obj: Any, prefix: str, out: dict[str, Any], seen: set[int]) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj
        return
    if isinstance(obj, _ScriptObject):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        obj = getattr(obj, "state", None)
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str):
                _collect(v, f"{prefix}{k}.", out, seen)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and prefix:
        out[prefix.rstrip(".")] = obj


def read_torchscript_tensors(path: str | Path) -> dict[str, Any]:
    """Flat ``{dotted.name: tensor}`` of every tensor attribute in the archive's module tree.

    Numeric (non-tensor) attributes such as ``input_resolution`` come back as Python numbers so callers can
    drop them by name; booleans (``training``) are skipped.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            prefix = _archive_prefix(zf)
            if prefix is None:
                raise ValueError(f"{path}: not a TorchScript archive (no <name>/data.pkl with code/)")
            root = _Unpickler(zf.read(prefix + "data.pkl"), zf, prefix, path).load()
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: corrupt or truncated zip archive ({e})") from e
    out: dict[str, Any] = {}
    _collect(root, "", out, set())
    return out
