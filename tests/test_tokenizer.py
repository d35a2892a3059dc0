"""Tokenizer: OpenAI's ids on every fixture case, where the vocabulary comes from, the API, BPE training."""

from __future__ import annotations

import functools
import gzip
import json
import random
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from torchclip.config import TextConfig
from torchclip.tokenizer import (
    OPENAI_BPE_FILENAME,
    OPENAI_BPE_SHA256,
    OPENAI_BPE_URL,
    ContextLengthError,
    Tokenizer,
    check_compatible,
    load_tokenizer,
    tokenize,
)

VOCAB = "fixtures/tokenizer/bpe_simple_vocab_16e6.txt.gz"
CASES = "fixtures/tokenizer/cases.jsonl"


@pytest.fixture
def tok(shared) -> Tokenizer:
    return load_tokenizer(shared(VOCAB))  # memoised: parsed once per process


@functools.lru_cache(maxsize=1)
def _read_cases(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def cases(shared) -> list[dict]:
    """The 6,938 fixture lines ``{"text", "ids", "n_tokens"}`` of OpenAI's tokenizer."""
    return _read_cases(str(shared(CASES)))


@pytest.fixture
def openai_cache(shared, cache_dir: Path) -> Path:
    """A private $TORCHCLIP_CACHE holding a copy of OpenAI's merges file, as after a first download."""
    shutil.copy(shared(VOCAB), cache_dir / OPENAI_BPE_FILENAME)
    return cache_dir


# ---- exact ids on the fixture set -----------------------------------------------------------------------


def test_fixture_cases_truncated(tok: Tokenizer, cases: list[dict]) -> None:
    assert len(cases) == 6938
    out = tok([c["text"] for c in cases], truncate=True, num_workers=1)
    ref = torch.tensor([c["ids"] for c in cases])
    assert out.dtype == torch.int64 and out.shape == (6938, 77)
    bad = (out != ref).any(1).nonzero().flatten().tolist()
    assert not bad, f"{len(bad)} mismatches, first: {cases[bad[0]]['text']!r}"
    lengths = [len(tok.encode(c["text"])) + 2 for c in cases]
    assert lengths == [c["n_tokens"] for c in cases]


def test_fixture_cases_untruncated(tok: Tokenizer, cases: list[dict]) -> None:
    fit = [c for c in cases if c["n_tokens"] <= 77]
    out = tok([c["text"] for c in fit])
    assert torch.equal(out, torch.tensor([c["ids"] for c in fit]))
    long = [c for c in cases if c["n_tokens"] > 77]
    assert len(long) == 113
    for c in long:
        with pytest.raises(ContextLengthError) as err:
            tok(["a cat", c["text"]])
        assert (err.value.index, err.value.n_tokens) == (1, c["n_tokens"])
        assert f"text 1 has {c['n_tokens']} tokens" in str(err.value)


def test_fixture_cases_exact_path(tok: Tokenizer, cases: list[dict]) -> None:
    """The unoptimised reference path (full ftfy, no cache) gives the same ids: every case that needs more
    than route A's ASCII shortcut, and every 8th of the others (ftfy on all 6,938 costs seconds)."""
    from torchclip.textclean import ascii_inert

    checked = [c for i, c in enumerate(cases) if not ascii_inert(c["text"]) or i % 8 == 0]
    assert len(checked) > 1000
    for c in checked:
        ids = tok.encode_exact(c["text"])
        assert len(ids) + 2 == c["n_tokens"], c["text"]
        row = [tok.sot_id, *ids[:75], tok.eot_id]
        assert row + [0] * (77 - len(row)) == c["ids"], c["text"]


def test_fixture_cases_in_worker_processes(tok: Tokenizer, cases: list[dict], shared) -> None:
    texts = [c["text"] for c in cases]
    out = tok(texts, truncate=True, num_workers=2)
    assert torch.equal(out, torch.tensor([c["ids"] for c in cases]))
    assert tok.encode_batch(texts[:300], num_workers=2) == [tok.encode(t) for t in texts[:300]]
    fresh = Tokenizer.from_file(shared(VOCAB))
    assert fresh(texts[:100], num_workers=2).shape == (100, 77) and fresh._pool is None  # too small to fork
    fresh(texts, truncate=True)  # below the automatic threshold: in-process
    assert fresh._pool is None


REFERENCE_IDS = [  # clip-reference.md section 5 (encode only)
    ("a diagram", [320, 22697]),
    ("a dog", [320, 1929]),
    ("A PHOTO OF A CAT.", [320, 1125, 539, 320, 2368, 269]),
    ("It's 2021, isn't it?", [585, 568, 273, 271, 273, 272, 267, 2923, 713, 585, 286]),
    ("12345", [272, 273, 274, 275, 276]),
    ("café naïve", [15304, 1097, 35689, 563]),
    ("&amp;lt;b&amp;gt;", [283, 321, 285]),
    ("日本語", [39121, 44353, 34002, 508]),
    ("ＦＵＬＬ", [1476]),
    ("itap of a tench.", [529, 2728, 539, 320, 1149, 634, 269]),
    ("", []),
]


@pytest.mark.parametrize(("text", "ids"), REFERENCE_IDS)
def test_reference_ids(tok: Tokenizer, text: str, ids: list[int]) -> None:
    assert tok.encode(text) == ids
    assert tok.encode_exact(text) == ids


def test_tokenize_matches_openai_layout(openai_cache: Path) -> None:
    out = tokenize("Hello World!")
    assert out.shape == (1, 77) and out.dtype == torch.int64
    assert out[0, :6].tolist() == [49406, 3306, 1002, 256, 49407, 0]
    assert int(out[0, 5:].abs().sum()) == 0
    assert tokenize(["a", "b c"], context_length=10).shape == (2, 10)
    assert tokenize([]).shape == (0, 77)


def test_truncation_boundary(tok: Tokenizer) -> None:
    fits, over = " ".join(["cat"] * 75), " ".join(["cat"] * 76)  # 75 content tokens fit, 76 do not
    assert tok(fits)[0, -1].item() == tok.eot_id
    with pytest.raises(ContextLengthError, match="78 tokens"):
        tok(over)
    cut = tok(over, truncate=True)[0]
    assert cut[0] == tok.sot_id and cut[-1] == tok.eot_id and (cut[1:-1] == 2368).all()
    with pytest.raises(ValueError):
        tok("x", context_length=1)


# ---- where the vocabulary comes from --------------------------------------------------------------------


def test_vocab_from_cache(openai_cache: Path) -> None:
    t = load_tokenizer()
    assert (t.vocab_size, t.sot_id, t.eot_id, t.pad_id, t.context_length) == (49408, 49406, 49407, 0, 77)
    assert len(t.merges) == 48894 and t.merges[0] == ("i", "n") and t.merges[-1] == ("jeky", "ll</w>")


def test_corrupt_cached_vocab_is_not_used(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHCLIP_OFFLINE", "1")  # no network: the corrupt copy must be refused, not used
    (cache_dir / OPENAI_BPE_FILENAME).write_bytes(gzip.compress(b"#version\ni n\n"))
    from torchclip.download import ChecksumError

    with pytest.raises(ChecksumError):
        load_tokenizer()


def test_missing_vocab_is_downloaded_with_checksum(
    shared, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_download(url: str, sha256: str | None, filename: str | None = None, *, progress: bool = True):
        calls.append((url, sha256, filename))
        target = cache_dir / filename
        shutil.copy(shared(VOCAB), target)
        return target

    fake = types.ModuleType("torchclip.download")
    fake.download = fake_download
    fake.cache_dir = lambda: cache_dir
    monkeypatch.setitem(sys.modules, "torchclip.download", fake)
    t = load_tokenizer()
    assert calls == [(OPENAI_BPE_URL, OPENAI_BPE_SHA256, OPENAI_BPE_FILENAME)]
    assert t.encode("a dog") == [320, 1929]


def test_hf_files_round_trip(tok: Tokenizer, tmp_path: Path) -> None:
    vocab, merges = tok.save_hf(tmp_path / "hf")
    assert json.loads(vocab.read_text())["<|endoftext|>"] == 49407
    assert merges.read_text().splitlines()[0].startswith("#version")
    hf = load_tokenizer(tmp_path / "hf")
    assert (hf.vocab_size, hf.sot_id, hf.eot_id) == (49408, 49406, 49407)
    text = "A photo of a café, naïve résumé 日本語 &amp; <|endoftext|>!"
    assert hf.encode(text) == tok.encode(text)


def test_merges_file_prefix(tok: Tokenizer, shared, tmp_path: Path) -> None:
    small = Tokenizer.from_file(shared(VOCAB), vocab_size=1000)
    assert small.vocab_size == 1000 and (small.sot_id, small.eot_id) == (998, 999)
    assert max(max(small.encode("a photograph of nine hundred giraffes")), 0) < 998
    plain = tmp_path / "m.txt"
    small.save(plain)
    again = Tokenizer.from_file(plain)  # a non-OpenAI header: every merge is used
    assert again.merges == small.merges and again.vocab_size == 1000
    with pytest.raises(ValueError, match="merges"):
        Tokenizer.from_file(shared(VOCAB), vocab_size=300)


# ---- API ------------------------------------------------------------------------------------------------


def test_encode_decode(tok: Tokenizer) -> None:
    ids = tok.encode("Hello   World!\n")
    assert tok.decode(ids) == "hello world ! "
    row = tok("a photo of a cat")[0]
    assert tok.decode(row, skip_special_tokens=True) == "a photo of a cat "
    assert tok.decode(row[:4]) == "<|startoftext|>a photo of "
    assert tok.decode_batch(tok(["a", "b"]), skip_special_tokens=True) == ["a ", "b "]
    assert tok.encode("<|startoftext|>x<|endoftext|>") == [49406, 343, 49407]
    with pytest.raises(TypeError):
        tok.encode(b"bytes")  # type: ignore[arg-type]


def test_check_compatible(tok: Tokenizer) -> None:
    check_compatible(tok, TextConfig())
    with pytest.raises(ValueError, match="vocab_size: tokenizer 49408 != model 1000"):
        check_compatible(tok, TextConfig(vocab_size=1000))
    with pytest.raises(ValueError, match="context_length"):
        check_compatible(tok, TextConfig(context_length=64))
    with pytest.raises(ValueError, match="eot_id"):
        check_compatible(tok, TextConfig(eot_id=0, pad_id=1))


def test_pickle_drops_pool_and_cache(tok: Tokenizer) -> None:
    import pickle

    tok.encode("warm the cache")
    copy = pickle.loads(pickle.dumps(tok))
    assert copy._cache == {} and copy.encode("a dog") == [320, 1929]


# ---- training new vocabularies --------------------------------------------------------------------------

CAPTIONS = [
    "red apple, fruit, food",
    "green apple, fruit",
    "grinning face, smile, happy",
    "grinning cat with smiling eyes, animal, cat, face",
    "flag: Côte d’Ivoire",
    "woman juggling: medium-dark skin tone",
    "keycap: 7",
] * 20
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sta", "pho", "gri", "nn", "ing", "tion", "ée", "ça", "水", "🙂"]
_RNG = random.Random(0)
CAPTIONS += [  # pseudo-words: enough distinct pairs for a few hundred merges
    ", ".join("".join(_RNG.choices(_SYLLABLES, k=_RNG.randint(1, 4))) for _ in range(5)) for _ in range(300)
]


def test_train_bpe_format_and_round_trip(tmp_path: Path) -> None:
    from torchclip.bpe_train import main, train_bpe

    t = train_bpe(CAPTIONS, 600, min_frequency=1)
    assert len(t.merges) == 600 - 514 and t.vocab_size == 600
    assert (t.sot_id, t.eot_id, t.pad_id) == (598, 599, 0)
    check_compatible(t, TextConfig(vocab_size=600))
    assert len(t.encode("grinning face")) < len(b"grinning face")  # it learned something
    assert train_bpe(CAPTIONS, 600, min_frequency=1).merges == t.merges  # reproducible
    assert len({"".join(m) for m in t.merges}) == len(t.merges)  # one id per string
    path = t.save(tmp_path / "v.txt.gz")
    back = Tokenizer.from_file(path)
    for text in CAPTIONS[:7] + CAPTIONS[-3:] + ["unseen words: zebra 42 🦓"]:
        ids = back.encode(text)
        assert ids == t.encode(text) and max(ids) < back.vocab_size - 2
        assert back.decode(ids).replace(" ", "") == t.decode(ids).replace(" ", "")
    out = back(CAPTIONS[:3])
    assert out[0, 0] == 598 and (out == 599).sum() == 3
    # min_frequency stops early: vocab_size is an upper bound
    assert 0 < len(train_bpe(CAPTIONS, 10_000).merges) < 10_000 - 514
    with pytest.raises(ValueError):
        train_bpe(CAPTIONS, 100)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(CAPTIONS), encoding="utf-8")
    main([str(corpus), "--vocab-size", "600", "--min-frequency", "1", "-o", str(tmp_path / "cli.txt")])
    assert Tokenizer.from_file(tmp_path / "cli.txt").merges == t.merges


def test_trained_segmentation_matches_bpe_encode() -> None:
    """Training and encoding must agree: every training word encodes to symbols that exist in the vocab."""
    from torchclip.bpe_train import train_bpe, word_counts

    t = train_bpe(CAPTIONS, 700, min_frequency=1)
    for word in word_counts(CAPTIONS):
        symbols = t.bpe(word)
        assert all(s in t.encoder for s in symbols)
    ids = np.concatenate([t.encode(c) for c in CAPTIONS[:7]])
    assert ids.max() < t.sot_id
