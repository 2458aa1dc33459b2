"""`/metrics` on an app-owned registry (never the global one) holding the monitor's collector.

Negotiates like prometheus_client's own handlers: OpenMetrics when the scraper asks for it
(`Accept`), the classic text format otherwise, gzip when `Accept-Encoding` allows it.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from monitor.metrics.collector import MonitorCollector


def metrics_endpoint(app: FastAPI) -> Callable[[Request], Response]:
    """The route handler; the monitor is looked up per scrape, as the lifespan creates it later."""
    # auto_describe off: registering must not call collect() before the monitor exists.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(lambda: getattr(app.state, "pool_monitor", None)))
    app.state.metrics_registry = registry

    # A sync handler runs in the threadpool, so collecting and compressing never block the loop.
    def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = encoder(registry)
        # Caches between scraper and app must keep one copy per format and encoding.
        headers = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
        if gzip_accepted(request.headers.get("accept-encoding", "")):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return Response(body, headers=headers)

    return metrics
