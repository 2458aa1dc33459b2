"""Checkout sites: frames captured as (code, line) pairs on the hot path, formatted only when shown."""

from __future__ import annotations

import linecache
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FrameType

# (code object, byte offset of the current instruction): cheap to take, formatted lazily.
RawSite = tuple[tuple[CodeType, int], ...]

_MAX_WALK = 48
_MAX_KEPT = 3
_LIBRARY_RUN_STOP = 3


@dataclass(frozen=True, slots=True)
class Frame:
    filename: str
    lineno: int
    function: str
    source: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


class SiteCapture:
    """Walks the caller's stack, skipping library frames (decided once per code object).

    The library frames between the listener and the app are the same for a given call path, so
    their count is cached per path and skipped in one C-level `sys._getframe` jump.
    """

    def __init__(
        self,
        library_prefixes: tuple[str, ...],
        outer_frame: Callable[[], FrameType | None] | None = None,
    ) -> None:
        self._prefixes = library_prefixes
        # Where the stack continues when it ends without app frames (an async engine runs the
        # pool inside a greenlet; the app's coroutine frames are in the parent greenlet).
        self._outer_frame = outer_frame
        # Keyed by id(): hashing a code object hashes its bytecode, far too slow per frame.
        # The value holds the code object, so its id cannot be reused while it is cached.
        self._is_library: dict[int, tuple[CodeType, bool]] = {}
        self._skip_by_path: dict[int, int] = {}
        self._keep_alive: dict[int, CodeType] = {}

    def capture(self, skip: int = 2) -> RawSite:
        # Python 3.11 builds a frame object for every frame touched from Python, so the walk is
        # kept short: jump over the known library frames in C, verify the jump, walk a few frames.
        getframe = sys._getframe
        caller = getframe(skip).f_code
        leading = self._skip_by_path.get(id(caller))
        if leading:
            try:
                before, start = getframe(skip + leading - 1), getframe(skip + leading)
            except ValueError:
                leading = None
            else:
                # Another call path behind the same caller: walk it once and remember it.
                if not self._library(before.f_code) or self._library(start.f_code):
                    leading = None
        if leading is None:
            kept, leading = self._walk(getframe(skip))
            if not kept and self._outer_frame is not None:
                return self._walk(self._outer_frame())[0]
            self._skip_by_path[id(caller)] = leading
            self._keep_alive[id(caller)] = caller
            return kept
        return self._walk(start)[0] if leading else self._walk(getframe(skip))[0]

    def _library(self, code: CodeType) -> bool:
        known = self._is_library.get(id(code))
        if known is None:
            known = self._is_library[id(code)] = (code, code.co_filename.startswith(self._prefixes))
        return known[1]

    def _walk(self, frame: FrameType | None) -> tuple[RawSite, int]:
        """App frames from `frame` outwards, and how many library frames preceded the first."""
        # Runs on every checkout: the library lookup is inlined and names are bound locally.
        is_library = self._is_library
        prefixes = self._prefixes
        kept: list[tuple[CodeType, int]] = []
        leading = 0
        library_run = 0
        walked = 0
        while frame is not None and walked < _MAX_WALK:
            code = frame.f_code
            known = is_library.get(id(code))
            if known is None:
                known = is_library[id(code)] = (code, code.co_filename.startswith(prefixes))
            if known[1]:
                if not kept:
                    leading += 1
                else:
                    library_run += 1
                    if library_run >= _LIBRARY_RUN_STOP:
                        break  # past the app: framework and event-loop plumbing
            else:
                library_run = 0
                # f_lasti, not f_lineno: the line is derived from it only when shown (0.6 us saved).
                kept.append((code, frame.f_lasti))
                if len(kept) >= _MAX_KEPT:
                    break
            frame = frame.f_back
            walked += 1
        return tuple(kept), leading


def format_site(raw: RawSite) -> tuple[Frame, ...]:
    """Innermost frame first: the line that took the connection, then its callers."""
    frames = []
    for code, lasti in raw:
        lineno = line_of(code, lasti)
        frames.append(
            Frame(
                filename=code.co_filename,
                lineno=lineno,
                function=code.co_name,
                source=linecache.getline(code.co_filename, lineno).strip(),
            )
        )
    return tuple(frames)


def line_of(code: CodeType, lasti: int) -> int:
    """Source line of the instruction at byte offset `lasti` (what `frame.f_lineno` computes)."""
    for start, end, line in code.co_lines():
        if start <= lasti < end and line is not None:
            return line
    return code.co_firstlineno
