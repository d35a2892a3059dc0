"""CLIP's byte-level BPE tokenizer, id-for-id equal to OpenAI's (``clip.tokenize``).

A text model only works with the exact ids it was trained on, so this module reproduces OpenAI's pipeline
step by step (see ``clean_text`` and ``Tokenizer.encode_exact``) and adds a fast path that is proven equal to
it by the tests (the whole fixture set plus generated text):

* ftfy and HTML unescaping are skipped where they provably change nothing, e.g. printable ASCII without
  ``&``, where cleaning reduces to whitespace splitting and lower-casing (``torchclip.textclean``);
* pre-tokenization never crosses whitespace, so a cleaned text is the concatenation of its space-separated
  chunks and each chunk's ids are cached (``Tokenizer._chunk_ids``);
* large batches are spread over worker processes (``num_workers``).

Work is bounded on hostile text: a long piece merges with a heap (``_merge_heap``, n log n instead of the
reference's quadratic rescans, the same merges in the same order), a piece longer than ``_BPE_BLOCK`` bytes
is merged in blocks of that size (no word is that long; it caps memory per piece), and with ``truncate``
a row stops being encoded as soon as it holds a full context.

The vocabulary is data, not code: ``load_tokenizer()`` reads OpenAI's merges file from the torchclip cache or
downloads it with its SHA-256 checked, as checkpoints are. HF ``vocab.json`` + ``merges.txt`` load too, and
``torchclip.bpe_train`` trains new merges files in the same format.
"""

from __future__ import annotations

import gzip
import heapq
import json
import os
import sys
import weakref
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import regex
import torch

from torchclip.textclean import _NOT_INERT, clean_text
from torchclip.textclean import chunks as _chunks

__all__ = [
    "Tokenizer",
    "ContextLengthError",
    "tokenize",
    "load_tokenizer",
    "default_vocab_path",
    "check_compatible",
    "clean_text",
    "bytes_to_unicode",
    "merge_pair",
    "OPENAI_BPE_URL",
    "OPENAI_BPE_SHA256",
]

OPENAI_BPE_URL = "https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz"
OPENAI_BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
OPENAI_BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
# OpenAI's file holds 262,144 merges but CLIP uses only the first 49152 - 256 - 2 of them.
OPENAI_BPE_HEADER = '"bpe_simple_vocab_16e6.txt#version: 0.2'
OPENAI_N_MERGES = 48894
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
WORD_END = "</w>"

