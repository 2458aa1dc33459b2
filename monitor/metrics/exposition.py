"""`/metrics` on an app-owned registry (never the global one)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def metrics_endpoint(app: FastAPI) -> Callable[[Request], Response]:
    registry = CollectorRegistry(auto_describe=False)
    app.state.metrics_registry = registry

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
