"""Checkout sites: frames captured as (code, line) pairs on the hot path, formatted only when shown."""

from __future__ import annotations

import linecache
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Protocol

# (code object, byte offset of the current instruction): cheap to take, formatted lazily.
RawSite = tuple[tuple[CodeType, int], ...]

_MAX_WALK = 48
_MAX_KEPT = 3
_MAX_PATHS = 4
_MAX_CODES = 20_000
_MAX_SITES_PER_PATH = 5_000


class Capture(Protocol):
    def __call__(self, skip: int = 2) -> RawSite: ...


@dataclass(frozen=True, slots=True)
class Frame:
    filename: str
    lineno: int
    function: str
    source: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


class SiteCapture:
    """Finds the app frames that took a connection, skipping library frames.

    Runs on every checkout, where Python 3.11 builds a frame object for each frame touched. The
    library frames between the pool and the app are the same for a given call site, so a walk
    remembers at which depth it met which app call site (function and instruction) first; later
    checkouts jump to that depth in C (`sys._getframe`) and trust the frame there when it stands
    at one of those call sites. Only the frame taken is built, none of the library frames. (One
    call site reaching the pool both through library code alone and through an app function at
    exactly the same depth would report the outer one; a call site is rarely that polymorphic.)
    """

    def __init__(
        self,
        library_prefixes: tuple[str, ...],
        outer_frame: Callable[[], FrameType | None] | None = None,
        max_kept: int = _MAX_KEPT,
        app_prefixes: tuple[str, ...] = (),
    ) -> None:
        self._prefixes = library_prefixes
        # Inside a library prefix but app code all the same (an app installed into site-packages).
        self._app_prefixes = app_prefixes
        # Where the stack continues when it ends without app frames (an async engine runs the
        # pool inside a greenlet; the app's coroutine frames are in the parent greenlet).
        self._outer_frame = outer_frame
        # ids of classified code objects (hashing a code object hashes its bytecode: too slow);
        # `_codes` holds the objects so that no id is reused while it is classified.
        self._app_ids: set[int] = set()
        self._library_ids: set[int] = set()
        self._codes: list[CodeType] = []
        # Known paths, most recent first: a depth (seen from `capture`) and the call sites
        # (code id, instruction offset) a walk found as the first app frame there. Changed in
        # place only: `capture` holds it.
        self._paths: list[tuple[int, set[tuple[int, int]]]] = []
        self.capture = self._capture_function(max_kept)

    def _capture_function(self, max_kept: int) -> Capture:
        """`capture(skip=2)`: app frames of the caller `skip` frames up (0 is `capture` itself),
        innermost first. A closure, not a method: it runs on every checkout, and reading
        closure cells is cheaper than attributes of `self`."""
        getframe = sys._getframe
        paths = self._paths
        app_ids = self._app_ids
        library_ids = self._library_ids
        is_library = self._is_library
        find = self._find
        more_frames = range(max_kept - 1)

        def capture(skip: int = 2) -> RawSite:
            for depth, first_app_sites in paths:
                try:
                    frame = getframe(depth)
                except ValueError:  # a shallower stack: not this path
                    continue
                # f_lasti, not f_lineno: the line is derived from it only when shown.
                code = frame.f_code
                lasti = frame.f_lasti
                # The call site, not only the function: one app function calling the pool
                # directly from one line and through an app helper from another can sit at the
                # same depth both ways, and the helper must not be skipped.
                if (id(code), lasti) in first_app_sites:
                    break
            else:
                first = find(getframe(skip), skip)
                if first is None:
                    return ()
                frame = first
                code = frame.f_code
                lasti = frame.f_lasti
            site: RawSite = ((code, lasti),)
            for _ in more_frames:
                caller = frame.f_back
                if caller is None:
                    break
                code = caller.f_code
                code_id = id(code)
                if code_id not in app_ids and (code_id in library_ids or is_library(code)):
                    break  # past the app: framework and event-loop plumbing
                site += ((code, caller.f_lasti),)
                frame = caller
            return site

        return capture

    def _find(self, frame: FrameType | None, depth: int) -> FrameType | None:
        """The slow path: walk to the first app frame and remember at which depth it was."""
        for _ in range(_MAX_WALK):
            if frame is None:
                break
            code = frame.f_code
            if not self._is_library(code):
                self._remember(depth, (id(code), frame.f_lasti))
                return frame
            frame = frame.f_back
            depth += 1
        if self._outer_frame is not None and frame is None:
            # Not remembered: the depths of another greenlet's stack are not reachable from here.
            frame = self._outer_frame()
            for _ in range(_MAX_WALK):
                if frame is None:
                    break
                if not self._is_library(frame.f_code):
                    return frame
                frame = frame.f_back
        return None

    def _remember(self, depth: int, call_site: tuple[int, int]) -> None:
        for index, (known_depth, first_app_sites) in enumerate(self._paths):
            if known_depth == depth:
                if len(first_app_sites) >= _MAX_SITES_PER_PATH:
                    first_app_sites.clear()  # call sites of code made at run time
                first_app_sites.add(call_site)
                self._paths.insert(0, self._paths.pop(index))
                return
        self._paths[:] = [(depth, {call_site}), *self._paths][:_MAX_PATHS]

    def _is_library(self, code: CodeType) -> bool:
        if id(code) in self._app_ids:
            return False
        if id(code) in self._library_ids:
            return True
        if len(self._codes) >= _MAX_CODES:
            # Code made at run time (exec, templates) would grow the cache without end.
            self._codes.clear()
            self._app_ids.clear()
            self._library_ids.clear()
            self._paths.clear()
        filename = code.co_filename
        library = filename.startswith(self._prefixes) and not (
            self._app_prefixes and filename.startswith(self._app_prefixes)
        )
        self._codes.append(code)
        (self._library_ids if library else self._app_ids).add(id(code))
        return library


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
