"""The tokenizer's bounded paths give exactly the reference's ids.

* The heap merge (pieces over ``_SCAN_MAX`` bytes) equals OpenAI's algorithm, written out here, on OpenAI's
  vocabulary and on arbitrary merge lists (including orders no trained list has).
* ``truncate=True`` stops encoding a row once it is full: its rows equal the full encoding cut, as before.
* Pieces over ``_BPE_BLOCK`` bytes are merged per block (checked with a small block).
* Non-string items are a ``TypeError`` naming their index and type.

The 6,938 fixture cases against OpenAI's own output run in ``test_tokenizer.py``; the time bound (a child
under a time cap, and the reference algorithm as negative control) in ``test_hostile_inputs.py``.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torchclip.tokenizer as T
from torchclip.tokenizer import WORD_END, Tokenizer, _merge_heap

VOCAB = "fixtures/tokenizer/bpe_simple_vocab_16e6.txt.gz"


def reference_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """OpenAI's ``SimpleTokenizer.bpe`` loop: merge every occurrence of the lowest-ranked pair, rescan."""
    word = list(symbols)
    while len(word) > 1:
        pairs = set(zip(word, word[1:]))
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        first, second = best
        new, i = [], 0
        while i < len(word):
            try:
                j = word.index(first, i)
            except ValueError:
                new.extend(word[i:])
                break
            new.extend(word[i:j])
            i = j
            if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                new.append(first + second)
                i += 2
            else:
                new.append(word[i])
                i += 1
        word = new
    return word


@pytest.fixture(scope="module")
def openai_tok() -> Tokenizer:
    from conftest import _require

    return _openai(_require(VOCAB))


@functools.lru_cache(maxsize=1)
def _openai(path: Path) -> Tokenizer:
    return Tokenizer.from_file(path)  # a private instance: tests here clear and patch its caches


def _symbols(tok: Tokenizer, piece: str) -> list[str]:
    out = [tok.byte_encoder[b] for b in piece.encode()]
    out[-1] += WORD_END
    return out


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_heap_merge_equals_reference_on_openai_vocab(openai_tok: Tokenizer, data: st.DataObject) -> None:
    alphabet = data.draw(st.sampled_from(["ab", "aeiou", "abcdefghijklmnopqrstuvwxyz", "!.?-_", "eé😀ß"]))
    piece = data.draw(st.text(alphabet=alphabet, min_size=1, max_size=400))
    symbols = _symbols(openai_tok, piece)
    assert _merge_heap(symbols, openai_tok.bpe_ranks) == reference_bpe(symbols, openai_tok.bpe_ranks)
    assert openai_tok.bpe(piece) == reference_bpe(symbols, openai_tok.bpe_ranks)


@pytest.mark.parametrize("n", [17, 100, 1000, 5000])
def test_heap_merge_on_runs_and_words(openai_tok: Tokenizer, n: int) -> None:
    rng = random.Random(n)
    for piece in ("a" * n, "ab" * (n // 2), "".join(rng.choice("etaoinshrdlu") for _ in range(n))):
        symbols = _symbols(openai_tok, piece)
        assert _merge_heap(symbols, openai_tok.bpe_ranks) == reference_bpe(symbols, openai_tok.bpe_ranks)


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_symbols=st.integers(2, 5), length=st.integers(1, 60))
def test_heap_merge_equals_reference_on_any_merge_list(seed: int, n_symbols: int, length: int) -> None:
    # Random merge lists over a tiny alphabet: pairs of existing tokens in random rank order, so a merge of a
    # longer token can rank *before* the merge that makes it (no trained list does that; the heap must not
    # care), and long runs of equal symbols are common (the left-to-right non-overlap rule).
    rng = random.Random(seed)
    tokens = [chr(ord("a") + i) for i in range(n_symbols)]
    tokens += [t + WORD_END for t in tokens]
    merges: list[tuple[str, str]] = []
    for _ in range(rng.randint(1, 40)):
        a, b = rng.choice(tokens), rng.choice(tokens)
        if a.endswith(WORD_END) or (a, b) in merges:
            continue
        merges.append((a, b))
        tokens.append(a + b)
    rng.shuffle(merges)
    ranks = {m: i for i, m in enumerate(merges)}
    symbols = [rng.choice(tokens[:n_symbols]) for _ in range(length)]
    symbols[-1] += WORD_END
    assert _merge_heap(symbols, ranks) == reference_bpe(symbols, ranks)


def _cut_rows(tok: Tokenizer, texts: list[str], ctx: int) -> torch.Tensor:
    """What ``truncate=True`` must give: each text's full ids, cut to the context, EOT last."""
    out = torch.zeros(len(texts), ctx, dtype=torch.int64)
    for i, ids in enumerate(tok.encode_batch(texts)):
        row = [tok.sot_id, *ids][: ctx - 1] + [tok.eot_id]
        out[i, : len(row)] = torch.tensor(row)
    return out


_WORDS = st.sampled_from(["a", "photo", "of", "dog", "x" * 70, "a-b-c-" * 30, "naïve", "日本語の文", "&amp;",
                          "<|endoftext|>", "😀" * 20, "supercalifragilistic" * 8, "1 2 3", ",,,", "\n"])


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(st.lists(_WORDS, max_size=80).map(" ".join), min_size=1, max_size=6),
       ctx=st.integers(2, 40))
