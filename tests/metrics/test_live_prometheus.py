"""A real Prometheus scrapes the app and a real postgres_exporter side by side over loopback, with
the bundled rules; every dashboard query runs on it.

This catches what static checks cannot: a renamed metric or label makes a panel empty, and a
name both exporters use would make their series collide.
"""

from __future__ import annotations

import math
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from monitor import PoolMonitor
from monitor.app import create_app
from monitor.settings import Settings
from tests.conftest import require_tool, url_string
from tests.deploy.conftest import DASHBOARD, PROMETHEUS_DIR
from tests.deploy.grafana_queries import panel_queries
from tests.metrics.conftest import holding, wait_for
from tests.pgbouncer import PgBouncer
from tests.servers import free_port, serve_in_thread

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

JOB = "pool-monitor"
PG_JOB = "postgres"
ALERT_GROUPS = {
    "pool-monitor-app",
    "pool-monitor-pool",
    "pool-monitor-server",
    "pool-monitor-probe",
    "pool-monitor-pgbouncer",
}
# The PgBouncer row has data only when the app goes through PgBouncer: its own test below.
PGBOUNCER_ROW = "PgBouncer"
# Panels allowed to return only NaN in this situation, with the reason. The situation below is
# built so that every panel has a number; keep this empty unless a panel cannot.
MAY_BE_NAN: dict[str, str] = {}
# Series Prometheus itself adds to every target: the same names for both jobs by design.
PER_TARGET_SERIES = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}
PANELS_WITH_DATA = 0.9  # the bar: at least 90% of the panels show data


