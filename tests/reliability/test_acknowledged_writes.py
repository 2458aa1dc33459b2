"""Data safety: every write the app acknowledged (201) is in the database after a fault.

Eight write clients POST /products while every app backend is terminated, or the database is
stopped (fast: clean shutdown; immediate: a crash, recovered from the WAL) and started again.
Afterwards each acknowledged row is looked up directly in PostgreSQL: none may be missing.
The 503s the faults cost are counted and printed (a figure, not asserted: it depends on timing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from monitor.embedded import EmbeddedPostgres
from monitor.settings import Settings
from monitor.urls import app_url
from tests.conftest import url_string
from tests.reliability.conftest import serve_app, unique_name, wait_for

WRITERS = 8


@dataclass
class WriteLoad:
    """`WRITERS` threads POSTing uniquely named products until stopped; records what came back."""

    base: str
    prefix: str
    acknowledged: dict[str, int] = field(default_factory=dict)  # name -> id, answered 201
    statuses: list[tuple[float, int | None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> WriteLoad:
        for index in range(WRITERS):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        assert not [t for t in self._threads if t.is_alive()], "a writer did not stop"

    def acknowledged_since(self, moment: float) -> int:
        with self._lock:
            return sum(1 for at, status in self.statuses if at >= moment and status == 201)

    def _run(self, index: int) -> None:
        deadline = time.monotonic() + 120  # bounded even if never stopped
        with httpx.Client(base_url=self.base, timeout=15) as client:
            for n in range(1_000_000):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                name = f"{self.prefix}-{index}-{n}"
                try:
                    response = client.post("/products", json={"name": name, "price": "1.00"})
                    status: int | None = response.status_code
                except httpx.HTTPError:
                    status = None
                with self._lock:
                    self.statuses.append((time.monotonic(), status))
                    if status == 201:
                        self.acknowledged[name] = int(response.json()["id"])
                if status != 201:
                    self._stop.wait(0.05)  # a refused write: retry soon, not in a hot loop


def _missing(url: URL, acknowledged: dict[str, int]) -> list[str]:
    """Acknowledged names whose row (same id) is not in the database."""
    engine = create_engine(app_url(url_string(url)), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT name, id FROM products WHERE name = ANY(:names)"),
                {"names": list(acknowledged)},
            ).all()
    finally:
        engine.dispose()
    stored: dict[str, int] = {row[0]: row[1] for row in rows}
    return [name for name, row_id in acknowledged.items() if stored.get(name) != row_id]


def _fault_under_writes(
    url: URL, fault: Callable[[Engine, str], None], label: str
) -> tuple[int, int, int]:
    """Run the write load, apply `fault`, wait for writes to succeed again; returns
    (acknowledged writes, 5xx answers after the fault, answers without HTTP status)."""
    name = unique_name("pm-ack")
    settings = Settings(
        database_url=url_string(url),
        application_name=name,
        pool_size=5,
        max_overflow=5,
        pool_timeout_s=2.0,
        probe_interval_s=0.5,
        leak_threshold_s=10.0,
    )
    admin = create_engine(
        app_url(url_string(url)), poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )
    try:
        with serve_app(settings) as served, WriteLoad(served.base, name) as load:
            assert wait_for(lambda: len(load.acknowledged) >= 50, 60), "the writes never started"
            fault_at = time.monotonic()
            fault(admin, name)
            # Writes succeed again (bounded wait), then a few more to be sure.
            assert wait_for(lambda: load.acknowledged_since(fault_at + 0.5) >= 40, 90), (
                f"writes did not recover after {label}"
            )
        statuses = list(load.statuses)
        acknowledged = dict(load.acknowledged)
    finally:
        admin.dispose()
    missing = _missing(url, acknowledged)
    after = [status for at, status in statuses if at >= fault_at]
    errors = sum(1 for status in after if status is not None and status >= 500)
    unanswered = sum(1 for status in after if status is None)
    print(
        f"\n{label}: {len(acknowledged)} writes acknowledged, {len(missing)} lost; after the "
        f"fault {errors} x 5xx and {unanswered} without an answer, {WRITERS} writers"
    )
    assert not missing, f"{len(missing)} acknowledged writes lost after {label}: {missing[:5]}"
    return len(acknowledged), errors, unanswered


def _terminate_app_backends(admin: Engine, name: str) -> None:
    with admin.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                "FROM pg_stat_activity WHERE application_name = :name"
            ),
            {"name": name},
        ).scalar_one()
    assert killed >= 1


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_no_acknowledged_write_is_lost_when_every_backend_is_terminated(schema_url: URL) -> None:
    _, errors, unanswered = _fault_under_writes(
        schema_url, _terminate_app_backends, "backend termination"
    )
    assert unanswered == 0  # every write got an answer: 201 or a clean 503
    assert errors <= WRITERS + 2  # at most the writes in flight on the terminated backends


@pytest.mark.slow
@pytest.mark.embedded
@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_no_acknowledged_write_is_lost_when_the_database_stops(
    private_pg: EmbeddedPostgres, mode: str
) -> None:
    def stop_then_start(admin: Engine, name: str) -> None:
        private_pg.stop(mode)  # immediate: no checkpoint, recovery replays the WAL
        time.sleep(1.0)  # some writes meet a database that is not there
        private_pg.restart()

    url = private_pg.url()
    _fault_under_writes(url, stop_then_start, f"{mode} stop")