# OpenAI's pre-tokenization pattern (``regex`` engine for the Unicode classes, case-insensitive).
PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_CACHE_LIMIT = 1 << 17  # chunk-cache entries; the cache is emptied when full (bounded memory, no LRU cost)
_CACHE_MAX_CHARS = 64  # longer chunks and pieces are not cached, so one entry stays small
_SCAN_MAX = 16  # pieces up to this many bytes merge by rescanning (fastest on words), longer ones with a heap
_BPE_BLOCK = 1 << 16  # a longer piece is merged in blocks of this many bytes, only the last ending in </w>
# Below this many texts a batch runs in-process: starting worker processes costs more than it saves.
_PARALLEL_MIN = 8192


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's byte -> printable-character table; its order fixes ids 0-255.

    Bytes that are printable in Latin-1 map to themselves; the other 68 map to chr(256 + n) in byte order,
    so every byte sequence becomes a string of visible characters that BPE can merge. Ids follow the dict's
    order: the 188 kept bytes first (id 0 = '!'), then the 68 remapped ones (byte 173 -> id 255).
    """
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table  # insertion order (the kept bytes, then the 68 others) is the id order


class ContextLengthError(ValueError):
    """A text needs more tokens than the context holds (and ``truncate`` was not set)."""

    def __init__(self, index: int, n_tokens: int, context_length: int, text: str) -> None:
        self.index, self.n_tokens, self.context_length = index, n_tokens, context_length
        super().__init__(
            f"text {index} has {n_tokens} tokens (with start/end of text), more than context length "
            f"{context_length}; pass truncate=True to cut it: {text[:80]!r}"
        )



def merge_pair(symbols: list[str], a: str, b: str) -> list[str]:
    """``symbols`` with every non-overlapping occurrence of the pair (a, b), left to right, merged into one
    symbol: the step shared by encoding and by training a vocabulary (``bpe_train``)."""
    out: list[str] = []
    i, n = 0, len(symbols)
    while i < n:
        if i < n - 1 and symbols[i] == a and symbols[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out

class Tokenizer:
    """Byte-level BPE over OpenAI's id layout: 256 bytes, 256 bytes + ``</w>``, one id per merge, SOT, EOT.

    Build it with ``load_tokenizer()`` (OpenAI's vocabulary), ``Tokenizer.from_file`` (a merges file),
    ``Tokenizer.from_hf`` (``vocab.json`` + ``merges.txt``) or ``torchclip.bpe_train.train_bpe``.
    Calling it on text returns the ``[N, context_length]`` int64 id tensor, padded with ``pad_id`` (0).
    """

    pad_id: int = 0

    def __init__(
        self,
        merges: Sequence[tuple[str, str]],
        *,
        vocab: Sequence[str] | dict[str, int] | None = None,
        context_length: int = 77,
    ) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must hold start and end of text, got {context_length}")
        self.context_length = context_length
        self.merges = [tuple(m) for m in merges]
        if any(len(m) != 2 for m in self.merges):
            raise ValueError("every merge must be a pair of symbols")
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        if vocab is None:  # OpenAI's layout; a repeated string keeps its last id, as OpenAI's dict() does
            base = list(self.byte_encoder.values())
            vocab = (
                base
                + [s + WORD_END for s in base]
                + ["".join(m) for m in self.merges]
                + [SOT_TOKEN, EOT_TOKEN]
            )
        if isinstance(vocab, dict):
            self.encoder = dict(vocab)
        else:
            self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        for tok in (SOT_TOKEN, EOT_TOKEN):
            if tok not in self.encoder:
                raise ValueError(f"the vocabulary lacks {tok}")
        self.sot_id = self.encoder[SOT_TOKEN]
        self.eot_id = self.encoder[EOT_TOKEN]
        self.vocab_size = max(self.encoder.values()) + 1
        self.special = {SOT_TOKEN: self.sot_id, EOT_TOKEN: self.eot_id}
        self.bpe_ranks = {m: i for i, m in enumerate(self.merges)}
        self._cache: dict[str, tuple[int, ...]] = {}
        self._piece_cache: dict[str, list[int]] = {}
        self._pool: Any = None
        self._pool_workers = 0

    # ---- construction ------------------------------------------------------------------------------------

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, *, vocab_size: int | None = None, context_length: int = 77
    ) -> Tokenizer:
        """Load a merges file (``.gz`` or plain): a header line, then one ``a b`` merge per line.

        All merges are used, except in OpenAI's own file (recognised by its header), where CLIP uses the first
        48,894; ``vocab_size`` (= 512 + merges + 2) selects a prefix explicitly.
        """
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        header, body = lines[0], [ln for ln in lines[1:] if ln]
        if vocab_size is not None:
            n = vocab_size - 514
            if not 0 <= n <= len(body):
                raise ValueError(f"vocab_size {vocab_size} needs {n} merges; {path} has {len(body)}")
        else:
            n = OPENAI_N_MERGES if header == OPENAI_BPE_HEADER else len(body)
        merges = [tuple(ln.split(" ")) for ln in body[:n]]
        return cls(merges, context_length=context_length)

    @classmethod
    def from_hf(
        cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike, *, context_length: int = 77
    ) -> Tokenizer:
        """Load HF's ``vocab.json`` + ``merges.txt`` (e.g. from ``openai/clip-vit-base-patch32``)."""
        vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
        lines = Path(merges_txt).read_text(encoding="utf-8").split("\n")
        merges = [tuple(ln.split(" ")) for ln in lines if ln and not ln.startswith("#version")]
        return cls(merges, vocab=vocab, context_length=context_length)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the merges file (gzip if the name ends in .gz) that ``from_file`` reads back."""
        path = Path(path)
        text = "#version: 0.2 torchclip\n" + "".join(f"{a} {b}\n" for a, b in self.merges)
        path.write_bytes(gzip.compress(text.encode(), mtime=0) if path.suffix == ".gz" else text.encode())
        return path

    def save_hf(self, directory: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``vocab.json`` + ``merges.txt`` as HF ``CLIPTokenizer(Fast)`` reads them."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        vocab, merges = d / "vocab.json", d / "merges.txt"
        vocab.write_text(json.dumps(self.encoder, ensure_ascii=False), encoding="utf-8")
        merges.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges), encoding="utf-8")
        return vocab, merges

    # ---- BPE ---------------------------------------------------------------------------------------------

    def bpe(self, piece: str) -> list[str]:
        """BPE symbols of one pre-tokenized piece: its bytes as table characters, ``</w>`` on the last one,
        then repeatedly merge every non-overlapping occurrence (left to right) of the lowest-ranked pair.

        A piece longer than ``_BPE_BLOCK`` bytes is merged block by block (see the module docstring)."""
        data, out = piece.encode("utf-8"), []
        for start in range(0, len(data), _BPE_BLOCK):
            out += self._merge(data[start : start + _BPE_BLOCK], start + _BPE_BLOCK >= len(data))
        return out

    def _merge(self, data: bytes, last: bool) -> list[str]:
        """The merged symbols of ``data`` (``</w>`` appended to its last byte when ``last``)."""
        symbols = [self.byte_encoder[b] for b in data]
        if last:
            symbols[-1] += WORD_END
        if len(symbols) > _SCAN_MAX:
            return _merge_heap(symbols, self.bpe_ranks)
        ranks = self.bpe_ranks
        while len(symbols) > 1:
            best, best_rank = None, len(ranks)
            for pair in zip(symbols, symbols[1:]):
                r = ranks.get(pair)
                if r is not None and r < best_rank:
                    best, best_rank = pair, r
            if best is None:
                break
            symbols = merge_pair(symbols, *best)
        return symbols

    def _piece_ids(self, piece: str, need: int | None = None) -> list[int]:
        """Ids of one piece; with ``need``, a piece longer than a block stops after the block that reaches
        ``need`` ids (blocks are independent, so the ids so far are those of the whole piece)."""
        special = self.special.get(piece)
        if special is not None:
            return [special]
        enc, data, out = self.encoder, piece.encode("utf-8"), []
        for start in range(0, len(data), _BPE_BLOCK):
            end = start + _BPE_BLOCK
            out += [enc[s] for s in self._merge(data[start:end], end >= len(data))]
            if need is not None and len(out) >= need:
                break
        return out

    def _long_chunk_ids(self, chunk: str, need: int | None = None) -> list[int]:
        """Ids of a chunk too long to cache, piece by piece, stopping once ``need`` ids are there (None: all)."""
        out: list[int] = []
        for m in PATTERN.finditer(chunk):
            out.extend(self._piece_ids(m.group(), None if need is None else need - len(out)))
            if need is not None and len(out) >= need:
                break
        return out

    def _chunk_ids(self, chunk: str) -> tuple[int, ...]:
        """Ids of one space-free chunk of cleaned text (cached: captions reuse few distinct chunks).

        Its pieces' ids are cached too, since one word recurs in many chunks ("dog", "dog,", "dog's").
        """
        ids = self._cache.get(chunk)
        if ids is None and len(chunk) > _CACHE_MAX_CHARS:
            return tuple(self._long_chunk_ids(chunk))
        if ids is None:
            pieces, out = self._piece_cache, []
            for piece in PATTERN.findall(chunk):
                p = pieces.get(piece)
                if p is None:
                    if len(pieces) >= _CACHE_LIMIT:
                        pieces.clear()
                    p = pieces[piece] = self._piece_ids(piece)
                out.extend(p)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            ids = self._cache[chunk] = tuple(out)
        return ids

    # ---- encode / decode ---------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Content ids of one text, without start/end of text (as OpenAI's ``SimpleTokenizer.encode``)."""
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}")
        get, ids = self._cache.get, []
        for chunk in _chunks(text):
            c = get(chunk)
            ids.extend(c if c is not None else self._chunk_ids(chunk))
        return ids

    def encode_exact(self, text: str) -> list[int]:
        """The unoptimised reference path: full cleaning, one pattern pass, BPE per piece, no cache."""
        return [i for piece in PATTERN.findall(clean_text(text)) for i in self._piece_ids(piece)]

    def encode_batch(self, texts: Iterable[str], *, num_workers: int | None = None) -> list[list[int]]:
        """``encode`` over many texts, spread over processes for large batches (see ``__call__``)."""
        texts = _text_list(texts)
        workers = self._workers(len(texts), num_workers)
        if workers <= 1:
            return [self.encode(t) for t in texts]
        return [ids for part in self._map(_encode_part, texts, workers) for ids in part]

    def decode(self, ids: Iterable[int] | torch.Tensor, *, skip_special_tokens: bool = False) -> str:
        """Text of ids as OpenAI decodes it: bytes back, UTF-8 with replacement, each ``</w>`` -> a space.

        So ``decode(encode(x))`` is the cleaned text (``clean_text(x)``) with one space after each of its
        pre-tokenization pieces (``PATTERN.findall``), special-token strings excepted: equal to the cleaned
        text once all spaces are removed. With ``skip_special_tokens``, the start of text is dropped and the sequence ends at the first end of
        text (which also drops a ``tokenize`` row's padding).
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = list(ids)
        if skip_special_tokens:
            if self.eot_id in ids:
                ids = ids[: ids.index(self.eot_id)]
            ids = [i for i in ids if i != self.sot_id]
        text = "".join(self.decoder[i] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace(WORD_END, " ")

    def decode_batch(
        self, batch: Iterable[Iterable[int]] | torch.Tensor, *, skip_special_tokens: bool = False
    ) -> list[str]:
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in batch]

    def __call__(
        self,
        texts: str | Sequence[str],
        context_length: int | None = None,
        truncate: bool = False,
        *,
        num_workers: int | None = None,
    ) -> torch.Tensor:
        """``[N, context_length]`` int64 ids: SOT, content, EOT, then zeros (OpenAI's ``clip.tokenize``).

        A text that does not fit raises ``ContextLengthError`` (index and token count), unless ``truncate``,
        which keeps the first ``context_length`` ids and makes the last one EOT (and stops encoding a text
        once its row is full). An item that is not a ``str`` is a ``TypeError`` naming its index. ``num_workers``: processes
        for this batch; None uses every available core for batches of 8,192 texts or more.
        """
        texts = _text_list(texts)
        ctx = self.context_length if context_length is None else context_length
        if ctx < 2:
            raise ValueError(f"context_length must hold start and end of text, got {ctx}")
        workers = self._workers(len(texts), num_workers)
        if workers <= 1:
            flat, lens = _rows(self, texts, ctx, truncate)
        else:
            parts = self._map(_rows_part, texts, workers, ctx, truncate)
            flat = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
            lens = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        lens = np.asarray(lens, dtype=np.int64)
        if not truncate and len(lens) and lens.max() > ctx:
            i = int(np.argmax(lens > ctx))
            raise ContextLengthError(i, int(lens[i]), ctx, texts[i])
        out = np.zeros((len(texts), ctx), dtype=np.int64)
        kept = np.minimum(lens, ctx)
        if kept.sum():
            rows = np.repeat(np.arange(len(texts)), kept)
            cols = np.arange(kept.sum()) - np.repeat(np.cumsum(kept) - kept, kept)
            out[rows, cols] = flat
        return torch.from_numpy(out)

    # ---- processes ---------------------------------------------------------------------------------------

    def _workers(self, n_texts: int, num_workers: int | None) -> int:
        """Processes for a batch: 1 (in-process) unless asked, or a large batch on a multi-core Linux host.

        Workers are forked (they inherit the tokenizer, nothing is pickled but texts and ids), so only where
        fork is safe: Linux, and not inside a daemonic process such as a DataLoader worker.
        """
        import multiprocessing as mp

        if num_workers is None:
            if n_texts < _PARALLEL_MIN:
                return 1
            num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        if num_workers <= 1 or not sys.platform.startswith("linux") or mp.current_process().daemon:
            return 1
        return max(1, min(num_workers, n_texts // 64 or 1))

    def _map(self, fn: Any, texts: list[str], workers: int, *args: Any) -> list[Any]:
        """Run ``fn(tokenizer, part, *args)`` on contiguous parts of ``texts`` in a persistent fork pool."""
        if self._pool is None or self._pool_workers != workers:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = ProcessPoolExecutor(workers, mp.get_context("fork"), _init_worker, (self,))
            self._pool_workers = workers
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        step = -(-len(texts) // (workers * 4))
        parts = [texts[i : i + step] for i in range(0, len(texts), step)]
        return list(self._pool.map(fn, parts, *([a] * len(parts) for a in args)))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_pool=None, _pool_workers=0, _cache={}, _piece_cache={})
        return state

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"


def _merge_heap(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """``Tokenizer._merge``'s rescanning loop in n log n: the same merges, applied in the same order.

    The reference merges, each round, every non-overlapping occurrence (left to right) of the lowest-ranked
    pair. Here the symbols form a linked list and the heap holds ``(rank, position)`` of candidate pairs; a
    round pops every entry of the lowest rank (in position order, so left to right) and merges those still
    valid. A merge can only create pairs holding the new, longer symbol, never the round's own pair, so a
    round needs no rescan; entries made stale by a merge are skipped when popped.
    """
    n = len(symbols)
    sym: list[str | None] = list(symbols)
    nxt = [*range(1, n), -1]
    prv = [*range(-1, n - 1)]
    get = ranks.get
    heap = [(r, i) for i, pair in enumerate(zip(symbols, symbols[1:])) if (r := get(pair)) is not None]
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        r, i = pop(heap)
        batch = [i]
        while heap and heap[0][0] == r:
            batch.append(pop(heap)[1])
        for i in batch:
            a, j = sym[i], nxt[i]
            if a is None or j < 0 or get((a, sym[j])) != r:  # type: ignore[arg-type]
                continue  # consumed or changed by an earlier merge
            merged = a + sym[j]  # type: ignore[operator]
            sym[i], sym[j] = merged, None
            k = nxt[i] = nxt[j]
            if k >= 0:
                prv[k] = i
                if (rk := get((merged, sym[k]))) is not None:  # type: ignore[arg-type]
                    push(heap, (rk, i))
            p = prv[i]
            if p >= 0 and (rp := get((sym[p], merged))) is not None:  # type: ignore[arg-type]
                push(heap, (rp, p))
    return [s for s in sym if s is not None]


_ROW_END = "\x00"  # ends a text's chunks in _rows' stream; no cleaned text holds NUL (ftfy deletes it)


def _text_list(texts: Any) -> list[str]:
    """``texts`` as a list of str: one str, or an iterable of them; anything else is a ``TypeError`` that
    names the offending item's index and type."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str: {t!r:.80}")
    return texts


def _rows(tok: Tokenizer, texts: list[str], ctx: int, truncate: bool = False) -> tuple[list[int], list[int]]:
    """Flat ids of every row (SOT + content cut to ctx - 2 + EOT) and each text's length in ids.

    The hot loop of ``tokenize``. Each run of consecutive route-A texts (printable ASCII, no '&': cleaning is
    split + lower) is joined with NUL markers, lower-cased and split once; other texts are cleaned one by
    one. Then one pass over the chunk stream looks each chunk up in the cache. With ``truncate`` a row
    stops taking chunks once it is full, so its length is then only known to exceed the context.
    """
    stream: list[str] = []
    run: list[str] = []
    not_inert, sep = _NOT_INERT.search, f" {_ROW_END} "
    for text in texts:
        if text.isascii() and not_inert(text) is None:
            run.append(text)
            continue
        if run:
            stream += (sep.join(run) + sep).lower().split()
            run = []
        stream += _chunks(text)
        stream.append(_ROW_END)
    if run:
        stream += (sep.join(run) + sep).lower().split()

    flat: list[int] = []
    lens: list[int] = []
    append, extend, add_len = flat.append, flat.extend, lens.append
    get, chunk_ids, long_ids = tok._cache.get, tok._chunk_ids, tok._long_chunk_ids
    sot, eot, limit = tok.sot_id, tok.eot_id, ctx - 2
    cut = limit if truncate else sys.maxsize  # content ids after which a row takes no more chunks
    start, full = 1, False
    append(sot)
    for chunk in stream:
        if chunk == _ROW_END:
            n = len(flat) - start
            if n > limit:
                del flat[start + limit :]
            append(eot)
            add_len(n + 2)
            start, full = len(flat) + 1, False
            append(sot)
        elif not full:
            ids = get(chunk)
            if ids is None:
                # a long chunk is encoded only as far as the row needs (it is never cached)
                ids = chunk_ids(chunk) if len(chunk) <= _CACHE_MAX_CHARS else long_ids(
                    chunk, cut - (len(flat) - start) if truncate else None)
            extend(ids)
            full = len(flat) - start >= cut
    flat.pop()  # the SOT opened after the last text
    return flat, lens


_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tok: Tokenizer) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tok
    torch.set_num_threads(1)


