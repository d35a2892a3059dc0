"""OpenAI's text cleaning for the tokenizer, and a fast path proven equal to it.

OpenAI cleans every text with ``ftfy.fix_text``, HTML-unescapes it twice, collapses whitespace and
lower-cases it. ftfy alone costs ~200 us for a 100-character non-ASCII caption, more than everything else in
tokenization together, and on almost every real caption it changes nothing. ``chunks`` returns the cleaned
text's space-separated chunks, taking a shortcut only where the result is provably ftfy's:

A. printable ASCII (+ tab, LF, FF, CR) without ``&``: ftfy returns ASCII unchanged (its mojibake step is
   skipped for ASCII, its other fixers act on non-ASCII or control characters only, and CR -> LF is erased by
   the whitespace collapse); ``html.unescape`` needs ``&``. Cleaning = split on whitespace + lower-case.
B. printable ASCII (+ tab) with ``&``, one line: ftfy's loop only re-applies its own HTML unescaping until the
   text stops changing (skipped when the line has ``<``); followed while every step stays printable ASCII.
C. one line of non-ASCII text without ``&``, without any character one of ftfy's fixers rewrites (control
   characters, C1, ligatures, full/half-width forms, surrogates, line separators) except curly quotes, already
   NFC, on which ftfy's mojibake detector ``is_bad`` finds nothing: ftfy's only change is uncurling quotes.

Everything else goes through ftfy itself. The shortcut reads ftfy's own tables and is enabled only for the
ftfy major version it was checked against (6); tests compare it with ftfy on the fixture set and generated
text (tests/test_tokenizer_props.py).
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable
from typing import NamedTuple

import ftfy
import regex

__all__ = ["clean_text", "chunks", "ascii_inert", "required_chars"]

_WHITESPACE = regex.compile(r"\s+")
# Outside printable ASCII + \t \n \f \r, or '&': ftfy or html.unescape may act (route A excludes these).
_NOT_INERT = re.compile(r"[^\t\n\x0c\r\x20-\x25\x27-\x7e]")
_NOT_PRINTABLE = re.compile(r"[^\t\x20-\x7e]")


def clean_text(text: str) -> str:
    """OpenAI's cleaning, in its order: ftfy, HTML-unescape twice, strip, collapse ``\\s+``, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def ascii_inert(text: str) -> bool:
    """Route A: printable ASCII (+ \\t \\n \\f \\r) without '&', where ftfy and html.unescape change nothing."""
    return text.isascii() and _NOT_INERT.search(text) is None


try:  # the stdlib regex parser: Python >= 3.11, then 3.10
    from re import _constants as _sre_c  # type: ignore[attr-defined]
    from re import _parser as _sre_p  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_constants as _sre_c
    import sre_parse as _sre_p


def _class_chars(items: list) -> set[str] | None:
    """Characters of a parsed ``[...]`` class, or None unless it is a plain set of non-ASCII characters."""
    out: set[str] = set()
    for op, av in items:
        if op is _sre_c.LITERAL and av >= 0x80:
            out.add(chr(av))
        elif op is _sre_c.RANGE and av[0] >= 0x80:
            out.update(map(chr, range(av[0], av[1] + 1)))
        else:
            return None
    return out


def required_chars(seq: list) -> set[str] | None:
    """A (smallest found) set of non-ASCII characters that every match of a parsed pattern must contain.

    Applied to ftfy's mojibake detector: a text holding none of these characters cannot match it, so its
    large regex need not run. None when some alternative can match without a non-ASCII character.
    """
    best = None
    for op, av in seq:
        cand = None
        if op is _sre_c.LITERAL and av >= 0x80:
            cand = {chr(av)}
        elif op is _sre_c.IN:
            cand = _class_chars(av)
        elif op is _sre_c.BRANCH:
            parts = [required_chars(list(alt)) for alt in av[1]]
            cand = None if any(p is None for p in parts) else set().union(*parts)
        elif op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT) and av[0] >= 1:
            cand = required_chars(list(av[2]))
        elif op is _sre_c.SUBPATTERN:
            cand = required_chars(list(av[-1]))
        if cand is not None and (best is None or len(cand) < len(best)):
            best = cand
    return best


