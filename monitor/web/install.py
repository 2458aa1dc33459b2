"""Mount the monitor on a FastAPI app: attribution middleware, /monitor routes, /metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from monitor.instrumentation.attribution import AttributionMiddleware

if TYPE_CHECKING:
    from monitor.pool_monitor import PoolMonitor


def add_monitor_routes(app: FastAPI) -> None:
    """Everything that must exist before the app starts; the monitor itself is looked up per
    request on `app.state.pool_monitor`, so it may be created later (in the lifespan)."""
    from monitor.metrics.exposition import metrics_endpoint
    from monitor.web.auth import login_router
    from monitor.web.log_filters import install_log_filters
    from monitor.web.routes import mount_static, router
    from monitor.web.security_headers import SecurityHeaders

    install_log_filters()  # no token in the access log, no descriptor-exhaustion flood
    app.add_middleware(AttributionMiddleware)
    app.add_middleware(SecurityHeaders)  # CSP, anti-framing on /monitor/*
    app.include_router(router)
    app.include_router(login_router)
    mount_static(app)
    app.add_api_route("/metrics", metrics_endpoint(app), include_in_schema=False)


def install_monitor(app: FastAPI, monitor: PoolMonitor) -> None:
    app.state.pool_monitor = monitor
    add_monitor_routes(app)
