"""FAISS indexes over CLIP embeddings: exact for small collections, IVF or HNSW for large ones.

All indexes use inner product on unit vectors, i.e. cosine similarity, the quantity CLIP is trained on.
Approximate indexes trade recall for speed, so building one *measures* its recall against exact search
(recall@k of the true k nearest neighbours of sampled collection items, the item itself excluded) and,
given a target, picks the smallest ``nprobe``/``efSearch`` that reaches it. The chosen setting and the
measured recall are stored with the index, so ``search`` and ``serve`` use what was measured.

An index folder holds ``index.faiss``, ``records.jsonl`` (row -> id and locator, as ``embed`` wrote them)
and ``index.json`` (kind, search parameter, recall, the model that made the vectors, the collection root
and optional zero-shot labels).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..jsonfile import JSONFileError, read_json_object

__all__ = [
    "AUTO_FLAT_MAX",
    "ClipIndex",
    "build_faiss_index",
    "choose_kind",
    "exact_neighbours",
    "measure_recall",
    "set_search_param",
    "tune_search_param",
    "import_faiss",
]

# Exact search up to this many vectors: at 512 dimensions a flat scan of 100k vectors costs ~50 MFLOP per
# query (milliseconds), and exact results need no tuning and no training.
AUTO_FLAT_MAX = 100_000
_IVF_PROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
_HNSW_EFS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)


def import_faiss() -> Any:
    """``faiss`` or a clear error: it is an optional dependency (``pip install faiss-cpu``)."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("torchclip search needs FAISS: pip install faiss-cpu") from exc
    return faiss


def _as_unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be [n, d], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)):
        raise ValueError("vectors hold NaN or inf")
    return x / np.maximum(norms, 1e-12)


def choose_kind(n: int) -> str:
    """``flat`` up to ``AUTO_FLAT_MAX`` vectors, ``ivf`` beyond (fast to build, tunable, memory = data)."""
    return "flat" if n <= AUTO_FLAT_MAX else "ivf"


def default_nlist(n: int) -> int:
    """IVF lists ~ sqrt(n): balances the coarse scan (nlist) against the list scan (nprobe * n / nlist)."""
    return int(min(65536, max(1, 2 ** round(math.log2(max(1.0, math.sqrt(n)))))))


HNSW_M_RANGE = (2, 512)  # FAISS aborts the process below 2; memory grows with 2 * M links per vector


def check_build_options(kind: str = "auto", *, nlist: int | None = None, hnsw_m: int = 32, ef_construction: int = 80,
                        target_recall: float = 0.95, k: int = 10) -> None:
    """Raise ValueError for build options that cannot work, before any vector is read (some would abort
    the process inside FAISS instead of raising)."""
    if kind not in ("auto", "flat", "ivf", "hnsw"):
        raise ValueError(f"index kind must be auto, flat, ivf or hnsw, got {kind!r}")
    lo, hi = HNSW_M_RANGE
    if not lo <= hnsw_m <= hi:
        raise ValueError(f"HNSW M (neighbours per node) must be in [{lo}, {hi}], got {hnsw_m}")
    if ef_construction < 1:
        raise ValueError(f"HNSW efConstruction must be >= 1, got {ef_construction}")
    if nlist is not None and nlist < 1:
        raise ValueError(f"IVF nlist must be >= 1, got {nlist}")
    if not 0 < target_recall <= 1:  # also refuses NaN
        raise ValueError(f"target recall must be in (0, 1], got {target_recall}")
    if k < 1:
        raise ValueError(f"recall k must be >= 1, got {k}")


def build_faiss_index(vectors: np.ndarray, kind: str = "auto", *, nlist: int | None = None, hnsw_m: int = 32,
                      ef_construction: int = 80, seed: int = 0, add: bool = True) -> Any:
    """A FAISS index over unit ``vectors`` (normalized here if they are not): IVF is trained on them, and
    all of them are added unless ``add=False`` (the caller then adds them, in the order it chooses)."""
    check_build_options(kind, nlist=nlist, hnsw_m=hnsw_m, ef_construction=ef_construction)
    faiss = import_faiss()
    x = _as_unit(vectors)
    n, d = x.shape
    kind = choose_kind(n) if kind == "auto" else kind
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = nlist or default_nlist(n)
        if n < nlist:
            raise ValueError(f"IVF with {nlist} lists needs at least as many vectors, got {n}")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means needs ~40 points per centroid; more only costs time.
        rng = np.random.default_rng(seed)
        sample = x if n <= 64 * nlist else x[np.sort(rng.choice(n, 64 * nlist, replace=False))]
        index.cp.seed = seed
        index.train(sample)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    else:
        raise ValueError(f"index kind must be auto, flat, ivf or hnsw, got {kind!r}")
    if add:
        index.add(x)
    return index


def kind_of(index: Any) -> str:
    faiss = import_faiss()
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    return "flat"


