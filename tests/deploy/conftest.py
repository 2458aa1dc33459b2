"""Shared by the deployment-file tests: repository paths, the metric contract, tool lookup."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "prometheus"
DASHBOARD = REPO / "grafana" / "dashboards" / "connection-health.json"
DATASOURCE_FILE = REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDER_FILE = REPO / "grafana" / "provisioning" / "dashboards" / "provider.yml"
COMPOSE_FILE = REPO / "docker-compose.yml"

STRICT = os.environ.get("MONITOR_TEST_STRICT") == "1"

# The metric contract of the app's /metrics (DESIGN.md, "Metric names"). Alerts and panels
# may only use these names; this is the one list to update when the collector changes.
POOL_METRICS = frozenset(
    {
        "db_client_connection_count",
        "db_client_connection_max",
        "db_client_connection_idle_max",
        "db_client_connection_pending_requests",
        "db_client_connection_timeouts_total",
        "db_client_connection_wait_time_seconds",
        "db_client_connection_use_time_seconds",
        "db_client_connection_create_time_seconds",
        "sqlalchemy_pool_overflow",
        "sqlalchemy_pool_leaked_connections",
        "sqlalchemy_pool_leaks_total",
        "sqlalchemy_pool_gc_reclaimed_total",
        "sqlalchemy_pool_invalidations_total",
        "sqlalchemy_pool_checkouts_total",
        "sqlalchemy_slow_queries_total",
        "sqlalchemy_pool_multi_connection_requests_total",
        "sqlalchemy_pool_accounting_drift",
        "sqlalchemy_pool_long_held_connections",
        "sqlalchemy_pool_long_holds_total",
        "sqlalchemy_pool_leaks_by_route_total",
        "sqlalchemy_pool_timeouts_by_route_total",
        "pool_monitor_listener_errors_total",
        "pool_monitor_orphan_sessions",
        "pool_monitor_phantom_connections",
    }
)
"""Metrics carrying the `db_client_connection_pool_name` label."""

SERVER_METRICS = frozenset(
    {
        "pool_monitor_server_up",
        "pool_monitor_server_sessions",
        "pool_monitor_server_max_transaction_seconds",
        "pool_monitor_server_max_connections",
        "pool_monitor_server_superuser_reserved_connections",
        "pool_monitor_server_reserved_connections",
        "pool_monitor_server_blocked_sessions",
        "pool_monitor_server_connections_used_ratio",
        "pool_monitor_probe_duration_seconds",
        "pool_monitor_probe_errors_total",
        "pool_monitor_probe_last_success_timestamp_seconds",
        "pool_monitor_probe_skipped_total",
        "pool_monitor_probe_hidden_queries",
    }
)
"""Server-side and probe metrics: no pool label."""

HISTOGRAMS = frozenset(
    {
        "db_client_connection_wait_time_seconds",
        "db_client_connection_use_time_seconds",
        "db_client_connection_create_time_seconds",
    }
)

PGBOUNCER_METRICS = frozenset(
    {
        "pool_monitor_pgbouncer_up",
        "pool_monitor_pgbouncer_probe_errors_total",
        "pool_monitor_pgbouncer_clients",
        "pool_monitor_pgbouncer_servers",
        "pool_monitor_pgbouncer_max_wait_seconds",
        "pool_monitor_pgbouncer_pool_info",
        "pool_monitor_pgbouncer_transactions_total",
        "pool_monitor_pgbouncer_queries_total",
        "pool_monitor_pgbouncer_client_wait_seconds_total",
        "pool_monitor_pgbouncer_max_client_conn",
    }
)
"""PgBouncer's pools from its admin console (labels database, user): only with pgbouncer_url."""

BASE_METRICS = POOL_METRICS | SERVER_METRICS | PGBOUNCER_METRICS

# postgres_exporter's series that the dashboard and the alerts use (job `postgres`), and
# Prometheus' own `up`. None of them is the app's: the app exports no `pg_*`.
POSTGRES_EXPORTER_METRICS = frozenset(
    {
        "pg_up",
        "pg_stat_activity_count",
        "pg_stat_activity_max_tx_duration",
        "pg_settings_max_connections",
        "pg_settings_superuser_reserved_connections",
    }
)
PROMETHEUS_METRICS = frozenset({"up"})


def series_names(base: str) -> set[str]:
    """The series names one metric family exposes (a histogram has no bare series)."""
    if base in HISTOGRAMS:
        return {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return {base}


APP_SERIES = frozenset(name for base in BASE_METRICS for name in series_names(base))
KNOWN_METRICS = APP_SERIES | POSTGRES_EXPORTER_METRICS | PROMETHEUS_METRICS
"""Every series name alerts and panels may use."""


def base_metric(name: str) -> str:
    """The family a series name belongs to (`x_bucket` -> `x` for histograms)."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
            return name.removesuffix(suffix)
    return name


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def require_executable(name: str, path: str | None) -> str:
    """`path` when it is an executable; skip without it locally, fail in CI (strict mode)."""
    if path is not None and os.access(path, os.X_OK):
        return path
    message = f"{name} is not installed"
    if STRICT:
        pytest.fail(f"{message} (MONITOR_TEST_STRICT=1)")
    pytest.skip(message)


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Runs a checker with a timeout; output is kept for the assertion message."""
    return subprocess.run(
        [str(arg) for arg in args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_executable("promtool", shutil.which("promtool"))


@pytest.fixture(scope="session")
def check_jsonschema() -> str:
    # The venv's console script, next to this interpreter: PATH may not include the venv.
    return require_executable(
        "check-jsonschema", str(Path(sys.executable).with_name("check-jsonschema"))
    )


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return data
