"""Writing embeddings so that an interrupted run resumes, and reading them back.

While a run is going, rows are committed in *parts* inside a work folder (``<out>/.work`` or
``<file>.safetensors.work``): ``part-NNNNNN.npy`` + ``part-NNNNNN.jsonl`` (one record per row) +
``part-NNNNNN.errors.jsonl``, each written atomically, then ``state.json`` is replaced atomically with the
number of input items consumed so far. A crash at any moment leaves the state pointing at complete parts
only (a part written after the last state update is simply overwritten), so a rerun skips exactly the
consumed items and continues. The run's settings are stored as a *signature*: resuming with different
settings (another model, draft mode, dtype) would silently mix two kinds of vectors, so it is refused.

Finished outputs:

* ``npy``: a folder with ``embeddings.npy`` (``[N, D]``), ``ids.parquet`` or ``ids.jsonl`` (row ``i`` =
  vector ``i``: ``id`` plus where the item came from), ``errors.jsonl`` and ``meta.json``;
* ``safetensors``: one file with tensors ``embeddings`` and ``records`` (the JSONL bytes of the records,
  uint8) and the metadata under ``__metadata__["torchclip_embed"]``; errors go to ``<name>.errors.jsonl``.
  The file is streamed out with its header written first, so it never needs all vectors in memory.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EmbeddingWriter", "Embeddings", "load_embeddings", "ResumeError", "STATE_VERSION"]

STATE_VERSION = 1
_INT_FIELDS = ("offset", "size", "line", "row")
_DTYPES = {"float32": ("F32", np.float32), "float16": ("F16", np.float16)}


class ResumeError(RuntimeError):
    """The output location holds a finished result or an unfinished run with other settings."""


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


class EmbeddingWriter:
    """Accumulates rows, commits them in parts, and assembles the final output.

    ``out`` is a folder (``fmt="npy"``) or a ``.safetensors`` file. On construction an unfinished run with
    the same ``signature`` is picked up (``consumed`` tells the caller how many input items to skip); a
    finished output or a different signature raises ``ResumeError`` unless ``overwrite``.
    """

    def __init__(self, out: str | os.PathLike[str], *, dim: int, signature: dict[str, Any], fmt: str = "npy",
                 dtype: str = "float32", ids_format: str = "jsonl", part_size: int = 8192,
                 commit_seconds: float = 60.0, overwrite: bool = False) -> None:
        if fmt not in ("npy", "safetensors"):
            raise ValueError(f"format must be 'npy' or 'safetensors', got {fmt!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
        if ids_format not in ("jsonl", "parquet"):
            raise ValueError(f"ids format must be 'jsonl' or 'parquet', got {ids_format!r}")
        self.out = Path(out)
        if fmt == "safetensors" and self.out.suffix != ".safetensors":
            raise ValueError(f"safetensors output must end in .safetensors, got {self.out}")
        self.fmt, self.dim, self.dtype, self.ids_format = fmt, dim, dtype, ids_format
        self.part_size, self.commit_seconds = part_size, commit_seconds
        self.signature = json.loads(json.dumps(signature))  # normalised (tuples -> lists) for comparison
        self.work = self.out / ".work" if fmt == "npy" else self.out.with_name(self.out.name + ".work")
        self._vectors: list[np.ndarray] = []
        self._records: list[dict[str, Any]] = []
        self._errors: list[dict[str, Any]] = []
        self._pending_consumed = 0
        self._last_id: str | None = None
        self._last_commit = time.monotonic()
        self.state = self._open(overwrite)

    # ---- state -----------------------------------------------------------------------------------------

    def _finished(self) -> bool:
        return (self.out / "meta.json").exists() if self.fmt == "npy" else self.out.exists()

    def _open(self, overwrite: bool) -> dict[str, Any]:
        state_path = self.work / "state.json"
        if overwrite:
            shutil.rmtree(self.work, ignore_errors=True)
            if self.fmt == "npy":
                for name in ("embeddings.npy", "ids.jsonl", "ids.parquet", "errors.jsonl", "meta.json"):
                    (self.out / name).unlink(missing_ok=True)
            else:
                self.out.unlink(missing_ok=True)
                self._errors_path().unlink(missing_ok=True)
        elif self._finished():
            raise ResumeError(f"{self.out} already holds finished embeddings; pass overwrite to replace them")
        if state_path.exists():
            state = json.loads(state_path.read_text())
            if state.get("version") != STATE_VERSION or state.get("signature") != self.signature:
                raise ResumeError(
                    f"{self.work} holds an unfinished run with different settings:\n"
                    f"  stored: {json.dumps(state.get('signature'), sort_keys=True)}\n"
                    f"  now:    {json.dumps(self.signature, sort_keys=True)}\n"
                    "rerun with the same settings to resume, or pass overwrite to start again"
                )
            return state
        self.work.mkdir(parents=True, exist_ok=True)
        state = {"version": STATE_VERSION, "signature": self.signature, "consumed": 0, "rows": 0,
                 "errors": 0, "parts": [], "last_id": None}
        _atomic_bytes(state_path, json.dumps(state).encode())
        return state

    @property
    def consumed(self) -> int:
        """Input items consumed by committed parts: the number to skip when resuming."""
        return int(self.state["consumed"])

    @property
    def last_id(self) -> str | None:
        """Id of the last committed item: a resumed source must continue right after it."""
        return self.state.get("last_id")

    @property
    def rows(self) -> int:
        return int(self.state["rows"]) + sum(len(v) for v in self._vectors)

    # ---- writing ---------------------------------------------------------------------------------------

    def add(self, vectors: np.ndarray, records: list[dict[str, Any]], errors: list[dict[str, Any]],
            consumed: int, last_id: str | None) -> bool:
        """Buffer rows for ``consumed`` more input items (successes and failures). Returns True when this
        call committed a part."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(records):
            raise ValueError(f"expected [n, {self.dim}] vectors for {len(records)} records, got {vectors.shape}")
        self._vectors.append(vectors.astype(_DTYPES[self.dtype][1], copy=False))
        self._records.extend(records)
        self._errors.extend(errors)
        self._pending_consumed += consumed
        if last_id is not None:
            self._last_id = last_id
        buffered = sum(len(v) for v in self._vectors)
        due = time.monotonic() - self._last_commit >= self.commit_seconds
        if buffered >= self.part_size or self._pending_consumed >= 4 * self.part_size or due:
            self.commit()
            return True
        return False

    def commit(self) -> None:
        """Write the buffered rows as one part, then advance the state (the commit point)."""
        if not self._pending_consumed:
            return
        index = len(self.state["parts"])
        name = f"part-{index:06d}"
        vectors = np.concatenate(self._vectors) if self._vectors else np.zeros((0, self.dim), _DTYPES[self.dtype][1])
        _atomic_npy(self.work / f"{name}.npy", vectors)
        _atomic_bytes(self.work / f"{name}.jsonl", _jsonl(self._records))
        _atomic_bytes(self.work / f"{name}.errors.jsonl", _jsonl(self._errors))
        state = dict(self.state)
        state["parts"] = [*self.state["parts"], {"name": name, "rows": len(vectors), "errors": len(self._errors)}]
        state["consumed"] = self.consumed + self._pending_consumed
        state["rows"] = int(self.state["rows"]) + len(vectors)
        state["errors"] = int(self.state["errors"]) + len(self._errors)
        state["last_id"] = self._last_id if self._last_id is not None else self.state.get("last_id")
        _atomic_bytes(self.work / "state.json", json.dumps(state).encode())
        self.state = state
        self._vectors, self._records, self._errors, self._pending_consumed = [], [], [], 0
        self._last_commit = time.monotonic()

    def _errors_path(self) -> Path:
        return self.out / "errors.jsonl" if self.fmt == "npy" else self.out.with_name(self.out.stem + ".errors.jsonl")

    def _part_files(self, suffix: str) -> Iterator[Path]:
        for part in self.state["parts"]:
            yield self.work / f"{part['name']}{suffix}"

    def finalize(self, meta: dict[str, Any]) -> Path:
        """Commit what is buffered and assemble the final output; the work folder is then removed."""
        self.commit()
        n = int(self.state["rows"])
        meta = {**meta, "count": n, "dim": self.dim, "dtype": self.dtype, "errors": int(self.state["errors"]),
                "format": self.fmt}
        errors = self._errors_path()
        errors.parent.mkdir(parents=True, exist_ok=True)
        _atomic_bytes(errors, b"".join(p.read_bytes() for p in self._part_files(".errors.jsonl")))
        if self.fmt == "npy":
            self._finalize_npy(n, meta)
        else:
            self._finalize_safetensors(n, meta)
        shutil.rmtree(self.work, ignore_errors=True)
        return self.out

    def _finalize_npy(self, n: int, meta: dict[str, Any]) -> None:
        tmp = self.out / ".embeddings.npy.tmp"
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=_DTYPES[self.dtype][1], shape=(n, self.dim))
        row = 0
        for p in self._part_files(".npy"):
            part = np.load(p)
            arr[row : row + len(part)] = part
            row += len(part)
        arr.flush()
        del arr
        os.replace(tmp, self.out / "embeddings.npy")
        if self.ids_format == "parquet":
            self._write_parquet(self.out / "ids.parquet")
            meta["ids"] = "ids.parquet"
        else:
            _atomic_bytes(self.out / "ids.jsonl", b"".join(p.read_bytes() for p in self._part_files(".jsonl")))
            meta["ids"] = "ids.jsonl"
        _atomic_bytes(self.out / "meta.json", json.dumps(meta, indent=2).encode())

    def _write_parquet(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        keys: dict[str, None] = {}
        for p in self._part_files(".jsonl"):
            for line in p.read_text(encoding="utf-8").splitlines():
                keys.update(dict.fromkeys(json.loads(line)))
                break
        schema = pa.schema([(k, pa.int64() if k in _INT_FIELDS else pa.string()) for k in keys or {"id": None}])
        tmp = path.with_name(f".{path.name}.tmp")
        with pq.ParquetWriter(tmp, schema) as writer:
            for p in self._part_files(".jsonl"):
                rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
                if rows:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        os.replace(tmp, path)

    def _finalize_safetensors(self, n: int, meta: dict[str, Any]) -> None:
        code, np_dtype = _DTYPES[self.dtype]
        vec_bytes = n * self.dim * np.dtype(np_dtype).itemsize
        rec_bytes = sum(p.stat().st_size for p in self._part_files(".jsonl"))
        header: dict[str, Any] = {
            "__metadata__": {"torchclip_embed": json.dumps(meta)},
            "embeddings": {"dtype": code, "shape": [n, self.dim], "data_offsets": [0, vec_bytes]},
            "records": {"dtype": "U8", "shape": [rec_bytes], "data_offsets": [vec_bytes, vec_bytes + rec_bytes]},
        }
        head = json.dumps(header).encode()
        head += b" " * (-len(head) % 8)
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(head)))
            f.write(head)
            for p in self._part_files(".npy"):
                f.write(np.ascontiguousarray(np.load(p)).astype(np_dtype, copy=False).tobytes())
            for p in self._part_files(".jsonl"):
                f.write(p.read_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.out)