class _Ftfy(NamedTuple):
    touched: re.Pattern  # characters some ftfy fixer rewrites (quotes aside), plus '&' and line breaks
    uncurl: dict  # str.translate table of ftfy's uncurl_quotes
    quotes: re.Pattern
    is_bad: Callable[[str], bool]  # ftfy's mojibake detector, behind a cheap character prefilter
    unescape_html: Callable[[str], str]


def _build_shortcut() -> _Ftfy | None:
    """ftfy's own tables behind routes B and C, or None (always call ftfy) for an unverified ftfy."""
    try:
        if ftfy.__version__.split(".")[0] != "6":
            return None
        from ftfy.badness import BADNESS_RE, is_bad
        from ftfy.chardata import CONTROL_CHARS, DOUBLE_QUOTE_RE, LIGATURES, SINGLE_QUOTE_RE, WIDTH_MAP
        from ftfy.fixes import unescape_html
    except (ImportError, AttributeError):  # pragma: no cover - a restructured ftfy
        return None
    rewritten = set(CONTROL_CHARS) | set(LIGATURES) | set(WIDTH_MAP)
    rewritten |= {ord(c) for c in "&\n\r\x1b\x85\u2028\u2029"} | set(range(0x80, 0xA0))
    touched = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(rewritten)) + "\ud800-\udfff]")
    quotes = {c: "'" for c in map(chr, range(0x10000)) if SINGLE_QUOTE_RE.fullmatch(c)}
    quotes.update({c: '"' for c in map(chr, range(0x10000)) if DOUBLE_QUOTE_RE.fullmatch(c)})
    quote_re = re.compile("[" + "".join(map(re.escape, quotes)) + "]")
    try:
        required = required_chars(list(_sre_p.parse(BADNESS_RE.pattern, BADNESS_RE.flags)))
    except Exception:  # pragma: no cover - parser internals changed: no prefilter
        required = None
    if required is not None:
        prefilter = re.compile("[" + "".join(map(re.escape, sorted(required))) + "]").search

        def is_bad_fast(text: str) -> bool:
            return prefilter(text) is not None and is_bad(text)

    return _Ftfy(
        touched, str.maketrans(quotes), quote_re, is_bad if required is None else is_bad_fast, unescape_html
    )


_SHORTCUT = _build_shortcut()


def _collapse(text: str) -> list[str]:
    return _WHITESPACE.sub(" ", text.strip()).strip().lower().split(" ")


def _route_b(text: str) -> list[str] | None:
    """Printable ASCII with '&' on one line: ftfy = its HTML unescaping to a fixpoint (absent '<')."""
    if _SHORTCUT is None or "\n" in text or "\r" in text or _NOT_PRINTABLE.search(text):
        return None
    unescape = _SHORTCUT.unescape_html
    if "<" not in text:
        while True:
            nxt = unescape(text)
            if nxt == text:
                break
            if not nxt.isascii() or _NOT_PRINTABLE.search(nxt):
                return None  # ftfy would go on to act on what the entity produced
            text = nxt
    text = html.unescape(html.unescape(text))
    return _collapse(text) if text.strip() else []


def _route_c(text: str) -> list[str] | None:
    """Non-ASCII, one line, no '&': ftfy only uncurls quotes when nothing else applies (see module doc)."""
    if _SHORTCUT is None:
        return None
    sc = _SHORTCUT
    if sc.touched.search(text) or not unicodedata.is_normalized("NFC", text) or sc.is_bad(text):
        return None
    if sc.quotes.search(text):
        text = text.translate(sc.uncurl)
        if not unicodedata.is_normalized("NFC", text) or sc.is_bad(text):
            return None
    # No '&' (so html.unescape is the identity) and no \x1c-\x1f (so str.split agrees with regex's \s).
    return text.lower().split()


def chunks(text: str) -> list[str]:
    """The cleaned text's space-separated chunks (``clean_text(text).split()``), by the cheapest exact route."""
    if text.isascii():
        if _NOT_INERT.search(text) is None:
            return text.lower().split()
        out = _route_b(text) if "&" in text else None
    else:
        out = _route_c(text)
    if out is None:
        cleaned = clean_text(text)
        return cleaned.split(" ") if cleaned else []
    return out
