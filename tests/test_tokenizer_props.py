"""Property tests: the tokenizer on generated text, and the claims behind the fast cleaning path.

The fast path skips ftfy / HTML unescaping where it can prove them to be no-ops (torchclip.textclean); each
claim is tested here against ftfy itself, on generated text aimed at the edges (entities, mojibake, quotes,
control characters, surrogates, odd whitespace), so a different ftfy that breaks one fails loudly.
"""

from __future__ import annotations

import sys

import ftfy
import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchclip import textclean
from torchclip.textclean import ascii_inert, chunks, clean_text, fix_text_fast
from torchclip.tokenizer import EOT_TOKEN, PATTERN, SOT_TOKEN, ContextLengthError, Tokenizer, load_tokenizer

VOCAB = "fixtures/tokenizer/bpe_simple_vocab_16e6.txt.gz"
PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def tok(shared) -> Tokenizer:
    return load_tokenizer(shared(VOCAB))


# Any code point, lone surrogates included (ftfy replaces them; UTF-8 cannot encode them).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
# Fragments that exercise each cleaning route: HTML entities, mojibake, curly quotes, ligatures, wide forms,
# control characters, every kind of whitespace, accents, scripts, emoji with ZWJ and tags, special strings.
FRAGMENTS = [
    "a",
    "Cat",
    "DOG",
    " ",
    "  ",
    "\t",
    "\n",
    "\r",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x85",
    "\xa0",
    "\u2028",
    "\u3000",
    "\u200b",
    "&",
    "&amp;",
    "&amp;amp;",
    "&amp;amp;amp;",
    "&lt;",
    "&gt;",
    "<",
    ">",
    "&#39;",
    "&#x27;",
    "&quot;",
    "&eacute;",
    "&EACUTE;",
    "&nbsp;",
    "&#1;",
    "&#128;",
    "&#8217;",
    "&#0;",
    "&bogus;",
    "&amp",
    ";",
    "#",
    "é",
    "É",
    "ß",
    "İ",
    "ſ",
    "K",
    "ñ",
    "ç",
    "Ã©",
    "â€™",
    "Ã",
    "Â",
    "Â ",
    "Ã ",
    "â€œ",
    "ÃƒÂ",
    "Ã¼",
    "Ã\xa0",
    "вЂ",
    "√±",
    "‘",
    "’",
    "“",
    "”",
    "ʼ",
    "‚",
    "ﬁ",
    "ﬂ",
    "Ǆ",
    "ＦＵＬＬ",
    "ｶ",
    "日本語",
    "한국어",
    "ไทย",
    "עברית",
    "العربية",
    "Ελληνικά",
    "кириллица",
    "😀",
    "👍🏽",
    "👨‍👩‍👧",
    "🏴󠁧󠁢󠁥󠁮󠁧󠁿",
    "\u0301",
    "e\u0301",
    "\x1b[31m",
    "\x7f",
    "\x80",
    "\x9d",
    "\ufeff",
    "\ufffd",
    "\ud83d",
    "\ud83d\ude00",
    "½",
    "²",
    "°",
    "×",
    "'s",
    "'T",
    "'re",
    "'LL",
    "'ſ",
    "n't",
    "2021",
    "٣",
    "Ⅻ",
    SOT_TOKEN,
    EOT_TOKEN,
    "<|endoftext|",
    "</w>",
]
EDGE_TEXT = st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join)
ASCII_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=60)
ENTITY_TEXT = st.lists(
    st.sampled_from([*FRAGMENTS[:36], "x", "1", ".", "lt", "gt", "#x", "amp", "&#", "<b>"]), max_size=12
).map("".join)
TEXTS = st.one_of(ANY_TEXT, EDGE_TEXT, ASCII_TEXT, ENTITY_TEXT)


def _reference_chunks(text: str) -> list[str]:
    cleaned = clean_text(text)
    return cleaned.split(" ") if cleaned else []


# ---- the tokenizer on any text --------------------------------------------------------------------------


@PROPS
@given(text=TEXTS)
def test_fast_path_equals_exact_path(tok: Tokenizer, text: str) -> None:
    assert tok.encode(text) == tok.encode_exact(text)


@PROPS
@given(texts=st.lists(TEXTS, min_size=1, max_size=4), ctx=st.integers(2, 80))
def test_any_text_tokenizes_within_vocab_and_truncates(tok: Tokenizer, texts: list[str], ctx: int) -> None:
    out = tok(texts, context_length=ctx, truncate=True)
    assert out.shape == (len(texts), ctx)
    assert int(out.min()) >= 0 and int(out.max()) < tok.vocab_size
    for row, text in zip(out.tolist(), texts):
        full = [tok.sot_id, *tok.encode(text), tok.eot_id]
        if len(full) <= ctx:
            assert row == full + [tok.pad_id] * (ctx - len(full))
        else:
            assert row[:-1] == full[: ctx - 1] and row[-1] == tok.eot_id
    longest = max(len(tok.encode(t)) + 2 for t in texts)
    if longest > ctx:
        with pytest.raises(ContextLengthError):
            tok(texts, context_length=ctx)
    else:
        assert tok(texts, context_length=ctx).equal(out)


