"""`/metrics` of a running app: valid for promtool and the parser, the contract's names, bounded
series, and fast while the pool is exhausted."""

from __future__ import annotations

import inspect
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from monitor.metrics import names
from monitor.pool_monitor import PoolMonitor
from tests.conftest import require_tool
from tests.deploy.conftest import (
    APP_SERIES,
    BASE_METRICS,
    PGBOUNCER_METRICS,
    POOL_METRICS,
    SERVER_METRICS,
)
from tests.metrics.conftest import POOL, holding, wait_for

Series = frozenset[tuple[str, frozenset[tuple[str, str]]]]

# promtool's style lint wants `_count` only on histograms and summaries, but the name is fixed
# by the contract: OpenTelemetry's db.client.connection.count. Nothing else may be reported.
ACCEPTED_LINT = {
    f'{names.CONNECTION_COUNT} non-histogram and non-summary metrics should not have "_count" suffix'
}
PROMTOOL_LINT_PROBLEMS = 3  # exit status for lint findings; 1 means the text did not parse


def _scrape(client: TestClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    body: str = response.text
    return body


def _series(body: str) -> Series:
    return frozenset(
        (sample.name, frozenset(sample.labels.items()))
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    )


def _wait_for_probe(client: TestClient) -> None:
    """Until the probe has succeeded, the server half of the contract is (rightly) missing."""
    wait_for(lambda: _scrape(client), lambda body: f"\n{names.SERVER_UP} 1.0" in "\n" + body)


def test_metrics_pass_promtool(client: TestClient) -> None:
    promtool = require_tool("promtool")
    _wait_for_probe(client)
    body = _scrape(client)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30
    )
    findings = {line.strip() for line in (result.stdout + result.stderr).splitlines() if line}
    assert result.returncode in (0, PROMTOOL_LINT_PROBLEMS), findings
    assert findings <= ACCEPTED_LINT, findings - ACCEPTED_LINT


def test_exposed_families_are_exactly_the_contract(client: TestClient) -> None:
    _wait_for_probe(client)
    families = list(text_string_to_metric_families(_scrape(client)))
    exposed = {family.name for family in families}
    # The parser drops `_total` from counter family names; compare series names instead.
    series_names = {sample.name for family in families for sample in family.samples}
    assert series_names <= APP_SERIES, sorted(series_names - APP_SERIES)
    # reserved_connections only exists from PostgreSQL 16 on (the shared test server is 15).
    optional = {names.SERVER_RESERVED_CONNECTIONS}
    # PgBouncer's series need pgbouncer_url (tests/test_pgbouncer_monitor.py).
    expected = {n.removesuffix("_total") for n in BASE_METRICS - PGBOUNCER_METRICS}
    assert expected - optional <= exposed <= expected
    assert not any(name.startswith("pg_") for name in series_names), "pg_* is postgres_exporter's"
    assert not any(name.endswith("_created") for name in series_names)
    for family in families:
        assert family.documentation.strip(), family.name
        for sample in family.samples:
            has_pool = names.POOL_NAME in sample.labels
            base = family.name + ("_total" if family.type == "counter" else "")
            assert has_pool == (base in POOL_METRICS), sample
            assert base in POOL_METRICS | SERVER_METRICS
            if has_pool:
                assert sample.labels[names.POOL_NAME] == POOL


def test_series_stay_the_same_after_churn_and_slow_statements(
    client: TestClient, engine: Engine, monitor: PoolMonitor
) -> None:
    _wait_for_probe(client)
    before = _series(_scrape(client))
    slow_before = _sample(client, names.SLOW_QUERIES_TOTAL)
    hard = {names.POOL_NAME: POOL, "kind": "hard"}
    invalidated_before = _sample(client, names.INVALIDATIONS_TOTAL, hard)
    connects_before = monitor.pool_snapshot().counters.connects

    for _ in range(200):
        with engine.connect() as connection:
            # A hard invalidation closes the DBAPI connection: the next checkout opens a new one.
            connection.invalidate()

    def slow(index: int) -> None:
        with engine.connect() as connection:
            # A distinct shape each time (column alias), so each is its own slow-query group.
            connection.execute(text(f"SELECT pg_sleep(0.21) AS pause_{index}"))

    with ThreadPoolExecutor(max_workers=5) as pool:
        list(pool.map(slow, range(50)))

    _wait_for_probe(client)
    body = _scrape(client)
    assert _sample(client, names.SLOW_QUERIES_TOTAL) == slow_before + 50
    assert _sample(client, names.INVALIDATIONS_TOTAL, hard) == invalidated_before + 200
    assert monitor.pool_snapshot().counters.connects >= connects_before + 200  # new backends
    assert _series(body) == before
    assert "pg_sleep" not in body and "pause_" not in body
    assert "pid" not in {label for _, labels in _series(body) for label, _ in labels}


def test_scrape_is_fast_while_the_pool_is_exhausted(client: TestClient, engine: Engine) -> None:
    _wait_for_probe(client)
    timings: list[float] = []
    with holding(engine, 5):  # pool_size 3 + max_overflow 2: nothing left to take
        for _ in range(10):
            started = time.perf_counter()
            body = _scrape(client)
            timings.append(time.perf_counter() - started)
        assert (
            f'db_client_connection_count{{{names.POOL_NAME}="{POOL}",{names.STATE}="used"}} 5.0'
            in body
        )
    assert statistics.median(timings) < 0.1, timings


def _sample(client: TestClient, name: str, labels: dict[str, str] | None = None) -> float:
    wanted = labels or {names.POOL_NAME: POOL}
    for family in text_string_to_metric_families(_scrape(client)):
        for sample in family.samples:
            if sample.name == name and sample.labels == wanted:
                return sample.value
    raise AssertionError(f"{name}{wanted} not exposed")


OPENMETRICS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)  # what Prometheus sends


def test_openmetrics_when_the_scraper_asks_for_it(client: TestClient) -> None:
    _wait_for_probe(client)
    response = client.get("/metrics", headers={"Accept": OPENMETRICS_ACCEPT})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    body = response.text
    assert body.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(body)}
    wait = families[names.WAIT_TIME_SECONDS]
    assert wait.type == "histogram" and wait.unit == "seconds"
    assert families[names.TIMEOUTS_TOTAL.removesuffix("_total")].type == "counter"
    # The same series as the classic text format, whichever format was chosen.
    classic = client.get("/metrics", headers={"Accept": "text/plain"})
    assert classic.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert {s.name for f in families.values() for s in f.samples} == {
        s.name for f in text_string_to_metric_families(classic.text) for s in f.samples
    }
    assert "Accept" in response.headers["vary"]


def test_gzip_only_when_accepted(client: TestClient) -> None:
    compressed = client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert compressed.headers["content-encoding"] == "gzip"
    # httpx decoded it: fewer bytes came over the wire than the text it decoded to.
    assert compressed.num_bytes_downloaded < len(compressed.content) / 3
    assert "db_client_connection_max" in compressed.text
    plain = client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.num_bytes_downloaded == len(plain.content)
    assert "Accept-Encoding" in plain.headers["vary"]


def test_metrics_handler_runs_off_the_event_loop(client: TestClient) -> None:
    # A plain function: Starlette runs it in its threadpool, so a slow collection or the gzip
    # of a large body never blocks the loop that serves the app's requests.
    (route,) = [r for r in client.app.routes if getattr(r, "path", None) == "/metrics"]  # type: ignore[attr-defined]
    endpoint = route.endpoint  # type: ignore[attr-defined]
    assert not inspect.iscoroutinefunction(endpoint)
