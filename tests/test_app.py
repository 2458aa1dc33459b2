"""App wiring: liveness, readiness, and a database that is down at startup."""

from __future__ import annotations

from fastapi.testclient import TestClient

from monitor.app import create_app
from monitor.settings import Settings
from tests.servers import free_port


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_unknown_host_header_is_refused(client: TestClient) -> None:
    response = client.get("/healthz", headers={"host": "evil.example"})
    assert response.status_code == 400


def test_database_down_at_startup_degrades_without_crashing() -> None:
    url = f"postgresql://nobody:S3cret-pw@127.0.0.1:{free_port()}/nowhere"
    app = create_app(Settings(database_url=url, pool_timeout_s=1.0))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        crud = client.get("/products")
        assert crud.status_code == 503
        assert crud.json() == {"detail": "database unavailable, retry later"}
        assert "S3cret-pw" not in ready.text + crud.text


def test_long_hold_settings_reach_the_monitor(app_settings: Settings) -> None:
    settings = app_settings.model_copy(
        update={"long_hold_routes": "/products=100", "long_hold_ceiling_s": 40.0}
    )
    app = create_app(settings)
    with TestClient(app):
        tracker = app.state.pool_monitor.tracker
        assert tracker.long_hold_routes == {"/products": 100.0}
        assert tracker.long_hold_ceiling_s == 40.0
        assert tracker.idle_in_transaction_min_s == 1.0