@PROPS
@given(text=TEXTS)
def test_decode_inverts_encode_up_to_piece_spacing(tok: Tokenizer, text: str) -> None:
    """decode(encode(x)) is the cleaned, lower-cased x with its pre-tokenization pieces each followed by one
    space: exactly ``"".join(p + " " for p in pieces)``, the special-token strings (no ``</w>``) excepted.
    So, up to whitespace, decode(encode(x)) == clean(x): equal once all spaces are removed."""
    pieces = PATTERN.findall(clean_text(text))
    decoded = tok.decode(tok.encode(text))
    assert decoded == "".join(p if p in (SOT_TOKEN, EOT_TOKEN) else p + " " for p in pieces)
    assert decoded.replace(" ", "") == clean_text(text).replace(" ", "")


# ---- the cleaning shortcut, claim by claim --------------------------------------------------------------


@PROPS
@given(text=TEXTS)
def test_chunks_equal_full_cleaning(text: str) -> None:
    assert chunks(text) == _reference_chunks(text)
    assert "\x00" not in clean_text(text)  # tokenizer._rows marks the end of each text with NUL


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.sampled_from("\t\n\x0c\r !\"#$%'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~"), max_size=80))
def test_route_a_printable_ascii_needs_no_ftfy(text: str) -> None:
    assert ascii_inert(text)
    assert ftfy.fix_text(text).split() == text.split()  # ftfy at most turns CR into LF
    assert clean_text(text) == " ".join(text.lower().split())


def test_route_a_character_set_is_exactly_what_ftfy_leaves_alone() -> None:
    """Every ASCII character, alone and between letters: route A admits it iff ftfy + unescape keep it."""
    for code in range(128):
        c = chr(code)
        for text in (c, f"a{c}b", f"{c}{c}x"):
            kept = clean_text(text) == " ".join(text.lower().split())
            if ascii_inert(text):
                assert kept, repr(text)
        assert ascii_inert(c) == (c not in "&\x0b\x7f" and (code >= 32 or c in "\t\n\x0c\r")), repr(c)


@PROPS
@given(text=TEXTS)
def test_fix_text_fast_is_ftfy_or_declines(text: str) -> None:
    fixed = fix_text_fast(text)
    assert fixed is None or fixed == ftfy.fix_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "&amp;amp;amp;lt;b&amp;amp;amp;gt;",  # ftfy unescapes to a fixpoint, html.unescape twice more
        "< &amp;amp;amp;lt;",  # a '<' turns ftfy's unescaping off: only the two html.unescape passes
        "x <b>&amp;amp;amp;</b>",
        "a&amp;amp;amp;#39;b &amp",
        "AT&T &bogus; &#X41; &EACUTE;",
        "line &amp;amp;amp;\n<b> &amp;amp;amp;\nthird &amp;amp;amp;",  # '<' on line 2 stops it for good
        "caf&eacute; &#8217;quoted&#8217; “x”",  # unescaping produces quotes that are then uncurled
    ],
)
def test_replay_on_entities(text: str) -> None:
    assert fix_text_fast(text) == ftfy.fix_text(text)
    assert chunks(text) == _reference_chunks(text)


def test_replay_applies_to_typical_captions() -> None:
    """The replay must actually take ordinary captions, or the fast path silently degrades to ftfy."""
    assert textclean.shortcut() is not None
    assert fix_text_fast("Côte d’Ivoire, 日本語 😀") == "Côte d'Ivoire, 日本語 😀"
    assert fix_text_fast("salt &amp; pepper") == "salt & pepper"
    assert fix_text_fast("naïve café\nsecond line") == "naïve café\nsecond line"
    assert fix_text_fast("cafÃ© mojibake") is None  # mojibake: ftfy has real work to do
    assert fix_text_fast("ﬁne") is None and fix_text_fast("e\u0301") is None
    assert chunks("cafÃ© mojibake") == ["café", "mojibake"]


def _badness():
    from ftfy.badness import BADNESS_RE

    return BADNESS_RE, textclean.required_chars(
        list(textclean._sre_p.parse(BADNESS_RE.pattern, BADNESS_RE.flags))
    )


