"""Logging filters for the server's own loggers: no secret in the access log, no log flood.

`uvicorn.access` logs the full request target, query string included: a token someone put in a
URL (an old bookmark, a guess) is masked before the line is written. When the process runs out
of file descriptors every accept fails and logs a traceback: those lines are rate-limited.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

_SECRET_PARAM = re.compile(r"([?&](?:token|access_token|api_key|password)=)[^&#\s]*", re.IGNORECASE)
ACCESS_LOGGERS = ("uvicorn.access", "gunicorn.access")
# Where "Too many open files" is logged from: asyncio's accept loop and uvicorn's server.
FLOOD_LOGGERS = ("asyncio", "uvicorn.error", "uvicorn")


def mask_query_secrets(text: str) -> str:
    return _SECRET_PARAM.sub(r"\1***", text)


class MaskQuerySecrets(logging.Filter):
    """Masks token-like query parameters in a record's message arguments (never drops it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                mask_query_secrets(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        elif isinstance(record.msg, str):
            record.msg = mask_query_secrets(record.msg)
        return True


class DescriptorFloodLimit(logging.Filter):
    """Lets through at most `burst` records of a flood (out of descriptors, accept retries, over
    the concurrency limit) per `window_s`, then says how many were dropped; others pass."""

    def __init__(
        self, burst: int = 5, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = -float("inf")
        self._passed = 0
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not _is_flood(record):
            return True
        with self._lock:
            now = self._clock()
            if now - self._window_start >= self.window_s:
                dropped, self._dropped = self._dropped, 0
                self._window_start, self._passed = now, 0
                if dropped:
                    message = record.getMessage()
                    record.msg = "%s (%d more like it were not logged in the last window)"
                    record.args = (message, dropped)
            if self._passed >= self.burst:
                self._dropped += 1
                return False
            self._passed += 1
            # A traceback per accept is what filled the disk: keep the one line.
            record.exc_info = None
            record.exc_text = None
            return True


def _is_flood(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, OSError) and exc.errno in (23, 24):  # ENFILE, EMFILE
        return True
    try:
        message = record.getMessage()
    except Exception:
        return False
    return any(marker in message for marker in _FLOOD_MARKERS)


_FLOOD_MARKERS = (
    "Too many open files",
    "out of system resource",  # asyncio's accept loop on EMFILE/ENFILE
    # Its retries, one per failed accept, each fail with a traceback once the socket is closed.
    "_start_serving",
    "Exceeded concurrency limit",  # uvicorn, once per request over its limit_concurrency
)


_install_lock = threading.Lock()


def install_log_filters() -> None:
    """Add both filters to the server loggers once per process (idempotent)."""
    with _install_lock:
        for name in ACCESS_LOGGERS:
            _add_once(logging.getLogger(name), MaskQuerySecrets)
        for name in FLOOD_LOGGERS:
            _add_once(logging.getLogger(name), DescriptorFloodLimit)


def _add_once(logger: logging.Logger, kind: type[logging.Filter]) -> None:
    if not any(isinstance(existing, kind) for existing in logger.filters):
        logger.addFilter(kind())
