"""Server-side records: probe health transitions, exporter-style aggregates, kill timers."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest

from monitor.state.server import (
    ACTIVITY_STATES,
    HIDDEN_QUERY,
    Backend,
    ServerHealth,
    ServerSample,
    ServerSettings,
    blocked_sessions,
    max_tx_age_by_state,
    seconds_until_killed,
    sessions_by_state,
    short_error,
)


class StepClock:
    """Wall time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make_settings(**overrides: object) -> ServerSettings:
    values: dict[str, object] = {
        "server_version": "15.20",
        "server_version_num": 150020,
        "max_connections": 100,
        "superuser_reserved_connections": 3,
        "reserved_connections": 0,
        "idle_in_transaction_session_timeout_s": None,
        "statement_timeout_s": None,
        "idle_session_timeout_s": None,
        "transaction_timeout_s": None,
    }
    values.update(overrides)
    return ServerSettings(**values)  # type: ignore[arg-type]


def make_backend(pid: int, **overrides: object) -> Backend:
    values: dict[str, object] = {
        "pid": pid,
        "datname": "app",
        "usename": "app",
        "application_name": "web",
        "client_addr": "10.0.0.5",
        "backend_type": "client backend",
        "state": "idle",
        "wait_event_type": "Client",
        "wait_event": "ClientRead",
        "backend_age_s": 100.0,
        "xact_age_s": None,
        "query_age_s": 5.0,
        "state_age_s": 5.0,
        "query": "SELECT $1",
        "query_hidden": False,
        "blocked_by": (),
    }
    values.update(overrides)
    return Backend(**values)  # type: ignore[arg-type]


def make_sample(*backends: Backend, taken_at: float = 1.0) -> ServerSample:
    return ServerSample(
        taken_at=taken_at,
        duration_s=0.002,
        database="app",
        backends=backends,
        total_client_sessions=len(backends) + 1,
        settings=make_settings(),
    )


# --- ServerHealth ---------------------------------------------------------------------------


def test_health_is_unknown_before_the_first_probe() -> None:
    snapshot = ServerHealth(clock=StepClock()).snapshot()
    assert snapshot.up is None
    assert snapshot.last_sample is None
    assert snapshot.last_success_at is None
    assert (snapshot.probes_total, snapshot.errors_total, snapshot.skipped_total) == (0, 0, 0)
    assert snapshot.probe_durations_s == ()


def test_health_up_down_up_keeps_the_last_sample_while_down() -> None:
    clock = StepClock()
    health = ServerHealth(clock=clock)
    sample = make_sample(make_backend(1))
    health.record_success(sample)
    first_success_at = clock.now
    assert health.snapshot().up is True

    clock.now += 5
    health.record_failure("OperationalError: connection refused", 0.01)
    down = health.snapshot()
    assert down.up is False
    assert down.last_sample is sample  # still shown, marked stale by up=False
    assert down.last_success_at == first_success_at
    assert down.last_error == "OperationalError: connection refused"
    assert down.last_error_at == clock.now
    assert down.errors_total == 1

    clock.now += 5
    newer = make_sample(taken_at=2.0)
    health.record_success(newer)
    up = health.snapshot()
    assert up.up is True
    assert up.last_sample is newer
    assert up.last_success_at == clock.now
    assert up.errors_total == 1  # a counter, not a state
    assert up.last_error == "OperationalError: connection refused"
    assert up.probes_total == 3


def test_durations_buffer_is_bounded_and_ordered() -> None:
    health = ServerHealth(clock=StepClock(), durations_kept=3)
    for i in range(10):
        health.record_failure("boom", float(i))
    assert health.snapshot().probe_durations_s == (7.0, 8.0, 9.0)
    assert health.snapshot().probes_total == 10


def test_skipped_ticks_are_counted_apart_from_probes() -> None:
    health = ServerHealth(clock=StepClock())
    health.record_skipped()
    health.record_skipped()
    snapshot = health.snapshot()
    assert snapshot.skipped_total == 2
    assert snapshot.probes_total == 0
    assert snapshot.up is None


def test_hidden_queries_counts_rows_of_the_last_sample() -> None:
    health = ServerHealth(clock=StepClock())
    health.record_success(
        make_sample(
            make_backend(1),
            make_backend(2, query=HIDDEN_QUERY, query_hidden=True, state=None),
            make_backend(3, query=HIDDEN_QUERY, query_hidden=True, state=None),
        )
    )
    assert health.snapshot().hidden_queries == 2
    health.record_success(make_sample(make_backend(1)))
    assert health.snapshot().hidden_queries == 0


def test_failure_text_is_short_and_has_no_url_or_password() -> None:
    health = ServerHealth(clock=StepClock())
    health.record_failure(
        "could not connect to postgresql://app:hunter2@db:5432/app password=hunter2 "
        + "x" * 500
        + "\nsecond line with details",
        0.5,
    )
    error = health.snapshot().last_error
    assert error is not None
    assert "hunter2" not in error
    assert "postgresql://" not in error
    assert "second line" not in error
    assert len(error) <= 200


def test_short_error_keeps_plain_messages() -> None:
    assert short_error("timeout expired") == "timeout expired"
    assert short_error("") == "unknown error"


