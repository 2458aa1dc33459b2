"""SQL text hygiene: literal-free display text and stable fingerprints for grouping.

Query text can carry secrets (`ALTER ROLE ... PASSWORD '...'`, tokens, e-mail addresses), so
nothing shown or stored keeps a literal. pg_stat_activity truncates text mid-token, so both
functions accept any string and never raise.
"""

from __future__ import annotations

import hashlib
import itertools
from functools import lru_cache
from typing import NamedTuple

from pglast import parser as pg_parser

ELLIPSIS = "…"
# Shown when nothing safe can be extracted from the text.
UNREADABLE = ELLIPSIS

# Lexer token names of constants (strings in every quoting style, numbers, bit strings).
_LITERAL_TOKENS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_COMMENT_TOKENS = frozenset({"C_COMMENT", "SQL_COMMENT"})
_SIGN_TOKENS = frozenset({"ASCII_43", "ASCII_45"})  # unary + and -
# psycopg's client-side placeholders: %s, %b, %t and %(name)s.
_CLIENT_PLACEHOLDER_KINDS = frozenset({"s", "b", "t"})

# Bounds that keep the cost and the caches' memory predictable.
MAX_SCAN_CHARS = 16_384  # longer text is cut (a bulk INSERT need not be shown whole)
MAX_PARSE_CHARS = 100_000  # above this, fingerprint hashes the normalised prefix instead
MAX_CACHED_CHARS = 4_096  # longer strings are computed every time rather than cached
CACHE_SIZE = 2_048
_MAX_LEXER_RETRIES = 4


def normalize(sql: str) -> str:
    """`sql` with every literal replaced by `$n`, comments dropped, whitespace collapsed.

    Truncated or broken text is cut before the first token the lexer cannot read, then "…".
    """
    try:
        if len(sql) <= MAX_CACHED_CHARS:
            return _normalize_cached(sql)
        return _normalize(sql)
    except Exception:  # never raise into callers; show nothing rather than something unsafe
        return UNREADABLE


def fingerprint(sql: str) -> str:
    """A 16-hex-digit id shared by statements that differ only in literals or parameters."""
    try:
        if len(sql) <= MAX_CACHED_CHARS:
            return _fingerprint_cached(sql)
        return _fingerprint(sql)
    except Exception:
        return _hash(UNREADABLE)


def cache_clear() -> None:
    """Empty both caches (tests, or after a burst of one-off statements)."""
    _normalize_cached.cache_clear()
    _fingerprint_cached.cache_clear()


@lru_cache(maxsize=CACHE_SIZE)
def _normalize_cached(sql: str) -> str:
    return _normalize(sql)


@lru_cache(maxsize=CACHE_SIZE)
def _fingerprint_cached(sql: str) -> str:
    return _fingerprint(sql)


def _fingerprint(sql: str) -> str:
    if len(sql) <= MAX_PARSE_CHARS:
        try:
            return str(pg_parser.fingerprint(sql))
        except Exception:
            pass  # client placeholders (%(x)s) or truncated text: try the normalised form
    normalized = normalize(sql)
    try:
        return str(pg_parser.fingerprint(normalized))
    except Exception:
        return _hash(normalized)


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).hexdigest()


class _Token(NamedTuple):
    kind: str  # lexer token name, e.g. SCONST, IDENT, ASCII_40
    text: str
    start: int  # character offsets into the scanned text, end exclusive
    end: int


def _normalize(sql: str) -> str:
    # pglast works on UTF-8; lone surrogates and NULs would break or silently end the scan.
    text = sql.encode("utf-8", "replace").decode("utf-8").replace("\x00", " ")
    truncated = len(text) > MAX_SCAN_CHARS
    if truncated:
        text = text[:MAX_SCAN_CHARS]
    scanned = _scan_readable_prefix(text)
    if scanned is None:
        return UNREADABLE
    tokens, cut = scanned
    ambiguous = _first_ambiguous_string(tokens)
    if ambiguous is not None:
        tokens, cut = tokens[: ambiguous + 1], True
    rendered = _render(tokens)
    if truncated or cut:
        return f"{rendered} {ELLIPSIS}" if rendered else ELLIPSIS
    return rendered


def _first_ambiguous_string(tokens: list[_Token]) -> int | None:
    """Index of the first plain string literal holding a backslash, else None.

    The lexer reads strings as standard_conforming_strings=on does; a session running with it
    off reads `'a\\' b c'` as one string, so what follows such a literal may be the rest of a
    literal (a password): fail closed, show nothing after it.
    """
    for index, token in enumerate(tokens):
        if token.kind == "SCONST" and token.text[:1] in ("'", "N", "n") and "\\" in token.text:
            return index
    return None


