"""Train a CLIP-style byte-level BPE vocabulary on a caption corpus.

A model trained from scratch on a new domain (emoji names, product titles, another language) wastes most of
OpenAI's 49,408-entry table and splits its own words into many pieces. ``train_bpe`` learns merges with the
same cleaning, pre-tokenization, byte table and ``</w>`` convention as OpenAI's tokenizer, so the result is a
merges file of the same format (header line, one ``a b`` merge per line) that ``Tokenizer.from_file`` loads
with ``vocab_size = 512 + merges + 2``; its last two ids are start and end of text, as ``TextConfig`` expects.

    python -m torchclip.bpe_train captions.txt --vocab-size 4096 -o vocab.txt.gz
"""

from __future__ import annotations

import argparse
import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from torchclip.textclean import chunks
from torchclip.tokenizer import (
    EOT_TOKEN,
    PATTERN,
    SOT_TOKEN,
    WORD_END,
    Tokenizer,
    bytes_to_unicode,
    merge_pair,
)

__all__ = ["train_bpe", "word_counts"]

BASE_VOCAB = 512 + 2  # 256 byte symbols, the same with </w>, start and end of text


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """Frequencies of pre-tokenized pieces, cleaned and split exactly as ``Tokenizer.encode`` will see them."""
    per_chunk: Counter[str] = Counter()
    for text in texts:
        per_chunk.update(chunks(text))
    words: Counter[str] = Counter()
    for chunk, n in per_chunk.items():
        for piece in PATTERN.findall(chunk):
            if piece not in (SOT_TOKEN, EOT_TOKEN):
                words[piece] += n
    return words


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    context_length: int = 77,
) -> Tokenizer:
    """Learn up to ``vocab_size - 514`` merges from ``texts`` and return the tokenizer using them.

    Each step merges the most frequent adjacent symbol pair (ties: the smallest pair, so results are
    reproducible), counted over word frequencies. Training stops early when no pair occurs
    ``min_frequency`` times, so ``vocab_size`` is an upper bound; read the real one from the result. A pair
    whose concatenation is already a token is never merged, so every id names a distinct string.
    """
    n_merges = vocab_size - BASE_VOCAB
    if n_merges < 0:
        raise ValueError(f"vocab_size must be at least {BASE_VOCAB} (bytes, bytes + </w>, SOT, EOT)")
    table = bytes_to_unicode()
    words: list[list[str]] = []
    freqs: list[int] = []
    for word, n in word_counts(texts).items():
        symbols = [table[b] for b in word.encode("utf-8")]
        symbols[-1] += WORD_END
        words.append(symbols)
        freqs.append(n)

    counts: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for i, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-n, pair) for pair, n in counts.items()]
    heapq.heapify(heap)
    tokens = set(table.values()) | {s + WORD_END for s in table.values()}
    merges: list[tuple[str, str]] = []

    while len(merges) < n_merges and heap:
        neg, pair = heapq.heappop(heap)
        if -neg != counts.get(pair, 0):
            continue  # stale entry: every count change pushed a fresh one
        if -neg < min_frequency:
            break
        a, b = pair
        if a + b in tokens:
            del counts[pair]  # would duplicate a token; never merge it
            continue
        merges.append(pair)
        tokens.add(a + b)
        changed: set[tuple[str, str]] = set()
        for i in where.pop(pair, ()):
            old = words[i]
            new = merge_pair(old, a, b)
            if len(new) == len(old):
                continue  # the word lost this pair to an earlier merge
            f = freqs[i]
            for p in zip(old, old[1:]):
                counts[p] -= f
                changed.add(p)
            for p in zip(new, new[1:]):
                counts[p] += f
                where[p].add(i)
                changed.add(p)
            words[i] = new
        counts.pop(pair, None)
        for p in changed:
            n = counts.get(p, 0)
            if n > 0:
                heapq.heappush(heap, (-n, p))
            elif p in counts:
                del counts[p]
    return Tokenizer(merges, context_length=context_length)


def main(argv: list[str] | None = None) -> None:
    """Command line: train on text files (one caption per line) and write a merges file."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path, help="UTF-8 text files, one caption per line")
    ap.add_argument("--vocab-size", type=int, required=True, help="512 + merges + 2")
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("-o", "--output", type=Path, required=True, help="merges file (.gz to compress)")
    args = ap.parse_args(argv)
    lines = (ln for f in args.files for ln in f.read_text(encoding="utf-8").splitlines())
    tok = train_bpe(lines, args.vocab_size, min_frequency=args.min_frequency)
    tok.save(args.output)
    print(f"{args.output}: {len(tok.merges)} merges, vocab_size {tok.vocab_size}")


if __name__ == "__main__":
    main()
