"""`/metrics` on an app-owned registry (never the global one) holding the monitor's collector."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from monitor.metrics.collector import MonitorCollector


def metrics_endpoint(app: FastAPI) -> Callable[[Request], Response]:
    """The route handler; the monitor is looked up per scrape, as the lifespan creates it later."""
    # auto_describe off: registering must not call collect() before the monitor exists.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(lambda: getattr(app.state, "pool_monitor", None)))
    app.state.metrics_registry = registry

    # A sync handler runs in the threadpool, so a slow scrape never blocks the event loop.
    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
