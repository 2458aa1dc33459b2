"""`create_app(settings)`: the one place where the app, its database and the monitor are wired."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool

from monitor.demo.db import SchemaGate, make_engine, make_session_factory
from monitor.demo.routes import products, users
from monitor.demo.scenarios import SCENARIOS, install_demo, release_demo
from monitor.embedded import EmbeddedPostgres
from monitor.errors import install_error_handlers
from monitor.instrumentation.attachments import plumbing
from monitor.pool_monitor import PoolMonitor
from monitor.settings import Settings, parse_route_ceilings
from monitor.urls import app_url, hide_dsn_in_pool_logs, mask_url
from monitor.web.auth import TokenGate
from monitor.web.body_limit import BodyLimit
from monitor.web.install import add_monitor_routes
from monitor.web.trusted_hosts import TrustedHosts

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the demo app; the database (embedded when DATABASE_URL is unset) starts in the lifespan."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        embedded: EmbeddedPostgres | None = None
        if settings.database_url:
            url = app_url(settings.database_url)
        else:
            embedded = EmbeddedPostgres(settings.embedded_data_dir)
            url = embedded.start()
            log.info("embedded PostgreSQL ready in %s", settings.embedded_data_dir)
        log.info("database: %s", mask_url(url))
        engine = make_engine(settings, url)
        app.state.engine = engine
        app.state.session_factory = make_session_factory(engine)
        app.state.schema = SchemaGate(engine)
        app.state.readiness_engine = _readiness_engine(url)
        plumbing(app.state.readiness_engine)
        hide_dsn_in_pool_logs(app.state.readiness_engine)
        monitor = _attach_monitor(
            app, settings, engine, url, "embedded" if embedded else "DATABASE_URL"
        )
        app.state.schema.ensure(quiet=True)
        try:
            yield
        finally:
            release_demo(app)  # before detach: the monitor sees the leaks resolve
            if monitor is not None:
                monitor.detach()
            engine.dispose()
            app.state.readiness_engine.dispose()
            if embedded is not None:
                embedded.close()

    app = FastAPI(title="pool-monitor demo app", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.add_middleware(TrustedHosts, allowed_hosts=settings.trusted_host_list)
    if settings.demo_routes:
        app.add_middleware(TokenGate, prefixes=("/demo/",))  # when a dashboard token is set
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # outermost: before reading
    install_error_handlers(app)
    app.include_router(products)
    app.include_router(users)
    if settings.demo_routes:
        install_demo(app, settings)
        # The dashboard shows a button per scenario; it reads the list, it never imports the demo.
        app.state.demo_scenarios = SCENARIOS
    if settings.enabled:
        # The demo app's own schema documents the snapshot API (a library user's does not).
        add_monitor_routes(app, include_in_schema=True)
    _add_health_routes(app)
    return app


def _attach_monitor(
    app: FastAPI, settings: Settings, engine: Engine, url: URL, url_source: str
) -> PoolMonitor | None:
    if not settings.enabled:
        return None
    monitor = PoolMonitor(
        engine,
        leak_threshold_s=settings.leak_threshold_s,
        slow_query_s=settings.slow_query_s,
        probe_interval_s=settings.probe_interval_s,
        probe_timeout_s=settings.probe_timeout_s,
        long_hold_ceiling_s=settings.long_hold_ceiling_s,
        long_hold_routes=parse_route_ceilings(settings.long_hold_routes),
        idle_in_transaction_min_s=settings.idle_in_transaction_min_s,
        verdict_window_s=settings.verdict_window_s,
        dashboard_token=settings.dashboard_token,
        url_source=url_source,
        probe_url=url,
        pgbouncer_url=settings.pgbouncer_url,
    )
    app.state.pool_monitor = monitor
    monitor.start()
    return monitor


def _readiness_engine(url: URL) -> Engine:
    """A connection per readiness check, outside the app pool, so an exhausted pool stays 'ready'."""
    return create_engine(
        url,
        poolclass=NullPool,
        connect_args={"connect_timeout": 2, "application_name": "pool-monitor-readyz"},
    )


def _add_health_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers; never touches the database."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "Database unreachable"}})
    def readyz(request: Request) -> JSONResponse:
        """Readiness: the database answers a trivial query within two seconds."""
        try:
            with request.app.state.readiness_engine.connect() as conn:
                conn.execute(text("SET statement_timeout = 2000"))
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return JSONResponse(
                {"status": "unavailable", "detail": f"database unreachable ({type(exc).__name__})"},
                status_code=503,
            )
        return JSONResponse({"status": "ready"})
