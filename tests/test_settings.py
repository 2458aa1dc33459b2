"""Settings come from the environment, are validated, and never show a password."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from monitor.settings import Settings
from monitor.urls import app_url, mask_url


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw@db/app")
    monkeypatch.setenv("MONITOR_LEAK_THRESHOLD_S", "2.5")
    monkeypatch.setenv("MONITOR_ENABLED", "false")
    monkeypatch.setenv("MONITOR_DEMO_ROUTES", "1")
    settings = Settings()
    assert settings.database_url == "postgresql://u:pw@db/app"
    assert settings.leak_threshold_s == 2.5
    assert settings.enabled is False and settings.demo_routes is True


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan"])
def test_thresholds_must_be_positive_numbers(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MONITOR_SLOW_QUERY_S", value)
    with pytest.raises(ValidationError, match="slow_query_s"):
        Settings()


def test_repr_masks_password_and_token() -> None:
    settings = Settings(
        database_url="postgresql://u:hunter2@db/app?sslpassword=x1", dashboard_token="tok"
    )
    text = repr(settings)
    assert "hunter2" not in text and "x1" not in text and "tok'" not in text
    assert "postgresql://u:***@db/app" in text


def test_non_postgres_url_is_refused_without_echoing_the_password() -> None:
    with pytest.raises(ValidationError) as error:
        Settings(database_url="mysql://u:hunter2@db/app")
    assert "hunter2" not in str(error.value)


def test_mask_url_drops_password_and_query() -> None:
    assert mask_url("postgresql://u:p@h:5/d?sslpassword=s") == "postgresql://u:***@h:5/d"
    assert mask_url("::::") == "<unparseable database URL>"


def test_bare_postgresql_url_means_psycopg2() -> None:
    assert app_url("postgres://u@h/d").drivername == "postgresql+psycopg2"
    assert app_url("postgresql+psycopg2://u@h/d").drivername == "postgresql+psycopg2"


def test_long_hold_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.settings import parse_route_ceilings

    monkeypatch.setenv("MONITOR_LONG_HOLD_ROUTES", "/reports/{report_id}=120, /stream=30")
    monkeypatch.setenv("MONITOR_LONG_HOLD_CEILING_S", "45")
    monkeypatch.setenv("MONITOR_IDLE_IN_TRANSACTION_MIN_S", "2")
    settings = Settings()
    assert parse_route_ceilings(settings.long_hold_routes) == {
        "/reports/{report_id}": 120.0,
        "/stream": 30.0,
    }
    assert settings.long_hold_ceiling_s == 45 and settings.idle_in_transaction_min_s == 2
    assert Settings().model_copy(update={"long_hold_routes": ""}).long_hold_routes == ""


@pytest.mark.parametrize("value", ["/reports", "reports=10", "/reports=0", "/reports=x"])
def test_long_hold_routes_are_validated(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MONITOR_LONG_HOLD_ROUTES", value)
    with pytest.raises(ValidationError, match="long_hold_routes"):
        Settings()


def test_pgbouncer_url_from_the_environment_is_masked_in_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MONITOR_PGBOUNCER_URL", "postgresql://stats:s3cret@bouncer:6432/pgbouncer")
    settings = Settings()
    assert settings.pgbouncer_url == "postgresql://stats:s3cret@bouncer:6432/pgbouncer"
    assert "s3cret" not in repr(settings)