def set_search_param(index: Any, value: int | None) -> None:
    """``nprobe`` (IVF) or ``efSearch`` (HNSW); ignored for flat indexes."""
    if value is None:
        return
    kind = kind_of(index)
    if kind == "ivf":
        index.nprobe = int(value)
    elif kind == "hnsw":
        index.hnsw.efSearch = int(value)


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row ids of the exact top-k by inner product: ``[q, k]`` (FAISS's BLAS flat scan)."""
    faiss = import_faiss()
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def _recall(found: np.ndarray, truth: np.ndarray, self_rows: np.ndarray | None, k: int) -> float:
    hits = total = 0
    for i in range(len(truth)):
        own = -1 if self_rows is None else self_rows[i]
        t = [r for r in truth[i] if r >= 0 and r != own][:k]
        f = {r for r in found[i] if r >= 0 and r != own}
        hits += sum(r in f for r in t)
        total += len(t)
    return hits / total if total else 1.0


def measure_recall(index: Any, vectors: np.ndarray, *, k: int = 10, n_queries: int = 1000,
                   queries: np.ndarray | None = None, truth: np.ndarray | None = None, seed: int = 0) -> float:
    """recall@k of ``index`` against exact search over ``vectors`` (its own data).

    Without ``queries``, ``n_queries`` collection items are the queries and each one's own row is left out
    of both result lists (an item trivially finds itself, which would inflate the figure).
    """
    x = _as_unit(vectors)
    self_rows = None
    if queries is None:
        rng = np.random.default_rng(seed)
        self_rows = np.sort(rng.choice(len(x), min(n_queries, len(x)), replace=False))
        queries = x[self_rows]
        extra = 1
    else:
        queries, extra = _as_unit(queries), 0
    if truth is None:
        truth = exact_neighbours(x, queries, k + extra)
    found = index.search(queries, k + extra)[1]
    return _recall(found, truth, self_rows, k)


def tune_search_param(index: Any, vectors: np.ndarray, target: float = 0.95, *, k: int = 10,
                      n_queries: int = 1000, queries: np.ndarray | None = None,
                      seed: int = 0) -> tuple[int | None, float, list[tuple[int, float]]]:
    """Smallest ``nprobe``/``efSearch`` whose measured recall@k reaches ``target``.

    The queries are ``n_queries`` collection items (each one's own row excluded), or ``queries`` when
    given. Pass real queries when they differ from the collection: text embeddings sit in another region
    of the space than image embeddings (the "modality gap"), and the recall of text -> image search can be
    well below the image -> image figure at the same setting.

    Returns ``(value, recall, [(value, recall), ...tried])``; value None for flat indexes (recall 1). If no
    setting reaches the target the largest tried is kept and its recall reported.
    """
    kind = kind_of(index)
    if kind == "flat":
        return None, 1.0, []
    x = _as_unit(vectors)
    if queries is None:
        rng = np.random.default_rng(seed)
        rows: np.ndarray | None = np.sort(rng.choice(len(x), min(n_queries, len(x)), replace=False))
        q, extra = x[rows], 1
    else:
        rows, q, extra = None, _as_unit(queries)[:n_queries], 0
    truth = exact_neighbours(x, q, k + extra)
    candidates = [v for v in _IVF_PROBES if v <= index.nlist] if kind == "ivf" else [v for v in _HNSW_EFS if v >= k]
    tried: list[tuple[int, float]] = []
    for value in candidates:
        set_search_param(index, value)
        found = index.search(q, k + extra)[1]
        r = _recall(found, truth, rows, k)
        tried.append((value, r))
        if r >= target:
            return value, r, tried
    return tried[-1][0], tried[-1][1], tried


@dataclass
class ClipIndex:
    """A FAISS index plus the records and metadata that make its rows meaningful."""

    index: Any
    records: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    # index row -> row of the vectors given to ``build`` (ANN builds permute them); None after ``load``.
    input_rows: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def kind(self) -> str:
        return kind_of(self.index)

    @classmethod
    def build(cls, vectors: np.ndarray, records: list[dict[str, Any]], meta: dict[str, Any] | None = None, *,
              kind: str = "auto", nlist: int | None = None, hnsw_m: int = 32, ef_construction: int = 80,
              target_recall: float = 0.95, k: int = 10, tune_queries: np.ndarray | None = None,
              seed: int = 0) -> ClipIndex:
        """Build, and for IVF/HNSW tune the search parameter to ``target_recall`` (recall@k).

        Tuning queries must be *held out*: an indexed item used as a query leads the search straight to
        itself and its graph neighbours (HNSW), which overstates recall for new queries. So, unless
        ``tune_queries`` are given, a random sample of the collection is added to the index *last*: the
        parameter is tuned with those items as queries against the rest, and then they are added. The
        index rows are therefore a permutation of the input rows; ``records`` are permuted with them.
        """
        check_build_options(kind, nlist=nlist, hnsw_m=hnsw_m, ef_construction=ef_construction,
                            target_recall=target_recall, k=k)
        n = len(vectors)
        if n != len(records):
            raise ValueError(f"{n} vectors but {len(records)} records")
        if n == 0:
            raise ValueError("no vectors to index")
        t0 = time.perf_counter()
        x = _as_unit(vectors)
        kind = choose_kind(n) if kind == "auto" else kind
        index = build_faiss_index(x, kind, nlist=nlist, hnsw_m=hnsw_m, ef_construction=ef_construction,
                                  seed=seed, add=False)
        order = np.arange(n)
        if kind == "flat":
            index.add(x)
            value, recall, tried = None, 1.0, []
        elif tune_queries is not None:
            index.add(x)
            value, recall, tried = tune_search_param(index, x, target_recall, k=k, queries=tune_queries)
        else:
            m = min(1000, max(1, n // 10))
            held = np.zeros(n, bool)
            held[np.random.default_rng(seed).choice(n, m, replace=False)] = True
            order = np.concatenate([np.flatnonzero(~held), np.flatnonzero(held)])
            index.add(x[~held])
            value, recall, tried = tune_search_param(index, x[~held], target_recall, k=k, queries=x[held])
            index.add(x[held])
        set_search_param(index, value)
        built = time.perf_counter() - t0
        info = {
            "kind": kind_of(index), "count": int(index.ntotal), "dim": int(index.d), "metric": "cosine",
            "search_param": value, "recall_at_k": recall, "recall_k": k, "target_recall": target_recall,
            "recall_tried": tried,
            "recall_queries": None if kind == "flat" else "given" if tune_queries is not None else "held-out items",
            "build_seconds": round(built, 3),
            "nlist": int(index.nlist) if kind_of(index) == "ivf" else None,
            "hnsw_m": hnsw_m if kind_of(index) == "hnsw" else None,
        }
        return cls(index, [records[i] for i in order], {**(meta or {}), "index": info}, input_rows=order)

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Cosine scores and rows, each ``[q, k']`` with ``k' = min(k, len)``; queries are normalized here."""
        k = max(1, min(int(k), len(self)))
        scores, rows = self.index.search(_as_unit(queries), k)
        return scores, rows

    def vector(self, row: int) -> np.ndarray:
        """The stored unit vector of a row (image->image search from an indexed item)."""
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} outside [0, {len(self)})")
        if self.kind == "ivf" and not getattr(self, "_direct_map", False):
            self.index.make_direct_map()  # O(n): once per loaded index, not per call
            self._direct_map = True
        return np.asarray(self.index.reconstruct(int(row)), dtype=np.float32)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        faiss = import_faiss()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / ".index.faiss.tmp"))
        os.replace(folder / ".index.faiss.tmp", folder / "index.faiss")
        tmp = folder / ".records.jsonl.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for r in self.records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, folder / "records.jsonl")
        (folder / ".index.json.tmp").write_text(json.dumps(self.meta, indent=2))
        os.replace(folder / ".index.json.tmp", folder / "index.json")
        self.path = folder
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> ClipIndex:
        """Read an index folder; a missing or damaged file is a ``FileNotFoundError``/``ValueError`` naming it."""
        faiss = import_faiss()
        folder = Path(folder)
        if not (folder / "index.json").is_file():
            raise FileNotFoundError(f"{folder} is not a torchclip index (no index.json)")
        rebuild = "rebuild it with torchclip index ... --overwrite"
        meta_path = folder / "index.json"
        try:
            meta = read_json_object(meta_path)
        except JSONFileError as e:
            raise ValueError(f"{meta_path} is damaged ({e}); {rebuild}") from None
        faiss_path = folder / "index.faiss"
        if not faiss_path.is_file():
            raise FileNotFoundError(f"{faiss_path} is missing; {rebuild}")
        try:
            index = faiss.read_index(str(faiss_path))
        except Exception as e:  # noqa: BLE001 - faiss raises RuntimeError with a C++ trace for any bad file
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{faiss_path} is damaged (FAISS cannot read it: {reason}); {rebuild}") from None
        records_path = folder / "records.jsonl"
        if not records_path.is_file():
            raise FileNotFoundError(f"{records_path} is missing; {rebuild}")
        try:
            lines = records_path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"{records_path} is damaged (not UTF-8: {e}); {rebuild}") from None
        records = []
        for n, line in enumerate(lines, 1):
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{records_path} is damaged (line {n}: {e}); {rebuild}") from None
        if len(records) != index.ntotal:
            raise ValueError(f"{folder}: index holds {index.ntotal} vectors but {len(records)} records; {rebuild}")
        info = meta.get("index") or {}
        value = info.get("search_param") if isinstance(info, dict) else "?"
        if value is not None and (type(value) is not int or value < 1):
            raise ValueError(f"{meta_path} is damaged (search parameter {value!r}); {rebuild}")
        set_search_param(index, value)
        return cls(index, records, meta, folder)
