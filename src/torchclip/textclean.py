"""OpenAI's text cleaning for the tokenizer, and a fast path proven equal to it.

OpenAI cleans every text with ``ftfy.fix_text``, HTML-unescapes it twice, collapses whitespace and
lower-cases it. ftfy costs 50-200 us on a typical non-ASCII caption, more than everything else in
tokenization together, yet on almost every real caption it changes nothing or only uncurls quotes.
``chunks`` returns the cleaned text's space-separated chunks and avoids calling ftfy where its result is
known exactly:

A. Printable ASCII (+ tab, LF, FF, CR) without ``&``: ftfy returns ASCII unchanged (its mojibake step is
   skipped for ASCII, its other fixers act on non-ASCII or control characters only, and CR -> LF is erased by
   the whitespace collapse) and ``html.unescape`` needs ``&``: cleaning = split on whitespace + lower-case.
B. Otherwise ``fix_text_fast`` replays ftfy's own algorithm for the cases where only its cheap steps act:
   ftfy cuts the text into lines and, per line, repeats passes (HTML unescape unless a line so far had ``<``;
   mojibake repair, entered only if its detector ``is_bad`` fires; character fixers; NFC) until a pass
   changes nothing. The replay proceeds while every pass needs nothing but unescaping, quote uncurling and
   control-character removal: no character another fixer rewrites (C1, ligature, full/half width,
   surrogate, CR, Unicode line separators), no terminal escape (ESC [), the text already NFC and ``is_bad``
   silent. ``is_bad`` is one large regex; every match holds one of ~290 characters and is at most 7 long,
   so it is searched only in the windows around those characters (exactly equal, see
   ``_mojibake_detector``). Anything else returns None and ftfy itself runs.

The replay reads ftfy's own tables and is enabled only for the ftfy major version it was checked against
(6); tests/test_tokenizer_props.py checks each claim against ftfy on the fixtures and on generated text.
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata
from collections.abc import Callable
from typing import NamedTuple

import ftfy
import regex

__all__ = ["clean_text", "chunks", "ascii_inert", "fix_text_fast", "required_chars"]

_WHITESPACE = regex.compile(r"\s+")
# Outside printable ASCII + \t \n \f \r, or '&': ftfy or html.unescape may act (route A excludes these).
_NOT_INERT = re.compile(r"[^\t\n\x0c\r\x20-\x25\x27-\x7e]")


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


def _local(seq: list) -> bool:
    """True when a parsed pattern only consumes characters: no lookaround, no end or word-boundary anchor
    (a start anchor is fine: ``search(text, pos)`` honours it only at the true start). Then a match within
    ``text[pos:endpos]`` is a match in ``text`` and vice versa, which windowed searching relies on."""
    for op, av in seq:
        if op in (_sre_c.LITERAL, _sre_c.NOT_LITERAL, _sre_c.IN, _sre_c.ANY):
            continue
        if op is _sre_c.AT and av in (_sre_c.AT_BEGINNING, _sre_c.AT_BEGINNING_STRING):
            continue
        if op is _sre_c.BRANCH and all(_local(list(alt)) for alt in av[1]):
            continue
        if op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT) and _local(list(av[2])):
            continue
        if op is _sre_c.SUBPATTERN and _local(list(av[-1])):
            continue
        return False
    return True


def _mojibake_detector(pattern: re.Pattern, fallback: Callable[[str], bool]) -> Callable[[str], bool]:
    """ftfy's ``is_bad`` (``pattern.search``), computed only where a match can be.

    Every match holds a character of ``required_chars`` and is at most ``width`` long, so it lies within
    ``width - 1`` characters of one: without such characters the answer is False, else only the windows
    around them are searched. Falls back to ``fallback`` when the pattern defeats this analysis.
    """
    try:
        tree = _sre_p.parse(pattern.pattern, pattern.flags)
        required = required_chars(list(tree))
        width = tree.getwidth()[1]
        local = _local(list(tree)) and not pattern.flags & re.MULTILINE and width <= 64
    except Exception:  # pragma: no cover - parser internals changed
        return fallback
    if required is None:
        return fallback
    finder = re.compile("[" + "".join(map(re.escape, sorted(required))) + "]")
    if not local:  # pragma: no cover - only the prefilter

        def prefiltered(text: str) -> bool:
            return finder.search(text) is not None and fallback(text)

        return prefiltered
    search, finditer = pattern.search, finder.finditer

    def windowed(text: str) -> bool:
        lo = hi = -1
        for m in finditer(text):
            p = m.start()
            if hi >= 0 and p - width + 1 <= hi:
                hi = p + width  # overlapping windows merge
                continue
            if hi >= 0 and search(text, lo, hi):
                return True
            lo, hi = max(p - width + 1, 0), p + width
        return hi >= 0 and search(text, lo, hi) is not None

    return windowed


def _class_members(pattern: re.Pattern) -> set[str]:
    """The characters of a one-class pattern such as ftfy's ``[\u201c-\u201f]``."""
    (op, items), *rest = _sre_p.parse(pattern.pattern, pattern.flags)
    members = _class_chars(items) if op is _sre_c.IN and not rest else None
    if members is None:  # pragma: no cover - not a plain class: enumerate
        return {c for c in map(chr, range(0x110000)) if pattern.fullmatch(c)}
    return members


