"""The server's side of the picture: pg_stat_activity samples, settings, probe health.

Pure records plus a thread-safe holder the probe writes and every reader snapshots.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import dataclass

from monitor.state.clock import Clock, wall

CLIENT_BACKEND = "client backend"
# The states postgres_exporter reports for every database, in its order (0 when empty).
ACTIVITY_STATES: tuple[str, ...] = (
    "active",
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
    "fastpath function call",
    "disabled",
)
IDLE_IN_TRANSACTION_STATES = frozenset({"idle in transaction", "idle in transaction (aborted)"})
HIDDEN_QUERY = "<insufficient privilege>"
DEFAULT_DURATIONS_KEPT = 120
MAX_ERROR_CHARS = 200


@dataclass(frozen=True, slots=True)
class Backend:
    """One server process of the monitored database, ages in seconds at sampling time."""

    pid: int
    datname: str | None
    usename: str | None
    application_name: str | None
    client_addr: str | None  # None for Unix sockets, background workers and hidden rows
    backend_type: str | None
    state: str | None
    wait_event_type: str | None
    wait_event: str | None
    backend_age_s: float | None
    xact_age_s: float | None  # None outside a transaction
    query_age_s: float | None
    state_age_s: float | None
    query: str  # normalised (no literals) and truncated; HIDDEN_QUERY when not visible
    query_hidden: bool
    blocked_by: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The server-wide values that bound sessions; timeouts None when off or unknown here."""

    server_version: str
    server_version_num: int
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int  # PostgreSQL 16+, 0 before
    idle_in_transaction_session_timeout_s: float | None
    statement_timeout_s: float | None
    idle_session_timeout_s: float | None
    transaction_timeout_s: float | None  # PostgreSQL 17+

    @property
    def available_connections(self) -> int:
        """Slots open to ordinary roles: max_connections minus the reserved ones."""
        return (
            self.max_connections - self.superuser_reserved_connections - self.reserved_connections
        )


@dataclass(frozen=True, slots=True)
class ServerSample:
    """One successful probe: the backends of the current database and the server's limits."""

    taken_at: float  # unix time
    duration_s: float
    database: str
    backends: tuple[Backend, ...]  # current database, the probe's own backend excluded
    total_client_sessions: int  # whole server, the probe included
    settings: ServerSettings
    # The driver's backend pid differs from the server's: a pooler (PgBouncer) sits in between,
    # so pids the app's drivers report are not server pids.
    via_pooler: bool = False


@dataclass(frozen=True, slots=True)
class ServerHealthSnapshot:
    """What readers see of the probe: is the server up, the last sample, error counters."""

    up: bool | None  # None before the first probe finished
    last_sample: ServerSample | None  # kept when down: stale exactly when `up` is False
    errors_total: int
    last_error: str | None
    last_error_at: float | None
    last_success_at: float | None
    probe_durations_s: tuple[float, ...]  # the most recent, oldest first
    probes_total: int  # finished probes, success or failure
    skipped_total: int  # ticks dropped because the previous probe was still running
    hidden_queries: int  # rows of the last sample whose text this role may not read


