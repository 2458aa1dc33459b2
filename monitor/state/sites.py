"""Checkout sites: frames captured as (code, line) pairs on the hot path, formatted only when shown."""

from __future__ import annotations

import linecache
import sys
from dataclasses import dataclass
from types import CodeType

RawSite = tuple[tuple[CodeType, int], ...]

_MAX_WALK = 48
_MAX_KEPT = 8


@dataclass(frozen=True, slots=True)
class Frame:
    filename: str
    lineno: int
    function: str
    source: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


class SiteCapture:
    """Walks the caller's stack, skipping library frames (decided once per code object)."""

    def __init__(self, library_prefixes: tuple[str, ...]) -> None:
        self._prefixes = library_prefixes
        self._is_library: dict[CodeType, bool] = {}

    def capture(self, skip: int = 2) -> RawSite:
        frame = sys._getframe(skip)
        is_library = self._is_library
        kept: list[tuple[CodeType, int]] = []
        walked = 0
        while frame is not None and walked < _MAX_WALK:
            code = frame.f_code
            library = is_library.get(code)
            if library is None:
                library = is_library[code] = code.co_filename.startswith(self._prefixes)
            if not library:
                kept.append((code, frame.f_lineno))
                if len(kept) >= _MAX_KEPT:
                    break
            frame = frame.f_back  # type: ignore[assignment]
            walked += 1
        return tuple(kept)


def format_site(raw: RawSite) -> tuple[Frame, ...]:
    """Innermost frame first: the line that took the connection, then its callers."""
    return tuple(
        Frame(
            filename=code.co_filename,
            lineno=lineno,
            function=code.co_name,
            source=linecache.getline(code.co_filename, lineno).strip(),
        )
        for code, lineno in raw
    )