def _rows_part(texts: list[str], ctx: int, truncate: bool) -> tuple[np.ndarray, np.ndarray]:
    flat, lens = _rows(_WORKER_TOKENIZER, texts, ctx, truncate)
    return np.asarray(flat, dtype=np.int32), np.asarray(lens, dtype=np.int32)


def _encode_part(texts: list[str]) -> list[list[int]]:
    return [_WORKER_TOKENIZER.encode(t) for t in texts]


# ---- where the vocabulary comes from -------------------------------------------------------------------


_DEFAULT_PATHS: dict[Path, Path] = {}  # cache dir -> verified vocabulary file, so tokenize() rehashes nothing


def default_vocab_path(*, progress: bool = True) -> Path:
    """OpenAI's merges file: ``$TORCHCLIP_CACHE/bpe_simple_vocab_16e6.txt.gz`` when present with the
    published SHA-256, else downloaded from OpenAI's repository and verified, like a checkpoint."""
    from torchclip.download import cache_dir, download

    root = cache_dir()
    known = _DEFAULT_PATHS.get(root)
    if known is not None and known.is_file():
        return known
    path = Path(download(OPENAI_BPE_URL, OPENAI_BPE_SHA256, OPENAI_BPE_FILENAME, progress=progress))
    _DEFAULT_PATHS[root] = path
    return path