def _scan_readable_prefix(text: str) -> tuple[list[_Token], bool] | None:
    """Tokens of the longest prefix the lexer accepts, and whether anything was cut."""
    cut = False
    for _ in range(_MAX_LEXER_RETRIES):
        try:
            raw_tokens = pg_parser.scan(text)
        except pg_parser.ParseError as exc:
            # The error position (a character index) is where the unreadable token starts:
            # an unterminated string, comment, quoted identifier or malformed number.
            location = exc.args[1] if len(exc.args) > 1 else None
            if not isinstance(location, int) or not 0 <= location < len(text):
                return None
            text = text[:location]
            cut = True
            continue
        # pglast reports character offsets, the end inclusive.
        tokens = [_Token(t.name, text[t.start : t.end + 1], t.start, t.end + 1) for t in raw_tokens]
        return tokens, cut
    return None


def _render(tokens: list[_Token]) -> str:
    """Join tokens as written (one space where the source had a gap), literals as `$n`."""
    significant = [t for t in tokens if t.kind not in _COMMENT_TOKENS]
    next_number = 1 + max(
        (int(t.text[1:]) for t in significant if t.kind == "PARAM" and t.text[1:].isdigit()),
        default=0,
    )
    pieces: list[str] = []
    previous_end: int | None = None
    i = 0
    while i < len(significant):
        token = significant[i]
        if previous_end is not None and token.start > previous_end:
            pieces.append(" ")
        squashed_end = _constant_list_end(significant, i) if token.text == "(" else None
        if squashed_end is not None:
            # IN (1, 2, 3): one placeholder, so lists of any length read (and group) the same.
            first = significant[i + 1]
            head = first.text if first.kind == "PARAM" else f"${next_number}"
            if first.kind != "PARAM":
                next_number += 1
            pieces.append(f"({head} /*, ... */)")
            previous_end = significant[squashed_end - 1].end
            i = squashed_end
            continue
        value_end = _value_end(significant, i, signed=False)
        if value_end is not None and significant[i].kind != "PARAM":
            pieces.append(f"${next_number}")
            next_number += 1
            previous_end = significant[value_end - 1].end
            i = value_end
            continue
        pieces.append(token.text)
        previous_end = token.end
        i += 1
    return "".join(pieces).strip()


def _value_end(tokens: list[_Token], i: int, *, signed: bool) -> int | None:
    """End index of a literal, parameter or client placeholder starting at `i`, else None."""
    if (
        signed
        and tokens[i].kind in _SIGN_TOKENS
        and i + 1 < len(tokens)
        and _adjacent(tokens[i], tokens[i + 1])
        and tokens[i + 1].kind in _LITERAL_TOKENS
    ):
        return i + 2
    kind = tokens[i].kind
    if kind in _LITERAL_TOKENS or kind == "PARAM":
        return i + 1
    if tokens[i].text != "%":
        return None
    # %s / %(name)s: every part written together, as drivers generate them.
    following = tokens[i + 1 : i + 5]
    if following and _adjacent(tokens[i], following[0]):
        if following[0].kind == "IDENT" and following[0].text in _CLIENT_PLACEHOLDER_KINDS:
            return i + 2
        if (
            len(following) == 4
            and [t.text for t in following[::2]] == ["(", ")"]
            and following[3].text in _CLIENT_PLACEHOLDER_KINDS
            and all(_adjacent(a, b) for a, b in itertools.pairwise(following))
        ):
            return i + 5
    return None


def _constant_list_end(tokens: list[_Token], i: int) -> int | None:
    """End index (after ")") of a parenthesised list of two or more values at `i`, else None."""
    if tokens[i].text != "(" or i == 0 or tokens[i - 1].kind != "IN_P":
        return None
    j = i + 1
    count = 0
    while j < len(tokens):
        value_end = _value_end(tokens, j, signed=True)
        if value_end is None:
            return None
        count += 1
        j = value_end
        if j < len(tokens) and tokens[j].text == ",":
            j += 1
            continue
        if j < len(tokens) and tokens[j].text == ")" and count >= 2:
            return j + 1
        return None
    return None


def _adjacent(a: _Token, b: _Token) -> bool:
    return a.end == b.start