class _Ftfy(NamedTuple):
    touched: re.Pattern  # characters a fixer other than uncurl_quotes / remove_control_chars rewrites
    uncurl: dict  # str.translate table of ftfy's uncurl_quotes
    quotes: re.Pattern
    controls: re.Pattern  # what remove_control_chars deletes
    control_table: dict
    is_bad: Callable[[str], bool]  # ftfy's mojibake detector, searched only where it can match
    unescape_html: Callable[[str], str]


def _build_shortcut() -> _Ftfy | None:
    """ftfy's own tables behind route B, or None (always call ftfy) for an unverified ftfy."""
    try:
        if ftfy.__version__.split(".")[0] != "6":
            return None
        from ftfy.badness import BADNESS_RE, is_bad
        from ftfy.chardata import CONTROL_CHARS, DOUBLE_QUOTE_RE, LIGATURES, SINGLE_QUOTE_RE, WIDTH_MAP
        from ftfy.fixes import unescape_html
    except (ImportError, AttributeError):  # pragma: no cover - a restructured ftfy
        return None
    rewritten = set(LIGATURES) | set(WIDTH_MAP) | set(range(0x80, 0xA0))
    rewritten |= {ord(c) for c in "\r\x85\u2028\u2029"}
    touched = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(rewritten)) + "\ud800-\udfff]")
    controls = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(CONTROL_CHARS)) + "]")
    quotes = dict.fromkeys(_class_members(SINGLE_QUOTE_RE), "'")
    quotes.update(dict.fromkeys(_class_members(DOUBLE_QUOTE_RE), '"'))
    quote_re = re.compile("[" + "".join(map(re.escape, sorted(quotes))) + "]")
    return _Ftfy(
        touched,
        str.maketrans(quotes),
        quote_re,
        controls,
        dict(CONTROL_CHARS),
        _mojibake_detector(BADNESS_RE, is_bad),
        unescape_html,
    )


@functools.lru_cache(maxsize=1)
def shortcut() -> _Ftfy | None:
    """ftfy's tables for the replay, built on first use (parsing ftfy's detector takes a few milliseconds)."""
    return _build_shortcut()


def fix_text_fast(text: str) -> str | None:
    """``ftfy.fix_text(text)`` when only unescaping, quote uncurling and control-character removal would act
    (see the module doc), else None. Mirrors ftfy 6's ``fix_text`` / ``fix_and_explain`` control flow with default settings."""
    sc = shortcut()
    if sc is None or len(text) > 1_000_000:  # ftfy also cuts segments at max_decode_length
        return None
    out = []
    unescape = True  # ftfy turns HTML unescaping off for good at the first line holding '<'
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos) + 1 or len(text)
        line = text[pos:end]
        pos = end
        if unescape and "<" in line:
            unescape = False
        while True:  # ftfy's passes over one line, until one changes nothing
            before = line
            if unescape and "&" in line:
                line = sc.unescape_html(line)
            if sc.touched.search(line) or "\x1b[" in line or not line.isascii() and sc.is_bad(line):
                return None  # another fixer, or mojibake repair, would act
            if sc.quotes.search(line):
                line = line.translate(sc.uncurl)
            if sc.controls.search(line):  # ftfy's last fixer (ESC included: no "ESC [" terminal escape here)
                line = line.translate(sc.control_table)
            if not unicodedata.is_normalized("NFC", line):
                return None
            if line == before:
                break
        out.append(line)
    return "".join(out)


def _collapse(text: str) -> list[str]:
    text = _WHITESPACE.sub(" ", text.strip()).strip().lower()
    return text.split(" ") if text else []


def chunks(text: str) -> list[str]:
    """The cleaned text's space-separated chunks (``clean_text(text).split(" ")``), by the cheapest exact
    route: A (no ftfy at all), B (ftfy's steps replayed) or ftfy itself."""
    if text.isascii() and _NOT_INERT.search(text) is None:
        return text.lower().split()
    fixed = fix_text_fast(text)
    if fixed is None:
        fixed = ftfy.fix_text(text)
    if "&" in fixed:
        return _collapse(html.unescape(html.unescape(fixed)))
    # ftfy's output holds no U+001C-U+001F (removed as control characters), the only characters where
    # str.split and regex's \s disagree; lower-casing neither creates nor removes whitespace.
    return fixed.lower().split()