@dataclass
class Embeddings:
    """Vectors ``[N, D]``, one record per row (``id`` + locator), and the run's metadata."""

    vectors: np.ndarray
    records: list[dict[str, Any]]
    meta: dict[str, Any]

    @property
    def ids(self) -> list[str]:
        return [str(r["id"]) for r in self.records]


def _read_records_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        return [{k: v for k, v in r.items() if v is not None} for r in rows]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def load_embeddings(path: str | os.PathLike[str], *, mmap: bool = False) -> Embeddings:
    """Read what ``torchclip embed`` wrote: an output folder or a ``.safetensors`` file."""
    path = Path(path)
    if path.is_dir():
        meta_path = path / "meta.json"
        if not meta_path.exists():
            hint = " (an unfinished run: rerun the same embed command to resume it)" if (path / ".work").exists() else ""
            raise FileNotFoundError(f"{path} holds no finished embeddings (no meta.json){hint}")
        meta = json.loads(meta_path.read_text())
        vectors = np.load(path / "embeddings.npy", mmap_mode="r" if mmap else None)
        records = _read_records_file(path / meta.get("ids", "ids.jsonl"))
    else:
        from safetensors.numpy import safe_open

        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {}).get("torchclip_embed", "{}"))
            vectors = f.get_tensor("embeddings")
            raw = f.get_tensor("records").tobytes()
        records = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line]
    if len(records) != len(vectors):
        raise ValueError(f"{path}: {len(vectors)} vectors but {len(records)} records")
    return Embeddings(vectors=vectors, records=records, meta=meta)
