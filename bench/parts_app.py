"""The demo app for `bench/overhead_parts.py`, with the monitor built up one part at a time.

BENCH_PART picks the part (MONITOR_ENABLED is set to match by the benchmark):
- `off`: the monitor disabled;
- `modules`: disabled, with the modules the monitor loads imported (dashboard, metrics, probe,
  scheduler): what a bigger process costs the app's own hot path;
- `middleware`: disabled, plus the attribution middleware;
- `attached`: enabled, with the leak sweep and the probe stopped once started (the wrappers,
  statement timing and middleware stay);
- `on`: enabled, as served.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from monitor.app import create_app
from monitor.instrumentation.attribution import AttributionMiddleware

PARTS = ("off", "modules", "middleware", "attached", "on")
ENABLED_PARTS = ("attached", "on")
# What an enabled app imports beyond a disabled one.
MONITOR_MODULES = (
    "monitor.web.routes",
    "monitor.metrics.exposition",
    "monitor.pool_monitor",
    "monitor.background",
    "monitor.probes.runner",
    "apscheduler.schedulers.background",
)


def create_part_app() -> FastAPI:
    part = os.environ.get("BENCH_PART", "on")
    if part not in PARTS:
        raise SystemExit(f"BENCH_PART must be one of {', '.join(PARTS)}, not {part!r}")
    if part == "modules":
        for module in MONITOR_MODULES:
            importlib.import_module(module)
    app = create_app()
    if part == "middleware":
        app.add_middleware(AttributionMiddleware)
    if part == "attached":
        started = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(inner_app: Any) -> AsyncIterator[Any]:
            async with started(inner_app) as state:
                app.state.pool_monitor.stop()  # the sweep and probe; the wrappers stay
                yield state

        app.router.lifespan_context = lifespan
    return app