class ServerHealth:
    """Thread-safe holder written by the probe thread and read by metrics and the dashboard."""

    def __init__(
        self, *, clock: Clock = wall, durations_kept: int = DEFAULT_DURATIONS_KEPT
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._up: bool | None = None
        self._last_sample: ServerSample | None = None
        self._errors_total = 0
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._last_success_at: float | None = None
        self._durations_s: deque[float] = deque(maxlen=max(1, durations_kept))
        self._probes_total = 0
        self._skipped_total = 0

    def record_success(self, sample: ServerSample) -> None:
        now = self._clock()
        with self._lock:
            self._up = True
            self._last_sample = sample
            self._last_success_at = now
            self._durations_s.append(sample.duration_s)
            self._probes_total += 1

    def record_failure(self, error: str, duration_s: float) -> None:
        """Mark the server down; `error` is shortened and stripped of URLs and passwords."""
        now = self._clock()
        message = short_error(error)
        with self._lock:
            self._up = False
            self._errors_total += 1
            self._last_error = message
            self._last_error_at = now
            self._durations_s.append(duration_s)
            self._probes_total += 1

    def record_skipped(self) -> None:
        """A tick found the previous probe still running and did nothing."""
        with self._lock:
            self._skipped_total += 1

    def snapshot(self) -> ServerHealthSnapshot:
        with self._lock:
            sample = self._last_sample
            return ServerHealthSnapshot(
                up=self._up,
                last_sample=sample,
                errors_total=self._errors_total,
                last_error=self._last_error,
                last_error_at=self._last_error_at,
                last_success_at=self._last_success_at,
                probe_durations_s=tuple(self._durations_s),
                probes_total=self._probes_total,
                skipped_total=self._skipped_total,
                hidden_queries=0
                if sample is None
                else sum(1 for b in sample.backends if b.query_hidden),
            )


_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
_PASSWORD_PAIR = re.compile(r"(password\s*[=:]\s*)('[^']*'|\"[^\"]*\"|\S+)", re.IGNORECASE)


def short_error(error: str) -> str:
    """First line of an error, URLs and `password=...` values masked, at most 200 characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else "unknown error"
    text = _URL.sub("<url>", text)
    text = _PASSWORD_PAIR.sub(r"\1***", text)
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return text


def _is_client(backend: Backend) -> bool:
    return backend.backend_type == CLIENT_BACKEND


def sessions_by_state(sample: ServerSample) -> dict[tuple[str, str], int]:
    """Client sessions per (datname, state), every known state present (postgres_exporter)."""
    counts = {(sample.database, state): 0 for state in ACTIVITY_STATES}
    for backend in sample.backends:
        if not _is_client(backend) or backend.state is None:
            continue
        key = (backend.datname or sample.database, backend.state)
        counts[key] = counts.get(key, 0) + 1
    return counts


def max_tx_age_by_state(sample: ServerSample) -> dict[tuple[str, str], float]:
    """Oldest open transaction of client sessions per (datname, state), 0 when none."""
    ages = {(sample.database, state): 0.0 for state in ACTIVITY_STATES}
    for backend in sample.backends:
        if not _is_client(backend) or backend.state is None or backend.xact_age_s is None:
            continue
        key = (backend.datname or sample.database, backend.state)
        ages[key] = max(ages.get(key, 0.0), backend.xact_age_s)
    return ages


def blocked_sessions(sample: ServerSample) -> list[Backend]:
    """Backends waiting on a lock another backend holds."""
    return [backend for backend in sample.backends if backend.blocked_by]


def seconds_until_killed(backend: Backend, settings: ServerSettings) -> tuple[str, float] | None:
    """The server timeout that will end this session first and the seconds left (0 if overdue).

    Uses server-wide values: a session may have changed its own timeouts with SET.
    """
    if backend.backend_type not in (CLIENT_BACKEND, None) or backend.state is None:
        return None
    candidates: list[tuple[str, float]] = []

    def consider(name: str, timeout_s: float | None, age_s: float | None) -> None:
        if timeout_s is not None and age_s is not None:
            candidates.append((name, max(0.0, timeout_s - age_s)))

    if backend.state in IDLE_IN_TRANSACTION_STATES:
        consider(
            "idle_in_transaction_session_timeout",
            settings.idle_in_transaction_session_timeout_s,
            backend.state_age_s,
        )
    elif backend.state == "active":
        consider("statement_timeout", settings.statement_timeout_s, backend.query_age_s)
    elif backend.state == "idle":
        consider("idle_session_timeout", settings.idle_session_timeout_s, backend.state_age_s)
    consider("transaction_timeout", settings.transaction_timeout_s, backend.xact_age_s)
    if not candidates:
        return None
    return min(candidates, key=lambda candidate: candidate[1])
