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

from ..jsonfile import JSONFileError, read_json_object

__all__ = ["EmbeddingWriter", "Embeddings", "load_embeddings", "ResumeError", "STATE_VERSION", "RANKS_DIR",
           "ranks_dir", "rank_dir", "merge_ranks"]

STATE_VERSION = 1
RANKS_DIR = ".ranks"  # per-rank outputs of a distributed run, inside the output folder
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
        self._last_order: list[int] | None = None
        self._last_commit = time.monotonic()
        self.state = self._open(overwrite)

    # ---- state -----------------------------------------------------------------------------------------

    def _finished(self) -> bool:
        return self.finished_at(self.out, self.fmt)

    @staticmethod
    def finished_at(out: str | os.PathLike[str], fmt: str) -> bool:
        """Whether ``out`` holds a finished output of format ``fmt``."""
        out = Path(out)
        return (out / "meta.json").exists() if fmt == "npy" else out.exists()

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

    @property
    def last_order(self) -> tuple[int, int] | None:
        """``order`` of the last committed item (where a tar source resumes without rereading shards)."""
        order = self.state.get("last_order")
        return (int(order[0]), int(order[1])) if order is not None else None

    def add(self, vectors: np.ndarray, records: list[dict[str, Any]], errors: list[dict[str, Any]],
            consumed: int, last_id: str | None, last_order: tuple[int, int] | None = None) -> bool:
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
        if last_order is not None:
            self._last_order = list(last_order)
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
        state["last_order"] = self._last_order if self._last_order is not None else self.state.get("last_order")
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
            if (path / RANKS_DIR).exists():
                hint = (f" (an unfinished distributed run: {rank_progress(path / RANKS_DIR)}; rerun the same "
                        "embed command with the same number of processes to finish and merge it)")
            raise FileNotFoundError(f"{path} holds no finished embeddings (no meta.json){hint}")
        redo = "rerun torchclip embed with --overwrite"
        try:
            meta = read_json_object(meta_path)
        except JSONFileError as e:
            raise ValueError(f"{meta_path} is damaged ({e}); {redo}") from None
        try:
            vectors = np.load(path / "embeddings.npy", mmap_mode="r" if mmap else None)
        except (ValueError, EOFError, OSError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise ValueError(f"{path / 'embeddings.npy'} is damaged ({e}); {redo}") from None
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


# ---- distributed runs: one output per rank, merged into one store ----------------------------------------------


def ranks_dir(out: str | os.PathLike[str], fmt: str) -> Path:
    """Where the ranks of a distributed run write: ``<out>/.ranks`` (or ``<file>.safetensors.ranks``)."""
    out = Path(out)
    return out / RANKS_DIR if fmt == "npy" else out.with_name(out.name + RANKS_DIR)


def rank_dir(out: str | os.PathLike[str], fmt: str, rank: int, world_size: int) -> Path:
    return ranks_dir(out, fmt) / f"rank-{rank:05d}-of-{world_size:05d}"


def rank_progress(ranks: Path) -> str:
    """``'2 of 4 ranks finished'`` for the newest world size found under ``ranks``."""
    dirs = sorted(ranks.glob("rank-*-of-*"))
    if not dirs:
        return "no rank has started"
    world = int(dirs[-1].name.rsplit("-", 1)[1])
    done = sum((ranks / f"rank-{r:05d}-of-{world:05d}" / "meta.json").exists() for r in range(world))
    return f"{done} of {world} ranks finished"


def _rank_rows(folder: Path, rank: int) -> Iterator[tuple[list[int], int, int, dict[str, Any]]]:
    with open(folder / "ids.jsonl", encoding="utf-8") as f:
        for row, line in enumerate(f):
            rec = json.loads(line)
            yield rec.pop("_order"), rank, row, rec


def _lock(path: Path) -> bool:
    """Take the merge lock (a file created exclusively); a lock left by a dead process on this host is taken
    over."""
    import socket

    me = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int):
                try:
                    os.kill(holder["pid"], 0)
                except ProcessLookupError:
                    path.unlink(missing_ok=True)
                    continue
                except PermissionError:
                    pass
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return True
    return False


def merge_ranks(out: str | os.PathLike[str], *, world_size: int, fmt: str = "npy", dtype: str = "float32",
                ids_format: str = "jsonl", meta: dict[str, Any] | None = None) -> Path | None:
    """Merge the finished rank outputs of a distributed run into one store at ``out``, rows in the
    single-process order; the rank outputs are then removed. Returns None while a rank is unfinished or
    another process holds the merge."""
    import heapq

    ranks = ranks_dir(out, fmt)
    folders = [rank_dir(out, fmt, r, world_size) for r in range(world_size)]
    if not all((d / "meta.json").exists() for d in folders):
        return None
    lock = ranks / f"merge-{world_size:05d}.lock"
    if not _lock(lock):
        return None
    metas = [json.loads((d / "meta.json").read_text()) for d in folders]
    dim = int(metas[0]["dim"])
    errors: list[tuple[list[int], dict[str, Any]]] = []
    for d in folders:
        for line in (d / "errors.jsonl").read_text(encoding="utf-8").splitlines():
            if line:
                rec = json.loads(line)
                errors.append((rec.pop("_order"), rec))
    errors.sort(key=lambda e: e[0])
    vectors = [np.load(d / "embeddings.npy", mmap_mode="r") for d in folders]
    writer = EmbeddingWriter(out, dim=dim, fmt=fmt, dtype=dtype, ids_format=ids_format,
                             signature={"merge": world_size}, overwrite=True, commit_seconds=float("inf"))
    consumed = sum(int(m["count"]) + int(m["errors"]) for m in metas)
    chunk: list[tuple[int, int, dict[str, Any]]] = []

    def flush(errs: list[dict[str, Any]], n: int) -> None:
        vec = np.stack([vectors[r][row] for r, row, _ in chunk]) if chunk else np.zeros((0, dim), np.float32)
        writer.add(vec, [rec for _, _, rec in chunk], errs, n, None)
        chunk.clear()

    first = True
    for _, rank, row, rec in heapq.merge(*(_rank_rows(d, r) for r, d in enumerate(folders)), key=lambda t: t[0]):
        chunk.append((rank, row, rec))
        if len(chunk) >= 4096:
            flush([e for _, e in errors] if first else [], len(chunk) + (len(errors) if first else 0))
            first = False
    flush([e for _, e in errors] if first else [], len(chunk) + (len(errors) if first else 0))
    base = dict(meta or metas[0])
    source = dict(base.get("source") or {})
    source.pop("rank", None)
    source.pop("world_size", None)
    base.update(source=source, ranks=world_size)
    path = writer.finalize(base)
    assert writer.state["consumed"] == consumed
    shutil.rmtree(ranks, ignore_errors=True)
    return path
