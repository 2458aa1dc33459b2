"""Every duration setting is bounded and refused by name; DATABASE_URL names its driver."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from monitor import cli
from monitor.settings import Settings

DURATIONS = sorted(name for name in Settings.model_fields if name.endswith("_s"))


def test_the_duration_settings_are_found() -> None:
    assert {"probe_timeout_s", "probe_interval_s", "pool_timeout_s", "pool_recycle_s"} <= set(
        DURATIONS
    )


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e300", "0", "-1"])
@pytest.mark.parametrize("name", DURATIONS)
def test_out_of_range_durations_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"MONITOR_{name.upper()}", value)
    with pytest.raises(ValidationError) as error:
        Settings()
    assert [e["loc"] for e in error.value.errors()] == [(name,)]


@pytest.mark.parametrize(
    ("name", "value"),
    [("probe_timeout_s", "0.001"), ("pool_timeout_s", "1e300"), ("probe_interval_s", "0.01")],
)
def test_values_that_made_the_app_useless_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"MONITOR_{name.upper()}", value)
    with pytest.raises(ValidationError):
        Settings()


def test_defaults_are_inside_their_ranges() -> None:
    Settings()  # the defaults validate (frozen, validated on construction)


@pytest.mark.parametrize(
    "url", ["postgresql://u@h/d", "postgresql+psycopg2://u@h/d", "postgres://u@h/d"]
)
def test_supported_urls(url: str) -> None:
    assert Settings(database_url=url).database_url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+asyncpg://u:hunter2@h/d", "the demo app is sync; use postgresql+psycopg2"),
        ("postgresql+psycopg://u:hunter2@h/d", "async driver"),
        ("postgresqlx://u:hunter2@h/d", "unsupported scheme 'postgresqlx'"),
        ("mysql://u:hunter2@h/d", "unsupported scheme 'mysql'"),
        ("postgresql", "unsupported scheme"),
    ],
)
def test_unsupported_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(ValidationError) as error:
        Settings(database_url=url)
    assert message in str(error.value)
    assert "hunter2" not in str(error.value)


def test_async_driver_message_points_at_the_library() -> None:
    with pytest.raises(ValidationError, match="library itself supports async engines"):
        Settings(database_url="postgresql+asyncpg://u@h/d")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"MONITOR_PROBE_TIMEOUT_S": "0.001"},
            "pool-monitor: invalid MONITOR_PROBE_TIMEOUT_S: Input should be greater than or "
            "equal to 0.1 (allowed: 0.1 to 300 seconds)",
        ),
        (
            {"MONITOR_POOL_RECYCLE_S": "inf"},
            "pool-monitor: invalid MONITOR_POOL_RECYCLE_S: Input should be a finite number",
        ),
        (
            {"DATABASE_URL": "postgresql+asyncpg://u:hunter2@h/d"},
            "pool-monitor: invalid DATABASE_URL: postgresql+asyncpg:// is an async driver",
        ),
    ],
)
def test_the_cli_says_it_in_one_line_without_a_traceback(
    env: dict[str, str], expected: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "serve", "--port", "9"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(expected), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr


def test_cli_main_returns_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_PROBE_INTERVAL_S", "inf")
    assert cli.main(["serve"]) == 2


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0])
def test_the_library_refuses_non_finite_durations(value: float) -> None:
    from sqlalchemy import create_engine

    from monitor import PoolMonitor

    engine = create_engine("postgresql+psycopg2://u@127.0.0.1:9/d")
    with pytest.raises(ValueError, match="probe_timeout_s"):
        PoolMonitor(engine, probe_timeout_s=value)
    engine.dispose()