def test_truncated_rows_equal_the_full_encoding_cut(openai_tok: Tokenizer, texts: list[str], ctx: int) -> None:
    openai_tok._cache.clear()
    openai_tok._piece_cache.clear()
    got = openai_tok(texts, context_length=ctx, truncate=True)
    assert torch.equal(got, _cut_rows(openai_tok, texts, ctx))


def test_truncation_stops_encoding_a_full_row(openai_tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = openai_tok._chunk_ids

    def spy(chunk: str) -> tuple[int, ...]:
        seen.append(chunk)
        return real(chunk)

    openai_tok._cache.clear()
    monkeypatch.setattr(openai_tok, "_chunk_ids", spy)
    words = [f"w{i}x" for i in range(500)]
    row = openai_tok([" ".join(words)], truncate=True)
    assert len(seen) < 80  # each word is a few tokens: the row was full long before word 500
    assert torch.equal(row, _cut_rows(openai_tok, [" ".join(words)], 77))
    # Negative control: untruncated, every word is encoded (to count them for the error).
    seen.clear()
    openai_tok._cache.clear()
    with pytest.raises(T.ContextLengthError):
        openai_tok([" ".join(words)])
    assert len(seen) == 500


@settings(max_examples=60, deadline=None)
@given(piece=st.text(alphabet="abcdefg", min_size=1, max_size=120), block=st.integers(1, 9),
       ctx=st.integers(2, 30))
def test_long_pieces_merge_per_block(openai_tok: Tokenizer, piece: str, block: int, ctx: int) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "_BPE_BLOCK", block)
        data = piece.encode()
        expected = []
        for start in range(0, len(data), block):
            syms = [openai_tok.byte_encoder[b] for b in data[start : start + block]]
            if start + block >= len(data):
                syms[-1] += WORD_END
            expected += reference_bpe(syms, openai_tok.bpe_ranks)
        assert openai_tok.bpe(piece) == expected
        openai_tok._cache.clear()
        openai_tok._piece_cache.clear()
        text = f"{piece} {piece}x"  # long chunks: encoded piece by piece, stopping when the row is full
        assert torch.equal(openai_tok([text], context_length=ctx, truncate=True),
                           _cut_rows(openai_tok, [text], ctx))


def test_blocks_only_for_pieces_no_word_reaches(openai_tok: Tokenizer) -> None:
    # The block size is far beyond any real word, so OpenAI's ids are unchanged for every normal text.
    assert T._BPE_BLOCK >= 1 << 16
    word = "pneumonoultramicroscopicsilicovolcanoconiosis" * 20
    assert openai_tok.bpe(word) == reference_bpe(_symbols(openai_tok, word), openai_tok.bpe_ranks)


# ---- non-string items (#16.6) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("texts", "message"), [
    (["a cat", 3, "a dog"], r"texts\[1\] is int, expected str"),
    (["a cat", None], r"texts\[1\] is NoneType"),
    ([b"bytes"], r"texts\[0\] is bytes"),
    ([["nested"]], r"texts\[0\] is list"),
    (b"a cat", r"str or a sequence of str, got bytes"),
    (42, r"str or a sequence of str, got int"),
    (None, r"got NoneType"),
])
def test_non_string_items_are_a_clear_type_error(texts: object, message: str) -> None:
    tok = Tokenizer([("a", "b")])
    with pytest.raises(TypeError, match=message):
        tok(texts)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=message):
        tok.encode_batch(texts)  # type: ignore[arg-type]


def test_non_string_items_negative_control(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the check the error is whatever the first string method says, with no index.
    monkeypatch.setattr(T, "_text_list", list)
    with pytest.raises(AttributeError, match="isascii"):
        Tokenizer([("a", "b")])(["a cat", 3])


def test_string_subclasses_and_generators_are_fine() -> None:
    class Caption(str):
        pass

    tok = Tokenizer([("a", "b")])
    assert torch.equal(tok(t for t in ["ab", Caption("ab")]), tok(["ab", "ab"]))


def test_heap_merge_on_a_trained_toy_vocabulary() -> None:
    # A trained toy vocabulary exercises the heap path without ../shared.
    from torchclip.bpe_train import train_bpe

    tok = train_bpe(["the quick brown fox jumps over the lazy dog " * 3] * 20, vocab_size=600)
    for piece in ("thequickbrownfox" * 5, "dogdogdogdog" * 10, "zzzzzzzzzzzzzzzzzzzz"):
        symbols = _symbols(tok, piece)
        assert _merge_heap(symbols, tok.bpe_ranks) == reference_bpe(symbols, tok.bpe_ranks)
        assert tok.bpe(piece) == reference_bpe(symbols, tok.bpe_ranks)