@pytest.fixture
def postgres_exporter(database_url: URL, tmp_path: Path) -> Iterator[int]:
    """The Debian package's postgres_exporter on a free loopback port, reading the test server."""
    binary = require_tool("prometheus-postgres-exporter")
    port = free_port()
    dsn = url_string(
        database_url.set(drivername="postgresql").update_query_dict({"sslmode": "disable"})
    )
    log_path = tmp_path / "postgres_exporter.log"
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{port}"],
            env={"DATA_SOURCE_NAME": dsn, "PATH": "/usr/bin:/bin"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def ready() -> bool:
                assert process.poll() is None, log_path.read_text(encoding="utf-8")
                try:
                    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                except httpx.TransportError:
                    return False
                return "\npg_up 1" in body

            wait_for(ready, bool, timeout_s=30)
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture
def live_app(app_settings: Settings) -> Iterator[tuple[FastAPI, int]]:
    """The app served by uvicorn on a free loopback port, in a thread of this process."""
    app = create_app(app_settings)
    with serve_in_thread(app) as base:
        yield app, int(base.rsplit(":", 1)[1])


@pytest.fixture
def prometheus(
    live_app: tuple[FastAPI, int], postgres_exporter: int, tmp_path: Path
) -> Iterator[httpx.Client]:
    """Prometheus scraping the app and postgres_exporter every second, with the bundled alert
    rules; killed afterwards."""
    with run_prometheus({JOB: live_app[1], PG_JOB: postgres_exporter}, tmp_path) as api:
        yield api


@contextmanager
def run_prometheus(targets: dict[str, int], tmp_path: Path) -> Iterator[httpx.Client]:
    """Prometheus scraping each job's loopback port every second, with the bundled rules."""
    binary = require_tool("prometheus")
    listen_port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
            }
            for job, port in targets.items()
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_path = tmp_path / "prometheus.log"
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{listen_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        api = httpx.Client(base_url=f"http://127.0.0.1:{listen_port}", timeout=10)
        try:

            def ready() -> bool:
                assert process.poll() is None, log_path.read_text(encoding="utf-8")
                try:
                    return api.get("/-/ready").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(ready, bool, timeout_s=30)
            yield api
        finally:
            api.close()
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _query(api: httpx.Client, expr: str) -> dict[str, Any]:
    body: dict[str, Any] = api.get("/api/v1/query", params={"query": expr}).json()
    return body


def _values(result: dict[str, Any]) -> list[float]:
    data = result.get("data", {})
    if data.get("resultType") == "scalar":
        return [float(data["result"][1])]
    return [float(item["value"][1]) for item in data.get("result", [])]


def _wait_until_seen(api: httpx.Client, expr: str) -> None:
    """Until the instant query returns at least one series (bounded)."""
    wait_for(lambda: _values(_query(api, expr)), bool, timeout_s=30)


def _rules(api: httpx.Client) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = api.get("/api/v1/rules").json()["data"]["groups"]
    return groups


@pytest.mark.pool_monitor_allow(
    reason="a pool timeout on purpose: its alert rule must have data", kinds="pool_timeout"
)
def test_dashboard_queries_and_alert_rules_have_data(
    live_app: tuple[FastAPI, int], prometheus: httpx.Client, outside_session: Any
) -> None:
    app, _ = live_app
    engine: Engine = app.state.engine
    api = prometheus
    _wait_until_seen(api, f'up{{job="{JOB}"}} == 1')  # a scrape before anything happens

    with holding(engine, 1, in_transaction=True):  # held, idle in transaction: a leak after 1 s
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_sleep(0.3)"))  # slow: the threshold is 0.2 s
        with holding(engine, 4), pytest.raises(PoolTimeoutError):
            engine.connect()  # the pool (3 + 2 overflow) is taken: waits 1 s, then times out
        for expr in (
            "sqlalchemy_slow_queries_total > 0",
            "db_client_connection_timeouts_total > 0",
            'sqlalchemy_pool_leaked_connections{class="idle_in_transaction"} > 0',
            # postgres_exporter sees every client: ours and the outside one.
            f'sum(pg_stat_activity_count{{job="{PG_JOB}", state="idle in transaction"}}) >= 2',
            # The app's series only its own (the outside session has another application_name).
            f'pool_monitor_server_sessions{{job="{JOB}", state="idle in transaction"}} == 1',
            f'count_over_time(up{{job="{JOB}"}}[1m]) >= 4',
            f'count_over_time(up{{job="{PG_JOB}"}}[1m]) >= 4',
        ):
            _wait_until_seen(api, expr)

        failed, empty, with_data = [], [], set()
        queries = panel_queries(DASHBOARD)
        assert len(queries) >= 20
        for title, expr in queries:
            if title.startswith(PGBOUNCER_ROW):
                continue
            result = _query(api, expr)
            values = _values(result)
            if result.get("status") != "success":
                failed.append(f"{title}: {result.get('errorType')} {result.get('error')}")
            elif not values or (title not in MAY_BE_NAN and all(math.isnan(v) for v in values)):
                empty.append(f"{title}: {expr}")
            else:
                with_data.add(title)
        assert failed == []  # every query is valid PromQL against the real series
        titles = {title for title, _ in queries if not title.startswith(PGBOUNCER_ROW)}
        assert len(with_data) / len(titles) >= PANELS_WITH_DATA, (sorted(titles - with_data), empty)

        # Side by side, nothing collides: no series name comes from both jobs, none of the
        # app's is pg_*.
        def names_of(job: str) -> set[str]:
            result = _query(api, f'group by (__name__) ({{job="{job}"}})')
            return {item["metric"]["__name__"] for item in result["data"]["result"]}

        app_names, exporter_names = names_of(JOB), names_of(PG_JOB)
        assert "pg_up" in exporter_names and "db_client_connection_count" in app_names
        assert (app_names & exporter_names) - PER_TARGET_SERIES == set()
        assert not any(name.startswith("pg_") for name in app_names)

        def evaluated() -> list[dict[str, Any]]:
            return [rule for group in _rules(api) for rule in group["rules"]]

        rules = wait_for(
            evaluated, lambda rs: bool(rs) and all(r["health"] != "unknown" for r in rs)
        )
        assert {group["name"] for group in _rules(api)} == ALERT_GROUPS
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
        # The rules match the exposed series: these two are true right now (their `for` is 1m).
        states = wait_for(
            lambda: {r["name"]: r["state"] for r in evaluated()},
            lambda s: (
                s["ConnectionLeaked"] != "inactive" and s["PoolCheckoutTimeouts"] != "inactive"
            ),
        )
        assert states["DatabaseDown"] == "inactive"
        assert states["PoolMonitorDown"] == "inactive" and states["PoolMonitorAbsent"] == "inactive"
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_pgbouncer_panels_and_alerts_have_data_behind_a_real_pgbouncer(
    pgbouncer_transaction: PgBouncer, tmp_path: Path
) -> None:
    # One server connection: a second client waits while the first holds a transaction.
    bouncer = pgbouncer_transaction
    engine = create_engine(bouncer.url(), pool_size=2, max_overflow=0)
    monitor = PoolMonitor(engine, probe_interval_s=0.5, pgbouncer_url=bouncer.admin_url)
    app = FastAPI()
    monitor.install(app)
    other = create_engine(bouncer.url())
    try:
        with (
            serve_in_thread(app) as base,
            run_prometheus({JOB: int(base.rsplit(":", 1)[1])}, tmp_path) as api,
        ):
            with engine.connect() as holder:
                holder.execute(text("SELECT 1"))

                def wait_for_a_server() -> None:
                    with other.connect() as conn:
                        conn.execute(text("SELECT 1"))

                waiter = threading.Thread(target=wait_for_a_server, daemon=True)
                waiter.start()
                for expr in (
                    'pool_monitor_pgbouncer_clients{state="waiting"} > 0',
                    "pool_monitor_pgbouncer_max_wait_seconds > 0",
                    f'count_over_time(pool_monitor_pgbouncer_up{{job="{JOB}"}}[1m]) >= 4',
                ):
                    _wait_until_seen(api, expr)
                problems = []
                for title, expr in panel_queries(DASHBOARD):
                    if not title.startswith(PGBOUNCER_ROW):
                        continue
                    values = _values(_query(api, expr))
                    if not values or all(math.isnan(v) for v in values):
                        problems.append(f"{title}: no number for {expr}")
                assert problems == []
                rules = wait_for(
                    lambda: [
                        r
                        for g in _rules(api)
                        if g["name"] == "pool-monitor-pgbouncer"
                        for r in g["rules"]
                    ],
                    lambda rs: bool(rs) and all(r["health"] == "ok" for r in rs),
                )
                # Waiting clients make the rule pending at once (its `for` is 2m).
                states = wait_for(
                    lambda: {
                        r["name"]: r["state"]
                        for g in _rules(api)
                        for r in g["rules"]
                        if g["name"] == "pool-monitor-pgbouncer"
                    },
                    lambda s: s.get("PgBouncerClientsWaiting") == "pending",
                )
                assert {r["name"] for r in rules} == {
                    "PgBouncerClientsWaiting",
                    "PgBouncerMaxWaitHigh",
                }
                assert states["PgBouncerClientsWaiting"] == "pending"
                holder.rollback()
            waiter.join(15)
    finally:
        monitor.detach()
        engine.dispose()
        other.dispose()