def test_mojibake_detector_analysis() -> None:
    """Every match of ftfy's detector holds a character of ``required_chars`` and is at most 7 long, and the
    pattern has no lookaround or end anchor, so the windowed search is exact (and actually used)."""
    pattern, required = _badness()
    assert required is not None and {"Ã", "Â", "€"} <= required and not any(c.isascii() for c in required)
    tree = textclean._sre_p.parse(pattern.pattern, pattern.flags)
    assert textclean._local(list(tree)) and tree.getwidth()[1] <= 64
    assert textclean.shortcut().is_bad.__name__ == "windowed"
    for sample in (
        "cafÃ©",
        "â€™",
        "Ã ",
        "Â Ã ",
        "вЂ",
        "√±",
        "plain text é",
        "Ø¹Ø±Ø¨",
        "ГўВЂВ™s",
        "x" * 50 + "Ã ",
    ):
        assert textclean.shortcut().is_bad(sample) == bool(pattern.search(sample)), sample
    assert not textclean._local(list(textclean._sre_p.parse(r"a(?=b)|c$", 0)))


def test_windowed_search_bounds() -> None:
    """The window around a required character reaches exactly ``width - 1`` characters each way."""
    import re

    never = lambda text: pytest.fail("the windowed search should not fall back")  # noqa: E731
    ends = textclean._mojibake_detector(re.compile("x.....é"), never)  # required char last
    starts = textclean._mojibake_detector(re.compile("é.....x"), never)  # required char first
    middle = textclean._mojibake_detector(re.compile("^éb|cd[éè]e{1,3}f?"), never)
    assert ends.__name__ == starts.__name__ == middle.__name__ == "windowed"
    assert ends("aax12345éaa") and ends("x12345é") and not ends("x1234é") and not ends("aaaa")
    assert starts("aaé12345xaa") and starts("é12345x") and not starts("é1234x") and not starts("é12345")
    assert starts("éé12345x") and starts("é é12345x") and not starts("éé123x")  # merged windows
    assert middle("cdée") and middle("zzcdèeef") and middle("ébz") and not middle("zéb") and not middle("cdé")
    both = textclean._mojibake_detector(re.compile("é.x|y.è"), never)
    assert both("é1x") and both("y1è") and both("abé2x  y3è") and not both("é12x y12è")


def _branch_examples(pattern) -> list[str]:
    """One matching string per top-level alternative of a parsed pattern (first member of each class)."""
    c = textclean._sre_c

    def one(seq) -> str:
        out = ""
        for op, av in seq:
            if op is c.LITERAL:
                out += chr(av)
            elif op is c.IN:
                members = textclean._class_chars(av)
                if members:
                    out += min(members)
                elif av[0][0] is c.NEGATE:
                    out += "1"
                else:
                    out += "a" if any(a == c.CATEGORY_WORD for _, a in av) else " "
            elif op is c.ANY:
                out += "x"
            elif op is c.BRANCH:
                out += one(list(av[1][0]))
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
                out += one(list(av[2])) * av[0]
            elif op is c.SUBPATTERN:
                out += one(list(av[-1]))
        return out

    tree = list(textclean._sre_p.parse(pattern.pattern, pattern.flags))
    branches = tree[0][1][1] if len(tree) == 1 and tree[0][0] is c.BRANCH else [tree]
    return [one(list(b)) for b in branches]


def test_mojibake_detector_on_every_alternative() -> None:
    pattern, _ = _badness()
    examples = _branch_examples(pattern)
    assert len(examples) > 20 and sum(bool(pattern.search(ex)) for ex in examples) > 0.8 * len(examples)
    for ex in examples:
        for text in (ex, "qq qq " + ex + " qq", ex + "q" * 20):
            assert textclean.shortcut().is_bad(text) == bool(pattern.search(text)), text


_MOJIBAKE_ALPHABET = sorted(_badness()[1]) + list("aAzZ .,?!'\"-\n\t0") + ["\xa0", "’", "–", "ſ", "日"]


@settings(max_examples=250, deadline=None)
@given(text=st.one_of(st.text(st.sampled_from(_MOJIBAKE_ALPHABET), max_size=40), EDGE_TEXT, ANY_TEXT))
def test_windowed_mojibake_detector_agrees_with_ftfy(text: str) -> None:
    from ftfy.badness import is_bad

    assert textclean.shortcut().is_bad(text) == is_bad(text)


def test_whitespace_facts_behind_str_split() -> None:
    """Python's str.split and regex's \\s differ only on U+001C-U+001F, which ftfy deletes, and lower-casing
    never creates or removes whitespace: so splitting cleaned text with str.split is OpenAI's collapse."""
    from ftfy.chardata import CONTROL_CHARS

    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    regex_ws = set(regex.findall(r"\s", every))
    python_ws = {c for c in every if c.isspace()}
    assert python_ws - regex_ws == set("\x1c\x1d\x1e\x1f") and not regex_ws - python_ws
    assert all(ord(c) in CONTROL_CHARS for c in "\x1c\x1d\x1e\x1f")
    assert all(c.lower() == c for c in python_ws)
    assert not any(x.isspace() for c in every if not c.isspace() for x in c.lower())
