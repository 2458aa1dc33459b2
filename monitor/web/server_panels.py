"""Panel builders for the server's side: sessions and capacity, blocked and blocking sessions,
orphans and phantoms. Pure, like every builder: a `MonitorView` in, formatted rows out."""

from __future__ import annotations

from dataclasses import dataclass

from monitor.state.server import (
    ACTIVITY_STATES,
    CLIENT_BACKEND,
    Backend,
    ServerSample,
    blocked_sessions,
    sessions_by_state,
)
from monitor.state.session_cap import SESSION_LIST_CAP, CappedSessions, cap_sessions
from monitor.state.view import MonitorView
from monitor.web.formatting import (
    NOTHING,
    STATUS_LABELS,
    Fact,
    ago,
    duration,
    holder_label,
    percent,
    pid_text,
    wait_event_text,
)
from monitor.web.render_context import RenderContext

_ALWAYS_SHOWN_STATES = ("active", "idle", "idle in transaction")


# ---- server sessions and capacity ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CountRow:
    label: str
    count: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CapacityView:
    used: str  # "12 of 97 connections"
    used_pct: int | None
    pool_share: str
    warning: str | None
    status: str
    status_label: str


@dataclass(frozen=True, slots=True)
class ServerPanel:
    available: bool  # a sample exists (possibly stale)
    stale: str | None  # why the numbers are old, when they are
    database: str
    by_state: tuple[CountRow, ...]
    by_application: tuple[CountRow, ...]
    capacity: CapacityView
    settings: tuple[Fact, ...]
    fresh: str = ""


def _capacity(view: MonitorView) -> CapacityView:
    cap = view.capacity
    if cap.server_available is None or cap.server_sessions is None:
        return CapacityView(
            "unknown until the first probe", None, f"this pool may open {cap.pool_max}",
            None, "unknown", STATUS_LABELS["unknown"],
        )  # fmt: skip
    status = "ok"
    if (cap.pool_share_ratio or 0) > 1 or (cap.used_ratio or 0) >= 0.9:
        status = "fail"
    elif cap.warning:
        status = "warn"
    return CapacityView(
        used=(
            f"{cap.server_sessions} of {cap.server_available} connections in use, "
            f"{max(0, cap.server_available - cap.server_sessions)} free"
        ),
        used_pct=None if cap.used_ratio is None else max(0, min(100, round(cap.used_ratio * 100))),
        pool_share=(
            f"this pool may open {cap.pool_max} ({percent(cap.pool_share_ratio)} of the server)"
        ),
        warning=cap.warning,
        status=status,
        status_label=STATUS_LABELS[status],
    )


def _client_backends(sample: ServerSample) -> list[Backend]:
    return [b for b in sample.backends if b.backend_type == CLIENT_BACKEND]


def build_server(view: MonitorView, ctx: RenderContext) -> ServerPanel:
    sample = view.server.last_sample
    capacity = _capacity(view)
    if sample is None:
        return ServerPanel(False, None, NOTHING, (), (), capacity, ())
    stale = None
    if not view.server.up:
        stale = (
            f"stale: last successful probe {ago(view.server.last_success_at, view.pool.taken_at)}"
        )
    counts = sessions_by_state(sample)
    by_state = tuple(
        CountRow(state, count)
        for (_, state), count in sorted(
            counts.items(),
            key=lambda item: (
                ACTIVITY_STATES.index(item[0][1]) if item[0][1] in ACTIVITY_STATES else 99
            ),
        )
        if count > 0 or state in _ALWAYS_SHOWN_STATES
    )
    apps: dict[str, dict[str, int]] = {}
    for backend in _client_backends(sample):
        name = backend.application_name or "(no application_name)"
        states = apps.setdefault(name, {})
        state = backend.state or "unknown"
        states[state] = states.get(state, 0) + 1
    by_application = tuple(
        CountRow(name, sum(states.values()), ", ".join(f"{n} {s}" for s, n in states.items()))
        for name, states in sorted(apps.items(), key=lambda item: -sum(item[1].values()))
    )
    if len(by_application) > SESSION_LIST_CAP:  # one row per name: bounded like the lists
        rest = by_application[SESSION_LIST_CAP - 1 :]
        by_application = (
            *by_application[: SESSION_LIST_CAP - 1],
            CountRow(f"({len(rest)} other applications)", sum(r.count for r in rest), ""),
        )
    s = sample.settings
    settings = (
        Fact("server", f"PostgreSQL {s.server_version}"),
        Fact("max_connections", str(s.max_connections)),
        Fact("reserved", str(s.superuser_reserved_connections + s.reserved_connections)),
        Fact("statement_timeout", _timeout(s.statement_timeout_s)),
        Fact("idle_in_transaction_session_timeout", _timeout(s.idle_in_transaction_session_timeout_s)),
        Fact("idle_session_timeout", _timeout(s.idle_session_timeout_s)),
        Fact("transaction_timeout", _timeout(s.transaction_timeout_s)),
    )  # fmt: skip
    return ServerPanel(
        True, stale, sample.database, by_state, by_application, capacity, settings,
        _server_fresh(view),
    )  # fmt: skip