@lru_cache(maxsize=8)
def _load_cached(path: str, context_length: int) -> Tokenizer:
    p = Path(path)
    if p.is_dir():
        return Tokenizer.from_hf(p / "vocab.json", p / "merges.txt", context_length=context_length)
    return Tokenizer.from_file(p, context_length=context_length)


def load_tokenizer(source: str | os.PathLike | None = None, *, context_length: int = 77) -> Tokenizer:
    """A shared tokenizer for ``source``: None (OpenAI's vocabulary), a merges file, or an HF directory
    holding ``vocab.json`` + ``merges.txt``. Loading parses ~49k merges, so instances are memoised."""
    path = default_vocab_path() if source is None else Path(source)
    return _load_cached(str(Path(path).resolve()), context_length)


def tokenize(texts: str | Sequence[str], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """OpenAI's ``clip.tokenize`` with OpenAI's vocabulary: int64 ``[N, context_length]``, zero padded."""
    return load_tokenizer()(texts, context_length=context_length, truncate=truncate)


def check_compatible(tokenizer: Tokenizer, text_config: Any) -> None:
    """Raise ValueError when ``tokenizer`` cannot feed a text tower built from ``text_config``.

    A mismatch does not crash a model: ids beyond the embedding table fail late, and a wrong EOT id or
    context length silently pools the wrong position. Checking up front names the disagreement.
    """
    problems = [
        f"{name}: tokenizer {getattr(tokenizer, name)} != model {getattr(text_config, name)}"
        for name in ("vocab_size", "sot_id", "eot_id", "pad_id", "context_length")
        if getattr(tokenizer, name) != getattr(text_config, name)
    ]
    if problems:
        raise ValueError("tokenizer and text config disagree: " + "; ".join(problems))
