"""Listener failures are counted and logged once per listener, never raised into the app."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("monitor.instrumentation")


class FailureGuard:
    def __init__(self, count: Callable[[], None]) -> None:
        self._count = count
        self._logged: set[str] = set()

    def failed(self, where: str) -> None:
        try:
            self._count()
            if where not in self._logged:
                self._logged.add(where)
                log.exception(
                    "pool-monitor listener %r failed; counting further failures silently", where
                )
        except Exception:
            pass