def test_health_is_safe_under_concurrent_writers() -> None:
    health = ServerHealth(clock=StepClock(), durations_kept=50)
    sample = make_sample()

    def write(n: int) -> None:
        for _ in range(n):
            health.record_success(sample)
            health.record_failure("x", 0.1)
            health.record_skipped()

    threads = [threading.Thread(target=write, args=(500,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    snapshot = health.snapshot()
    assert snapshot.probes_total == 4_000
    assert snapshot.errors_total == 2_000
    assert snapshot.skipped_total == 2_000
    assert len(snapshot.probe_durations_s) == 50


def test_snapshot_is_plain_data() -> None:
    health = ServerHealth(clock=StepClock())
    health.record_success(make_sample(make_backend(1, blocked_by=(2,))))
    data = dataclasses.asdict(health.snapshot())
    assert json.loads(json.dumps(data))["last_sample"]["backends"][0]["blocked_by"] == [2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        health.snapshot().up = False  # type: ignore[misc]


# --- aggregates -----------------------------------------------------------------------------


def test_sessions_by_state_counts_client_backends_with_every_state_present() -> None:
    sample = make_sample(
        make_backend(1, state="active"),
        make_backend(2, state="active"),
        make_backend(3, state="idle in transaction", xact_age_s=4.0),
        make_backend(4, state="active", backend_type="autovacuum worker"),
        make_backend(5, state=None, backend_type=None, query_hidden=True, query=HIDDEN_QUERY),
    )
    counts = sessions_by_state(sample)
    assert counts[("app", "active")] == 2
    assert counts[("app", "idle in transaction")] == 1
    assert counts[("app", "idle")] == 0
    assert {state for _, state in counts} == set(ACTIVITY_STATES)
    assert sum(counts.values()) == 3


def test_max_tx_age_by_state_takes_the_oldest_transaction() -> None:
    sample = make_sample(
        make_backend(1, state="idle in transaction", xact_age_s=4.0),
        make_backend(2, state="idle in transaction", xact_age_s=40.0),
        make_backend(3, state="active", xact_age_s=0.5),
        make_backend(4, state="idle", xact_age_s=None),
        make_backend(5, state="active", xact_age_s=99.0, backend_type="autovacuum worker"),
    )
    ages = max_tx_age_by_state(sample)
    assert ages[("app", "idle in transaction")] == 40.0
    assert ages[("app", "active")] == 0.5
    assert ages[("app", "idle")] == 0.0
    assert ages[("app", "disabled")] == 0.0


def test_blocked_sessions() -> None:
    blocker = make_backend(1, state="idle in transaction", xact_age_s=3.0)
    waiter = make_backend(2, state="active", wait_event_type="Lock", blocked_by=(1,))
    assert blocked_sessions(make_sample(blocker, waiter)) == [waiter]
    assert blocked_sessions(make_sample(blocker)) == []


# --- seconds_until_killed -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "settings", "expected"),
    [
        pytest.param(
            make_backend(1, state="idle in transaction", state_age_s=20.0, xact_age_s=25.0),
            make_settings(idle_in_transaction_session_timeout_s=60.0),
            ("idle_in_transaction_session_timeout", 40.0),
            id="idle-in-transaction",
        ),
        pytest.param(
            make_backend(1, state="idle in transaction (aborted)", state_age_s=59.5, xact_age_s=60),
            make_settings(idle_in_transaction_session_timeout_s=60.0),
            ("idle_in_transaction_session_timeout", 0.5),
            id="aborted-transaction",
        ),
        pytest.param(
            make_backend(1, state="active", query_age_s=2.0, xact_age_s=2.0),
            make_settings(statement_timeout_s=30.0, idle_in_transaction_session_timeout_s=5.0),
            ("statement_timeout", 28.0),
            id="active-statement",
        ),
        pytest.param(
            make_backend(1, state="idle", state_age_s=290.0),
            make_settings(idle_session_timeout_s=300.0, statement_timeout_s=1.0),
            ("idle_session_timeout", 10.0),
            id="idle-session",
        ),
        pytest.param(
            make_backend(1, state="active", query_age_s=2.0, xact_age_s=55.0),
            make_settings(statement_timeout_s=30.0, transaction_timeout_s=60.0),
            ("transaction_timeout", 5.0),
            id="transaction-timeout-first",
        ),
        pytest.param(
            make_backend(1, state="idle in transaction", state_age_s=90.0, xact_age_s=95.0),
            make_settings(idle_in_transaction_session_timeout_s=60.0),
            ("idle_in_transaction_session_timeout", 0.0),
            id="overdue-clamped-to-zero",
        ),
    ],
)
def test_seconds_until_killed(
    backend: Backend, settings: ServerSettings, expected: tuple[str, float]
) -> None:
    result = seconds_until_killed(backend, settings)
    assert result is not None
    assert result[0] == expected[0]
    assert result[1] == pytest.approx(expected[1])


@pytest.mark.parametrize(
    ("backend", "settings"),
    [
        pytest.param(
            make_backend(1, state="idle in transaction", state_age_s=5.0, xact_age_s=5.0),
            make_settings(statement_timeout_s=1.0, idle_session_timeout_s=1.0),
            id="no-matching-timeout",
        ),
        pytest.param(
            make_backend(1, state="idle", state_age_s=5.0),
            make_settings(),
            id="all-off",
        ),
        pytest.param(
            make_backend(1, state="active", query_age_s=5.0, backend_type="autovacuum worker"),
            make_settings(statement_timeout_s=1.0),
            id="not-a-client",
        ),
        pytest.param(
            make_backend(1, state=None, backend_type=None, query_hidden=True),
            make_settings(statement_timeout_s=1.0, idle_session_timeout_s=1.0),
            id="hidden-row",
        ),
    ],
)
def test_seconds_until_killed_none(backend: Backend, settings: ServerSettings) -> None:
    assert seconds_until_killed(backend, settings) is None


def test_available_connections_subtracts_reserved_slots() -> None:
    settings = make_settings(
        max_connections=100, superuser_reserved_connections=3, reserved_connections=2
    )
    assert settings.available_connections == 95
