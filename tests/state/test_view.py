"""The joined view built from literal records: held connections, orphans, phantoms, capacity, rules."""

from __future__ import annotations

from monitor.state.holders import RequestScope
from monitor.state.records import PoolStats
from monitor.state.server import Backend, ServerHealthSnapshot, ServerSample, ServerSettings
from monitor.state.tracker import PoolTracker
from monitor.state.view import AppInfo, build_view
from tests.state.conftest import FakeClock


def backend(pid: int, state: str | None, *, app: str = "app", state_age_s: float = 1.0) -> Backend:
    return Backend(
        pid=pid, datname="db", usename="u", application_name=app, client_addr=None,
        backend_type="client backend", state=state, wait_event_type=None, wait_event=None,
        backend_age_s=10.0, xact_age_s=state_age_s if state and "transaction" in state else None,
        query_age_s=state_age_s, state_age_s=state_age_s, query="SELECT $1", query_hidden=False,
    )  # fmt: skip


SETTINGS = ServerSettings(
    server_version="15.0", server_version_num=150000, max_connections=20,
    superuser_reserved_connections=3, reserved_connections=0,
    idle_in_transaction_session_timeout_s=60.0, statement_timeout_s=None,
    idle_session_timeout_s=None, transaction_timeout_s=None,
)  # fmt: skip


def health(
    backends: tuple[Backend, ...], *, up: bool = True, taken_at: float = 2e9
) -> ServerHealthSnapshot:
    sample = ServerSample(
        taken_at=taken_at, duration_s=0.003, database="db", backends=backends,
        total_client_sessions=len(backends) + 1, settings=SETTINGS,
    )  # fmt: skip
    return ServerHealthSnapshot(
        up=up, last_sample=sample, errors_total=0, last_error=None, last_error_at=None,
        last_success_at=taken_at, probe_durations_s=(0.003,), probes_total=1, skipped_total=0,
        hidden_queries=0,
    )  # fmt: skip


def stats(max_connections: int = 10, *, pre_ping: bool = True) -> PoolStats:
    return PoolStats(
        pool_class="QueuePool", size=5, max_overflow=max_connections - 5,
        max_connections=max_connections, checked_out=1, checked_in=1, overflow=0, timeout_s=10.0,
        recycle_s=1800.0, pre_ping=pre_ping, echo=False,
    )  # fmt: skip


APP = AppInfo("postgresql://u:***@localhost/db", "DATABASE_URL", True, None, 1)


def tracker_with(clock: FakeClock, pids: list[int]) -> PoolTracker:
    tracker = PoolTracker(
        "app", leak_threshold_s=5, slow_query_s=1, clock=clock, wall_clock=lambda: clock.now + 1e9
    )
    for pid in pids:
        slot = tracker.new_slot()
        tracker.connected(slot, pid, None)
        if pid == pids[0]:
            tracker.checkout(slot, RequestScope.named("POST", "/demo/leak", "r1"), None, ())
    return tracker


def test_held_connection_joined_with_kill_timer(clock: FakeClock) -> None:
    tracker = tracker_with(clock, [11, 12])
    clock.advance(6)
    tracker.sweep({11: "idle in transaction"})
    server = health((backend(11, "idle in transaction", state_age_s=45.0), backend(12, "idle")))
    view = build_view(tracker.snapshot(), stats(), server, APP)
    (held,) = view.held
    assert held.server is not None and held.server.pid == 11
    assert held.killed_by == "idle_in_transaction_session_timeout"
    assert held.killed_in_s == 15.0
    assert view.drift == 0
    rules = {rule.rule: rule for rule in view.rules}
    assert rules["Commit explicitly, handle rollbacks"].status == "fail"
    assert rules["Always close sessions"].status == "fail"
    assert rules["One engine per app"].status == "ok"


def test_orphans_and_phantoms(clock: FakeClock) -> None:
    tracker = tracker_with(clock, [11, 12])
    # 12 is gone from the server (killed); 99 is ours by name but unknown to the pool; 50 is another app.
    server = health((backend(11, "active"), backend(99, "idle"), backend(50, "idle", app="other")))
    view = build_view(tracker.snapshot(), stats(), server, APP)
    assert [b.pid for b in view.orphans] == [99]
    assert [c.pid for c in view.phantoms] == [12]


def test_stale_server_data_is_not_joined(clock: FakeClock) -> None:
    tracker = tracker_with(clock, [11])
    view = build_view(tracker.snapshot(), stats(), health((backend(11, "idle"),), up=False), APP)
    assert view.held[0].server is None and view.orphans == () and view.phantoms == ()


def test_capacity_warns_when_pool_exceeds_server(clock: FakeClock) -> None:
    tracker = tracker_with(clock, [11])
    view = build_view(
        tracker.snapshot(), stats(max_connections=30), health((backend(11, "idle"),)), APP
    )
    assert view.capacity.server_available == 17
    assert view.capacity.pool_share_ratio is not None and view.capacity.pool_share_ratio > 1
    assert view.capacity.warning is not None and "only 17" in view.capacity.warning
    rules = {rule.rule: rule for rule in view.rules}
    assert rules["Use the pool"].status == "fail"


def test_rules_all_ok_on_a_healthy_pool(clock: FakeClock) -> None:
    tracker = PoolTracker("app", leak_threshold_s=5, slow_query_s=1, clock=clock)
    view = build_view(tracker.snapshot(), stats(), health(()), APP)
    assert {rule.status for rule in view.rules} == {"ok"}
    assert len(view.rules) == 8


def test_the_commit_rule_counts_only_idle_in_transaction_past_the_minimum_age(
    clock: FakeClock,
) -> None:
    tracker = tracker_with(clock, [11, 12])
    slot = next(s for s in tracker._open.values() if s.pid == 12)
    tracker.checkout(slot, None, "worker", ())

    def commit_rule(*ages: float) -> tuple[str, str]:
        server = health(tuple(backend(pid, "idle in transaction", state_age_s=age)
                              for pid, age in zip((11, 12), ages, strict=True)))  # fmt: skip
        view = build_view(tracker.snapshot(), stats(), server, APP)
        rule = next(r for r in view.rules if r.rule == "Commit explicitly, handle rollbacks")
        return rule.status, rule.why

    # Between two statements of a transaction: milliseconds, not a finding (minimum 1 s).
    status, why = commit_rule(0.02, 0.0)
    assert status == "ok" and why.startswith("0 held connection(s) idle in transaction for 1 s")
    status, why = commit_rule(0.02, 3.4)
    assert status == "warn" and "1 held connection(s)" in why and "(oldest 3.4 s)" in why


def test_a_leak_that_outlived_its_request_idle_in_transaction_fails_the_commit_rule(
    clock: FakeClock,
) -> None:
    tracker = PoolTracker("app", leak_threshold_s=5, slow_query_s=1, clock=clock)
    slot = tracker.new_slot()
    tracker.connected(slot, 11, None)
    request = RequestScope.named("POST", "/orders", "o-1")
    tracker.checkout(slot, request, None, ())
    request.finish()
    (leak,) = tracker.sweep()
    server = health((backend(11, "idle in transaction", state_age_s=2.0),))
    view = build_view(tracker.snapshot(), stats(), server, APP)
    rule = next(r for r in view.rules if r.rule == "Commit explicitly, handle rollbacks")
    assert leak.leak_class.value == "outlived_owner"
    assert rule.status == "fail" and "1 of them suspected leaks" in rule.why
