"""The monitor inside someone else's app: tagged routes out of its OpenAPI schema, its own
/metrics kept, one middleware however often it is installed."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter, make_asgi_app
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from starlette.routing import Match

from monitor import PoolMonitor
from monitor.instrumentation.attribution import AttributionMiddleware
from monitor.metrics import names


@pytest.fixture
def engine(database_url: URL) -> Iterator[Engine]:
    engine = create_engine(database_url, pool_size=2, max_overflow=0)
    yield engine
    engine.dispose()


def _tag_first_unique_id(route: APIRoute) -> str:
    """FastAPI's "Generating SDKs" recipe (its full-stack template uses it): needs a tag."""
    return f"{route.tags[0]}-{route.name}"


def _app_with_work(engine: Engine, **fastapi_args: object) -> FastAPI:
    app = FastAPI(**fastapi_args)  # type: ignore[arg-type]

    @app.get("/items", tags=["items"])
    def items() -> dict[str, int]:
        with engine.connect() as conn:
            return {"one": conn.scalar(text("SELECT 1")) or 0}

    return app


def _warnings_about(caplog: pytest.LogCaptureFixture, text_part: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text_part in r.getMessage()
    ]


def test_tags_based_unique_ids_and_a_clean_openapi_schema(engine: Engine) -> None:
    app = _app_with_work(engine, generate_unique_id_function=_tag_first_unique_id)
    monitor = PoolMonitor(engine, probe=False)
    monitor.install(app)  # raised IndexError on route.tags[0] before routes were tagged

    with TestClient(app) as client:
        assert client.get("/items").json() == {"one": 1}
        schema = client.get("/openapi.json").json()
        assert list(schema["paths"]) == ["/items"], "monitor routes leak into the app's schema"
        assert schema["paths"]["/items"]["get"]["operationId"] == "items-items"
        assert client.get("/monitor/api/snapshot").json()["pool"]["counters"]["checkouts"] >= 1
        assert "db_client_connection_count{" in client.get("/metrics").text
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path.startswith(("/monitor", "/metrics")):
            assert route.tags[0] == "pool-monitor", route.path
    monitor.detach()


def test_schema_inclusion_and_tags_are_options(engine: Engine) -> None:
    app = _app_with_work(engine, generate_unique_id_function=_tag_first_unique_id)
    monitor = PoolMonitor(engine, probe=False)
    monitor.install(app, include_in_schema=True, tags=["ops"])
    with TestClient(app) as client:
        paths = client.get("/openapi.json").json()["paths"]
        assert paths["/monitor/api/snapshot"]["get"]["tags"] == ["ops"]
        assert paths["/monitor/api/snapshot"]["get"]["operationId"] == "ops-snapshot"
        assert "/monitor/" not in paths  # the HTML dashboard never is an API operation
    monitor.detach()


def _app_metrics_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("app_orders", "Orders taken by the host app.", registry=registry).inc(3)
    return registry


def test_an_app_mounting_its_own_metrics_keeps_them(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app_with_work(engine)
    app.mount("/metrics", make_asgi_app(_app_metrics_registry()))
    monitor = PoolMonitor(engine, probe=False)
    with caplog.at_level(logging.WARNING, logger="monitor"):
        monitor.install(app)
        with TestClient(app) as client:
            body = client.get("/metrics").text
            assert "app_orders_total 3.0" in body
            assert "db_client_connection_count" not in body
            footer = client.get("/monitor/").text
    (warning,) = _warnings_about(caplog, "/metrics")
    assert "metrics_path" in warning
    assert 'href="/metrics"' not in footer  # the dashboard links to no metrics it doesn't serve
    monitor.detach()


def test_a_route_added_after_install_wins_too(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app_with_work(engine)
    monitor = PoolMonitor(engine, probe=False)
    monitor.install(app)
    app.mount("/metrics", make_asgi_app(_app_metrics_registry()))
    with caplog.at_level(logging.WARNING, logger="monitor"), TestClient(app) as client:
        assert "app_orders_total 3.0" in client.get("/metrics").text
    assert len(_warnings_about(caplog, "metrics_path")) == 1
    monitor.detach()


def test_metrics_path_is_configurable_beside_the_apps_own(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app_with_work(engine)
    app.mount("/metrics", make_asgi_app(_app_metrics_registry()))
    monitor = PoolMonitor(engine, probe=False)
    with caplog.at_level(logging.WARNING, logger="monitor"):
        monitor.install(app, metrics_path="/pool-monitor/metrics")
        with TestClient(app) as client:
            client.get("/items")
            assert "app_orders_total 3.0" in client.get("/metrics").text
            ours = client.get("/pool-monitor/metrics").text
            assert f'{names.CHECKOUTS_TOTAL}{{{names.POOL_NAME}="{monitor.pool_name}"}}' in ours
            assert 'href="/pool-monitor/metrics"' in client.get("/monitor/").text
    assert _warnings_about(caplog, "metrics_path") == []
    monitor.detach()


def test_metrics_path_none_adds_no_route(engine: Engine) -> None:
    app = _app_with_work(engine)
    monitor = PoolMonitor(engine, probe=False)
    monitor.install(app, metrics_path=None)
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/monitor/api/snapshot").status_code == 200
    monitor.detach()


def test_installing_twice_adds_one_middleware_and_one_route_set(engine: Engine) -> None:
    app = _app_with_work(engine)
    monitor = PoolMonitor(engine, probe=False)
    monitor.install(app)
    monitor.install(app)
    middleware = [m for m in app.user_middleware if m.cls is AttributionMiddleware]
    assert len(middleware) == 1
    scope = {"type": "http", "method": "GET", "path": "/monitor/api/snapshot", "root_path": ""}
    answering = [r for r in app.routes if r.matches(scope)[0] is not Match.NONE]
    assert len(answering) == 1
    monitor.detach()


def test_the_apps_own_registry_can_carry_the_monitors_metrics(engine: Engine) -> None:
    app = _app_with_work(engine)
    registry = _app_metrics_registry()
    app.mount("/metrics", make_asgi_app(registry))
    monitor = PoolMonitor(engine, probe=False)
    monitor.install(app, metrics_path=None)
    registry.register(monitor.collector())
    with TestClient(app) as client:
        client.get("/items")
        body = client.get("/metrics").text
    assert "app_orders_total 3.0" in body
    assert f'{names.CHECKOUTS_TOTAL}{{{names.POOL_NAME}="{monitor.pool_name}"}} 1.0' in body
    monitor.detach()
