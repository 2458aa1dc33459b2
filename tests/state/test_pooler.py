"""Behind a pooler: detection, the join through PgBouncer, and no fact invented without it."""

from __future__ import annotations

import dataclasses

from monitor.state.pgbouncer import (
    PgBouncerHealthSnapshot,
    PgBouncerPeer,
    PgBouncerPool,
    PgBouncerSample,
)
from monitor.state.pooler import (
    JOIN_DIRECT,
    JOIN_NONE,
    JOIN_PGBOUNCER,
    pooler_info,
    states_by_driver_pid,
)
from monitor.state.records import NO_SERVER_SESSION, LeakClass
from monitor.state.tracker import classify
from monitor.state.view import build_view
from tests.web.snapshots import APP, NOW, backend, connection, pool, server, stats


def behind_pooler(*backends_: object) -> object:
    health = server(tuple(backends_))  # type: ignore[arg-type]
    assert health.last_sample is not None
    sample = dataclasses.replace(health.last_sample, via_pooler=True)
    return dataclasses.replace(health, last_sample=sample)


def console(mode: str, *, port: int = 40001, server_pid: int = 777) -> PgBouncerHealthSnapshot:
    peer = PgBouncerPeer(
        "db", "u", "active", "127.0.0.1", port, 6432, "0xc", "0xs", None, "app", 0.0
    )
    server_peer = dataclasses.replace(peer, port=5432, ptr="0xs", link="0xc", remote_pid=server_pid)
    pool_row = PgBouncerPool("db", "u", mode, 1, 0, 1, 0, 0, 0, 0, 0.0)
    sample = PgBouncerSample(NOW, 0.01, mode, 100, 20, (pool_row,), (), (peer,), (server_peer,))
    return PgBouncerHealthSnapshot(True, sample, 0, None, NOW, 0.01)


def held(pid: int, port: int | None = None) -> object:
    return dataclasses.replace(
        connection(slot=abs(pid), pid=pid), client_addr="127.0.0.1", client_port=port
    )


def test_direct_when_the_probe_sees_its_own_pid() -> None:
    info = pooler_info(server(), None)
    assert not info.detected and info.join == JOIN_DIRECT


def test_without_a_console_a_pooler_invents_no_server_fact() -> None:
    # PgBouncer's random key may even equal some server pid: it must not be looked up.
    health = behind_pooler(backend(101, "idle in transaction"), backend(102, "idle"))
    snapshot = pool(connections=(held(101), held(555)), checked_out=2)
    view = build_view(snapshot, stats(checked_out=2), health, APP)  # type: ignore[arg-type]
    assert view.pooler is not None and view.pooler.detected and view.pooler.join == JOIN_NONE
    assert all(h.server is None and h.server_pid is None for h in view.held)
    assert all("pgbouncer_url" in (h.no_server_view or "") for h in view.held)
    assert view.phantoms == () and view.orphans == ()
    rule = next(r for r in view.rules if r.rule.startswith("Commit explicitly"))
    assert rule.status == "warn" and rule.why.startswith("1 server session(s) of db")


def test_session_mode_joins_through_the_client_socket() -> None:
    health = behind_pooler(backend(777, "idle in transaction"))
    snapshot = pool(connections=(held(-4048, port=40001), held(-5000, port=40002)), checked_out=2)
    view = build_view(snapshot, stats(checked_out=2), health, APP, pgbouncer=console("session"))  # type: ignore[arg-type]
    assert view.pooler is not None and view.pooler.join == JOIN_PGBOUNCER
    joined = {h.connection.pid: h for h in view.held}
    assert joined[-4048].server_pid == 777 and joined[-4048].server is not None
    assert joined[-5000].server is None and joined[-5000].no_server_view is None  # not linked yet
    assert view.phantoms == ()


def test_transaction_mode_classifies_held_connections_as_no_server_view() -> None:
    health = behind_pooler(backend(777, "idle"))
    info = pooler_info(health, console("transaction"))  # type: ignore[arg-type]
    assert info.pool_mode == "transaction" and info.join == JOIN_NONE
    states = states_by_driver_pid(
        [held(-4048, port=40001)], info, console("transaction"), {777: "idle"}
    )  # type: ignore[list-item]
    assert states == {-4048: NO_SERVER_SESSION}
    assert classify(states[-4048]) is LeakClass.NO_SERVER_VIEW
