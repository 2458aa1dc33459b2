"""Mount the monitor on a FastAPI app: attribution middleware, /monitor routes, /metrics.

Made to live inside someone else's app: routes carry a tag (apps that name operations after
their first tag need one), stay out of the app's OpenAPI schema unless asked, and an app's own
route at the metrics path wins over the monitor's, with one warning.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from monitor.instrumentation.attribution import AttributionMiddleware
from monitor.sources import MonitorSurface

# FastAPI and Starlette load when an app is installed into, not when this module is: the facade
# imports it, and a monitor used without an app (the pytest plugin's) never needs them.
if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("monitor")

ROUTE_TAG = "pool-monitor"
METRICS_ROUTE_NAME = "pool_monitor_metrics"
INSTALLED_ATTR = "pool_monitor_routes_installed"
METRICS_PATH_ATTR = "pool_monitor_metrics_path"


def add_monitor_routes(
    app: FastAPI,
    *,
    metrics_path: str | None = "/metrics",
    include_in_schema: bool = False,
    tags: Sequence[str] = (ROUTE_TAG,),
) -> None:
    """Everything that must exist before the app starts; the monitor itself is looked up per
    request on `app.state.pool_monitor`, so it may be created later (in the lifespan).
    Idempotent: a second call adds no second middleware or route."""
    from monitor.metrics.exposition import metrics_endpoint
    from monitor.web.auth import login_router
    from monitor.web.log_filters import install_log_filters
    from monitor.web.routes import mount_static, router
    from monitor.web.security_headers import SecurityHeaders

    if getattr(app.state, INSTALLED_ATTR, False):
        return
    setattr(app.state, INSTALLED_ATTR, True)
    install_log_filters()  # no token in the access log, no descriptor-exhaustion flood
    if not any(getattr(m, "cls", None) is AttributionMiddleware for m in app.user_middleware):
        app.add_middleware(AttributionMiddleware)
    app.add_middleware(SecurityHeaders)  # CSP, anti-framing on /monitor/*
    app.include_router(router, tags=list(tags), include_in_schema=include_in_schema)
    app.include_router(login_router, tags=list(tags), include_in_schema=include_in_schema)
    mount_static(app)
    setattr(app.state, METRICS_PATH_ATTR, None)
    if metrics_path is not None:
        endpoint = metrics_endpoint(app)
        if _owner_of(app, metrics_path) is None:
            app.add_api_route(
                metrics_path,
                endpoint,
                include_in_schema=include_in_schema,
                tags=list(tags),
                name=METRICS_ROUTE_NAME,
            )
            setattr(app.state, METRICS_PATH_ATTR, metrics_path)
        else:
            _warn_metrics_path_taken(metrics_path)


def install_monitor(
    app: FastAPI,
    monitor: MonitorSurface,
    *,
    metrics_path: str | None = "/metrics",
    include_in_schema: bool = False,
    tags: Sequence[str] = (ROUTE_TAG,),
) -> None:
    """Serve `monitor` on the app's /monitor routes and metrics path."""
    app.state.pool_monitor = monitor
    add_monitor_routes(
        app, metrics_path=metrics_path, include_in_schema=include_in_schema, tags=tags
    )


def claim_metrics_path(app: Any, metrics_path: str | None) -> None:
    """At startup: if the app added its own route at the metrics path after `install()`, the
    monitor's steps aside (it would shadow the app's) and says so once."""
    if metrics_path is None:
        return
    ours = [r for r in app.router.routes if getattr(r, "name", None) == METRICS_ROUTE_NAME]
    if not ours or _owner_of(app, metrics_path, besides=ours) is None:
        return
    for route in ours:
        app.router.routes.remove(route)
    setattr(app.state, METRICS_PATH_ATTR, None)
    _warn_metrics_path_taken(metrics_path)


def _owner_of(app: Any, path: str, besides: Sequence[Any] = ()) -> Any:
    """The app's route, mount or included router that answers GET `path`, if any. Asked through
    each route's own `matches` (routers of recent FastAPI versions are not flat lists)."""
    from starlette.routing import Match  # only while installing (see the imports above)

    # A mount at /metrics answers /metrics/ (and /metrics through the router's redirect).
    scopes = [
        {"type": "http", "method": "GET", "path": p, "root_path": "", "headers": []}
        for p in (path, path.rstrip("/") + "/")
    ]
    for route in app.router.routes:
        if route in besides:
            continue
        for scope in scopes:
            try:
                match, _ = route.matches(scope)
            except Exception:
                continue
            if match is not Match.NONE:
                return route
    return None


def _warn_metrics_path_taken(path: str) -> None:
    log.warning(
        "pool-monitor: the app already serves %s, so the monitor's metrics are not there; "
        "pass install(app, metrics_path='/pool-monitor/metrics') (or another free path) to "
        "expose them, or metrics_path=None and registry.register(monitor.collector()) to add "
        "them to the app's own",
        path,
    )


def warn_if_open(app: Any, dashboard_token: str | None) -> None:
    """At startup: without a dashboard token (the monitor's or the settings'), say once that the
    dashboard, JSON API and metrics answer anyone, when the server listens beyond loopback."""
    if dashboard_token or _dashboard_token_setting(app):
        return
    host = _bind_host(app)
    if host is not None:
        warn_open_access(host)


def warn_open_access(host: str) -> None:
    """One WARNING that an unprotected monitor listens on `host`, unless that is loopback."""
    if _is_loopback(host):
        return
    log.warning(
        "pool-monitor: no dashboard token and the server listens on %s: /monitor/ (the dashboard "
        "and its JSON API, which show SQL text, routes and code locations) and /metrics answer "
        "anyone who reaches it. Set a token (PoolMonitor(..., dashboard_token=...) or "
        "MONITOR_DASHBOARD_TOKEN) and keep /metrics for the scraper (a private network, a "
        "firewall rule or the reverse proxy in front)",
        host,
    )


def _dashboard_token_setting(app: Any) -> bool:
    settings = getattr(app.state, "settings", None)
    return bool(getattr(settings, "dashboard_token", None))


def _bind_host(app: Any) -> str | None:
    """The host uvicorn was told to bind for `app`, or None when uvicorn is not what runs it."""
    import gc
    import sys

    if "uvicorn" not in sys.modules:
        return None
    try:
        from uvicorn import Config

        # uvicorn keeps its Config on the running Server only; looked for once, at startup.
        configs = [obj for obj in gc.get_referrers(Config) if isinstance(obj, Config)]
    except Exception:
        return None
    ours = [c for c in configs if c.app is app]  # `uvicorn main:app` holds a string instead
    config = ours[0] if ours else configs[0] if len(configs) == 1 else None
    return str(config.host) if config is not None else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # all interfaces ("", "0.0.0.0" fail or pass above) or a hostname