def _timeout(seconds: float | None) -> str:
    return "off" if seconds is None else duration(seconds)


# ---- blocked and blocking sessions -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRow:
    pid: str
    application: str
    user: str
    state: str
    wait_event: str
    age: str  # how long in this state (blocked) or in the transaction (blocker)
    blocked_by: str
    owner: str  # the pool holder's route when the backend is one of our connections
    query: str


@dataclass(frozen=True, slots=True)
class BlockingPanel:
    available: bool
    blocked: tuple[SessionRow, ...]
    blocking: tuple[SessionRow, ...]
    fresh: str = ""
    omitted: str | None = None  # the cap, stated, when sessions were left out

    @property
    def calm(self) -> bool:
        return self.available and not self.blocked and not self.blocking


def _owners(view: MonitorView) -> dict[int, str]:
    return {
        h.connection.pid: holder_label(h.connection.holder)
        for h in view.held
        if h.connection.pid is not None
    }


def _session_row(backend: Backend, owners: dict[int, str], age: float | None) -> SessionRow:
    return SessionRow(
        pid=str(backend.pid),
        application=backend.application_name or NOTHING,
        user=backend.usename or NOTHING,
        state=backend.state or NOTHING,
        wait_event=wait_event_text(backend),
        age=duration(age),
        blocked_by=", ".join(str(pid) for pid in backend.blocked_by) or NOTHING,
        owner=owners.get(backend.pid, NOTHING),
        query=backend.query or NOTHING,
    )


def build_blocking(view: MonitorView, ctx: RenderContext) -> BlockingPanel:
    sample = view.server.last_sample if view.server.up else None
    if sample is None:
        return BlockingPanel(False, (), ())
    owners = _owners(view)
    capped = cap_sessions(blocked_sessions(sample))
    blocked = list(capped.shown)
    blocker_pids = sorted({pid for backend in blocked for pid in backend.blocked_by})
    by_pid = {backend.pid: backend for backend in sample.backends}
    blocking = []
    for pid in blocker_pids:
        backend = by_pid.get(pid)
        if backend is None:  # in another database: only the pid is known
            blocking.append(
                SessionRow(str(pid), NOTHING, NOTHING, "other database", NOTHING, NOTHING,
                           NOTHING, owners.get(pid, NOTHING), NOTHING)
            )  # fmt: skip
        else:
            blocking.append(_session_row(backend, owners, backend.xact_age_s))
    return BlockingPanel(
        True,
        tuple(_session_row(b, owners, b.state_age_s) for b in blocked),
        tuple(blocking[:SESSION_LIST_CAP]),
        _server_fresh(view),
        _omitted_note(capped, "waiting sessions"),
    )


def _omitted_note(capped: CappedSessions, what: str) -> str | None:
    if not capped.omitted:
        return None
    states = ", ".join(f"{count} {state}" for state, count in capped.omitted_by_state)
    return (
        f"{len(capped.shown)} of {capped.total} {what} listed (at most {capped.cap}); "
        f"not listed: {states}"
    )


# ---- orphans and phantoms --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PhantomRow:
    slot: int
    pid: str
    connected: str
    checked_out: str
    route: str


MAX_ORPHAN_ROWS = 10


@dataclass(frozen=True, slots=True)
class OrphansPanel:
    available: bool
    orphans: tuple[SessionRow, ...]
    phantoms: tuple[PhantomRow, ...]
    orphans_hidden: int = 0  # beyond MAX_ORPHAN_ROWS: counted, not listed
    fresh: str = ""

    @property
    def calm(self) -> bool:
        return self.available and not self.orphans and not self.phantoms


def build_orphans(view: MonitorView, ctx: RenderContext) -> OrphansPanel:
    if not view.server.up:
        return OrphansPanel(False, (), ())
    now = view.pool.taken_at
    # The oldest first: a forgotten connection outlives the churn around it.
    orphans = sorted(view.orphans, key=lambda b: -(b.backend_age_s or 0.0))
    return OrphansPanel(
        True,
        tuple(_session_row(b, {}, b.backend_age_s) for b in orphans[:MAX_ORPHAN_ROWS]),
        tuple(
            PhantomRow(
                slot=c.slot_id,
                pid=pid_text(c.pid),
                connected=ago(c.connected_at, now),
                checked_out="yes" if c.checked_out else "no",
                route=holder_label(c.holder),
            )
            for c in view.phantoms[:SESSION_LIST_CAP]
        ),
        max(0, len(orphans) - MAX_ORPHAN_ROWS),
        _server_fresh(view),
    )


def _server_fresh(view: MonitorView) -> str:
    sample = view.server.last_sample
    if sample is None:
        return "no server sample yet"
    return f"server data {duration(max(0.0, view.pool.taken_at - sample.taken_at))} old"
