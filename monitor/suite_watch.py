"""Per-test leak findings for a test suite: which test or fixture left a connection behind.

Driven by the pytest plugin (`monitor.pytest_plugin`): every SQLAlchemy engine created while the
watch is on gets a `PoolMonitor` (no background work), and at the end of each phase (a fixture's
set-up or teardown, a test's call) the watch looks at what the pools hold. A checkout first seen
held at the end of a phase belongs to that phase: phases nest and the inner ones end first, so
a connection taken by a fixture that another fixture depends on belongs to the inner one.
"""

from __future__ import annotations

import gc
import importlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from monitor.instrumentation import attachments
from monitor.instrumentation.pools_seen import uncounted
from monitor.pool_monitor import PoolMonitor, sync_engine_of
from monitor.state.records import ConnectionView, PoolSnapshot
from monitor.state.sites import Frame
from monitor.state.tracker import PoolTracker, classify

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine  # types only: needs greenlet at run time

    from monitor.probes.runner import ServerProbe

log = logging.getLogger("monitor.pytest")

PROBE_APPLICATION_NAME = "pool-monitor-pytest"
# How often connections held across tests (session or module fixtures) are looked at on the
# server once each has been seen: a query per test would cost a suite more than the tests do.
OBSERVE_EVERY_S = 0.5

# Finding kinds, in the order a summary lists them.
HELD_AFTER_TEST = "held_after_test"
HELD_AFTER_FIXTURE = "held_after_fixture"
HELD_AFTER_SESSION = "held_after_session"
IDLE_IN_TRANSACTION = "idle_in_transaction"
GC_RECLAIMED = "gc_reclaimed"
MULTI_CONNECTION = "multi_connection_request"
POOL_TIMEOUT = "pool_timeout"
KINDS = (
    HELD_AFTER_TEST,
    HELD_AFTER_FIXTURE,
    HELD_AFTER_SESSION,
    IDLE_IN_TRANSACTION,
    GC_RECLAIMED,
    MULTI_CONNECTION,
    POOL_TIMEOUT,
)


@dataclass(frozen=True, slots=True)
class Owner:
    """A phase of the run that can hold connections: a test's call, a fixture, the session."""

    kind: str  # "test", "fixture" or "session"
    name: str  # node id, fixture name, or "import and collection"
    scope: str  # "function" for tests; the fixture's scope; "session"
    location: str  # file:line of the test or fixture function ("" when unknown)

    def describe(self) -> str:
        if self.kind == "fixture":
            return f"fixture '{self.name}' ({self.scope} scope)"
        if self.kind == "test":
            return f"test {self.name}"
        return self.name


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a test or fixture left wrong, with where the connection was taken."""

    kind: str
    owner: Owner
    pool_name: str
    leak_class: str | None  # server state of a held connection: idle_in_transaction, idle, ...
    held_for_s: float | None
    site: tuple[str, ...]  # "file:line in function", innermost (the line that took it) first
    test_line: str | None  # the frame of the test or fixture among them, if it took it directly
    route: str | None  # "GET /items/{item_id}" when a request held it
    request_id: str | None
    detail: str = ""
    allowed_reason: str | None = None  # set when a marker allows it

    def headline(self) -> str:
        held = f" for {self.held_for_s:.2f} s" if self.held_for_s is not None else ""
        state = f" ({self.leak_class})" if self.leak_class else ""
        what = {
            HELD_AFTER_TEST: f"connection still checked out when the test ended{state}",
            HELD_AFTER_FIXTURE: f"connection still checked out after the fixture's teardown{state}",
            HELD_AFTER_SESSION: f"connection still checked out at the end of the session{state}",
            IDLE_IN_TRANSACTION: "connection held idle in transaction across tests",
            GC_RECLAIMED: "connection reclaimed by the garbage collector (never closed)",
            MULTI_CONNECTION: "request held more than one connection of the pool at once",
            POOL_TIMEOUT: "checkout timed out waiting for the pool",
        }.get(self.kind, self.kind)
        return f"[{self.kind}] {what}{held}, pool {self.pool_name}"

    def lines(self) -> list[str]:
        out = [self.headline()]
        if self.route:
            request = f" (request id {self.request_id})" if self.request_id else ""
            out.append(f"    in request {self.route}{request}")
        if self.site:
            out.append(f"    taken at {self.site[0]}")
            out.extend(f"      called from {frame}" for frame in self.site[1:])
        if self.test_line and (not self.site or not self.site[0].startswith(self.test_line + " ")):
            out.append(f"    by {self.owner.kind} line {self.test_line}")
        if self.detail:
            out.append(f"    {self.detail}")
        if self.allowed_reason is not None:
            out.append(f"    allowed: {self.allowed_reason}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "owner": {
                "kind": self.owner.kind,
                "name": self.owner.name,
                "scope": self.owner.scope,
                "location": self.owner.location,
            },
            "pool": self.pool_name,
            "leak_class": self.leak_class,
            "held_for_s": self.held_for_s,
            "site": list(self.site),
            "test_line": self.test_line,
            "route": self.route,
            "request_id": self.request_id,
            "detail": self.detail,
            "allowed": self.allowed_reason,
        }


@dataclass(slots=True)
class _Hold:
    """A checkout the watch has seen held at a phase end, and who it belongs to."""

    owner: Owner
    idle_in_transaction_during: list[str] = field(default_factory=list)  # tests it was seen in
    site: tuple[Frame, ...] = ()  # kept from when it was seen idle in transaction
    held_for_s: float | None = None
    reported: bool = False  # said once already (still held after its owner finished)
    observed: bool = False  # its server state was read at least once


@dataclass(slots=True)
class _Watched:
    engine: weakref.ref[Engine]
    tracker: weakref.ref[PoolTracker]
    pool_name: str
    is_postgres: bool
    # Reclaims, timeouts and multi-connection requests already attributed (event_counts()).
    seen: tuple[int, int, int] = (0, 0, 0)
    holds: dict[tuple[int, int], _Hold] = field(default_factory=dict)  # (slot_id, checkouts)
    # Returned holds that sat idle in a transaction: reported when their owner finishes.
    retired: list[_Hold] = field(default_factory=list)
    # The watch's own monitor while no monitor of the app's watches the engine (weak: the
    # engine's events and wrappers keep the listeners alive as long as the engine lives).
    passive: tuple[weakref.ref[Any], ...] = ()

    def follow(self, tracker: PoolTracker) -> None:
        """Read `tracker` from now on: its slots and counts are its own."""
        self.tracker = weakref.ref(tracker)
        self.holds.clear()
        self.seen = tracker.event_counts()


SESSION_OWNER = Owner("session", "import and collection", "session", "")


class SuiteWatch:
    """Attaches a monitor to every new engine and attributes what pools hold to test phases."""

    def __init__(self, leak_threshold_s: float = 60.0) -> None:
        self._leak_threshold_s = leak_threshold_s
        self._watched: list[_Watched] = []
        self._lock = threading.Lock()
        self._internal = threading.local()  # set while the watch makes engines of its own
        self._probes: dict[str, ServerProbe] = {}
        self._names: dict[str, int] = {}
        self.findings: list[Finding] = []
        # Engines a test or the monitor's plumbing asked to be left alone (never followed again).
        self._unwatched: weakref.WeakSet[Engine] = weakref.WeakSet()
        self._observed_at = 0.0
        self._restore: list[Callable[[], None]] = []

    # ---- engines ---------------------------------------------------------------------------

    def install(self) -> None:
        """Watch every engine `create_engine` makes from now on (through the dialect's
        `engine_created` hook, which SQLAlchemy calls once the engine is complete), and every
        request of a Starlette app."""
        if self._restore:
            return
        from sqlalchemy.engine.default import DefaultDialect

        # The raw attribute, not the bound method: a watch installed over another one (a
        # pytester run in this process) must give that one its classmethod back.
        own = DefaultDialect.__dict__.get("engine_created")
        original = DefaultDialect.engine_created
        watch = self

        def engine_created(cls: type[DefaultDialect], engine: Engine) -> None:
            original(engine)
            watch.watch(engine)

        DefaultDialect.engine_created = classmethod(engine_created)  # type: ignore[method-assign,assignment]

        def restore() -> None:
            if own is not None:
                DefaultDialect.engine_created = own  # type: ignore[method-assign]
            else:
                del DefaultDialect.engine_created

        self._restore.append(restore)
        attachments.add_watcher(self)
        self._install_attribution()

    def _install_attribution(self) -> None:
        """Requests name their route on each checkout: the attribution middleware goes around
        every Starlette or FastAPI app (FastAPI builds its stack without calling Starlette's)."""
        from monitor.instrumentation.attribution import AttributionMiddleware

        for module, name in (("starlette.applications", "Starlette"), ("fastapi", "FastAPI")):
            try:
                app_class = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                continue
            original = app_class.__dict__.get("build_middleware_stack")
            if original is None:
                continue

            def build_middleware_stack(self: Any, _original: Any = original) -> Any:
                stack = _original(self)
                if isinstance(stack, AttributionMiddleware):
                    return stack
                return AttributionMiddleware(stack)

            app_class.build_middleware_stack = build_middleware_stack
            self._restore.append(partial(setattr, app_class, "build_middleware_stack", original))

    def uninstall(self) -> None:
        attachments.remove_watcher(self)
        for restore in reversed(self._restore):
            restore()
        self._restore.clear()
        for probe in self._probes.values():
            probe.close()
        self._probes.clear()

    def watch(self, engine: Engine) -> None:
        """Attach a monitor to `engine` (never raises: a failure leaves the engine unwatched)."""
        if getattr(self._internal, "active", False):
            return
        try:
            tracker, passive = self._attach_passive(engine, self._pool_name(engine))
            watched = _Watched(
                engine=weakref.ref(engine),
                tracker=weakref.ref(tracker),
                pool_name=tracker.pool_name,
                is_postgres=engine.dialect.name == "postgresql",
                passive=passive,
            )
            with self._lock:
                self._watched.append(watched)
        except Exception:
            log.warning("pool-monitor could not watch an engine", exc_info=True)

    def _attach_passive(
        self, engine: Engine, pool_name: str
    ) -> tuple[PoolTracker, tuple[weakref.ref[Any], ...]]:
        self._internal.active = True
        try:
            # The app's "One engine per app" counts the pool once it connects, as without us.
            with uncounted(engine.pool):
                monitor = PoolMonitor(
                    engine,
                    leak_threshold_s=self._leak_threshold_s,
                    probe=False,
                    pool_name=pool_name,
                )
        finally:
            self._internal.active = False
        watched = monitor.pool()
        parts = (watched.pool_listeners, watched.statement_listeners)
        return watched.tracker, tuple(weakref.ref(part) for part in parts)

    # ---- a monitor of the app's own on a watched engine (monitor.instrumentation.attachments)

    def before_attach(self, engine: Engine) -> None:
        """The app attaches its own monitor: take the watch's off the pool first."""
        if getattr(self._internal, "active", False):
            return
        entry = self._entry(engine)
        if entry is not None:
            self._take_passive_off(entry)

    def unwatch(self, engine: Engine | AsyncEngine) -> None:
        """Leave `engine` alone from now on: the monitor's own plumbing (a probe, the readiness
        check), or an engine whose instrumentation a test inspects."""
        engine = sync_engine_of(engine)[0]
        self._unwatched.add(engine)
        entry = self._entry(engine)
        if entry is None:
            return
        self._take_passive_off(entry)
        with self._lock:
            self._watched = [e for e in self._watched if e is not entry]

    def _take_passive_off(self, entry: _Watched) -> None:
        if not entry.passive:
            return
        self._internal.active = True
        try:
            for ref in entry.passive:
                part = ref()
                if part is not None:
                    part.detach()
        finally:
            self._internal.active = False
        entry.passive = ()

    def attached(self, engine: Engine, tracker: PoolTracker) -> None:
        if getattr(self._internal, "active", False) or engine in self._unwatched:
            return
        entry = self._entry(engine)
        if entry is None:  # an engine made before the watch started
            entry = _Watched(
                engine=weakref.ref(engine),
                tracker=weakref.ref(tracker),
                pool_name=tracker.pool_name,
                is_postgres=engine.dialect.name == "postgresql",
            )
            with self._lock:
                self._watched.append(entry)
        entry.follow(tracker)

    def detached(self, engine: Engine, tracker: PoolTracker) -> None:
        """The app's monitor left: the watch's own takes over again."""
        if getattr(self._internal, "active", False):
            return
        entry = self._entry(engine)
        if entry is None or entry.tracker() is not tracker:
            return
        own, entry.passive = self._attach_passive(engine, entry.pool_name)
        entry.follow(own)

    def _entry(self, engine: Engine) -> _Watched | None:
        with self._lock:
            return next((e for e in self._watched if e.engine() is engine), None)

    def _pool_name(self, engine: Engine) -> str:
        database = engine.url.database or engine.dialect.name
        base = database.rsplit("/", 1)[-1] or engine.dialect.name
        with self._lock:
            number = self._names.get(base, 0) + 1
            self._names[base] = number
        return base if number == 1 else f"{base}#{number}"

    def _live(self) -> Iterator[tuple[_Watched, PoolTracker]]:
        with self._lock:
            watched = list(self._watched)
        dead = []
        for entry in watched:
            tracker = entry.tracker()
            if tracker is None or entry.engine() is None:
                dead.append(entry)
                continue
            yield entry, tracker
        if dead:
            with self._lock:
                self._watched = [entry for entry in self._watched if entry not in dead]

    # ---- phases ----------------------------------------------------------------------------

    def phase_ended(self, owner: Owner) -> list[Finding]:
        """Give `owner` every checkout first seen held now, and the events since the last phase
        end (garbage-collected connections, pool timeouts, multi-connection requests)."""
        findings: list[Finding] = []
        for entry, tracker in self._live():
            held = tracker.checked_out_keys()  # at every phase of every test: no snapshot
            for key in list(entry.holds):
                if key not in held:
                    hold = entry.holds.pop(key)
                    if hold.idle_in_transaction_during:
                        entry.retired.append(hold)
            for key in held:
                if key not in entry.holds:
                    entry.holds[key] = _Hold(owner)
            findings.extend(self._new_events(entry, tracker, owner))
        return findings

    def _new_events(self, entry: _Watched, tracker: PoolTracker, owner: Owner) -> list[Finding]:
        counts = tracker.event_counts()
        if counts == entry.seen:  # nearly always: asked at every phase of every test
            return []
        reclaimed, timed_out, several = (
            now - was for now, was in zip(counts, entry.seen, strict=True)
        )
        new = {GC_RECLAIMED: reclaimed, POOL_TIMEOUT: timed_out, MULTI_CONNECTION: several}
        entry.seen = counts
        detail = tracker.snapshot()
        findings: list[Finding] = []
        for reclaim in detail.gc_reclaims[: new[GC_RECLAIMED]]:
            holder = reclaim.holder
            findings.append(
                self._finding(
                    GC_RECLAIMED, owner, entry.pool_name, reclaim.site, reclaim.held_for_s,
                    holder.route if holder and holder.kind == "request" else None,
                    holder.request_id if holder else None,
                )
            )  # fmt: skip
        for timeout in detail.timeouts[: new[POOL_TIMEOUT]]:
            holders = ", ".join(
                f"{view.holder.route if view.holder else '?'} ({_site_text(view.site)})"
                for view in timeout.holders
            )
            findings.append(
                self._finding(
                    POOL_TIMEOUT, owner, entry.pool_name, (), timeout.waited_s, None, None,
                    detail=f"holders at that moment: {holders or 'none'}",
                )
            )  # fmt: skip
        for multi in detail.multi_connection_requests[: new[MULTI_CONNECTION]]:
            findings.append(
                self._finding(
                    MULTI_CONNECTION, owner, entry.pool_name, (), None, multi.route,
                    multi.request_id, detail=f"{multi.connections} connections at once",
                )
            )  # fmt: skip
        return findings

    def test_ended(self, owner: Owner) -> list[Finding]:
        """End of a test's call: what it left held (after one garbage collection), what the
        collector took back, and which connections of longer-lived owners (session or module
        fixtures) sit idle in a transaction."""
        findings = self.phase_ended(owner)
        # A session dropped without close() is reclaimed now, not later. The young generations
        # first: a full collection of a big test process costs 100 ms or more.
        for generation in (1, 2):
            if not self._owned(owner):
                break
            gc.collect(generation)
            findings += self.phase_ended(owner)
        now = time.monotonic()
        for entry, tracker in self._live():
            mine = [k for k, h in entry.holds.items() if h.owner == owner and not h.reported]
            # A function fixture's hold ends with its test: only longer-lived ones are looked
            # at on the server, each at least once, then at most every OBSERVE_EVERY_S.
            lasting = [
                key
                for key, hold in entry.holds.items()
                if hold.owner.scope != "function"
                and (not hold.observed or now - self._observed_at >= OBSERVE_EVERY_S)
            ]
            if not mine and not lasting:
                continue
            states = self._server_states()
            self._observed_at = now
            views = {(v.slot_id, v.checkouts): v for v in tracker.snapshot().connections}
            for key in lasting:
                hold, view = entry.holds[key], views.get(key)
                hold.observed = True
                state = states.get(view.pid) if view is not None and view.pid is not None else None
                if view is not None and state and state.startswith("idle in transaction"):
                    hold.idle_in_transaction_during.append(owner.name)
                    hold.site = view.site
                    hold.held_for_s = view.held_for_s
            for key in mine:
                hold, view = entry.holds[key], views.get(key)
                if view is None:
                    continue
                state = states.get(view.pid) if view.pid is not None else None
                findings.append(self._held(HELD_AFTER_TEST, entry, view, owner, state))
                hold.reported = True
        return findings

    def fixture_finished(self, owner: Owner) -> list[Finding]:
        """After a fixture's teardown: what it still holds, and what it held idle in a
        transaction while tests ran."""
        findings = self.phase_ended(owner)
        states: dict[int, str | None] | None = None
        for entry, tracker in self._live():
            mine = {key: hold for key, hold in entry.holds.items() if hold.owner == owner}
            if not mine:
                continue
            if states is None:
                states = self._server_states()
            views = {(v.slot_id, v.checkouts): v for v in tracker.snapshot().connections}
            for key, hold in mine.items():
                view = views.get(key)
                if view is None:
                    continue
                state = states.get(view.pid) if view.pid is not None else None
                findings.append(self._held(HELD_AFTER_FIXTURE, entry, view, owner, state))
                hold.idle_in_transaction_during = []  # said by this finding's class already
        findings += self._idle_in_transaction_of(owner)
        for entry, _ in self._live():  # reported once, not again at the session's end
            for hold in entry.holds.values():
                if hold.owner == owner:
                    hold.reported = True
        return findings

    def _idle_in_transaction_of(self, owner: Owner) -> list[Finding]:
        """Connections `owner` took that sat idle in a transaction while tests ran; noted on
        the hold as it is seen, reported once the owner is done (released or not)."""
        findings = []
        for entry, _ in self._live():
            for hold in [*entry.retired, *entry.holds.values()]:
                if hold.owner != owner or not hold.idle_in_transaction_during:
                    continue
                tests = hold.idle_in_transaction_during
                findings.append(
                    self._finding(
                        IDLE_IN_TRANSACTION, owner, entry.pool_name, hold.site, hold.held_for_s,
                        None, None, leak_class="idle_in_transaction",
                        detail=f"idle in transaction during {len(tests)} test(s): "
                        + ", ".join(tests[:3]) + (" ..." if len(tests) > 3 else ""),
                    )
                )  # fmt: skip
                hold.idle_in_transaction_during = []
            entry.retired = [hold for hold in entry.retired if hold.owner != owner]
        return findings

    def session_finished(self) -> list[Finding]:
        """What is still held when the run ends and no fixture or test owns it."""
        findings = self.phase_ended(SESSION_OWNER)
        findings += self._idle_in_transaction_of(SESSION_OWNER)
        for entry, tracker in self._live():
            views = {(v.slot_id, v.checkouts): v for v in tracker.snapshot().connections}
            for key, hold in entry.holds.items():
                view = views.get(key)
                if view is not None and not hold.reported:
                    findings.append(self._held(HELD_AFTER_SESSION, entry, view, hold.owner, None))
        return findings

    def snapshots(self) -> list[PoolSnapshot]:
        """Every watched pool as the dashboard would show it (for the `pool_monitor` fixture)."""
        return [tracker.snapshot() for _, tracker in self._live()]

    # ---- helpers ---------------------------------------------------------------------------

    def _owned(self, owner: Owner) -> bool:
        return any(
            hold.owner == owner for entry, _ in self._live() for hold in entry.holds.values()
        )

    def _held(
        self, kind: str, entry: _Watched, view: ConnectionView, owner: Owner, state: str | None
    ) -> Finding:
        holder = view.holder
        return self._finding(
            kind, owner, entry.pool_name, view.site, view.held_for_s,
            holder.route if holder and holder.kind == "request" else None,
            holder.request_id if holder else None,
            leak_class=classify(state).value if state else None,
        )  # fmt: skip

    def _finding(
        self,
        kind: str,
        owner: Owner,
        pool_name: str,
        site: tuple[Frame, ...],
        held_for_s: float | None,
        route: str | None,
        request_id: str | None,
        *,
        leak_class: str | None = None,
        detail: str = "",
    ) -> Finding:
        owner_file = owner.location.rsplit(":", 1)[0]
        test_line = next(
            (f"{frame.filename}:{frame.lineno}" for frame in site if frame.filename == owner_file),
            owner.location or None,
        )
        return Finding(
            kind=kind,
            owner=owner,
            pool_name=pool_name,
            leak_class=leak_class,
            held_for_s=held_for_s,
            site=tuple(str(frame) for frame in site),
            test_line=test_line,
            route=route,
            request_id=request_id,
            detail=detail,
        )

    def _server_states(self) -> dict[int, str | None]:
        """pid -> pg_stat_activity.state for the PostgreSQL pools that hold something now;
        one query per database, only when something is held."""
        states: dict[int, str | None] = {}
        live: set[str] = set()
        probed: set[str] = set()
        for entry, _ in self._live():
            engine = entry.engine()
            if not entry.is_postgres or engine is None:
                continue
            key = _probe_key(engine)
            live.add(key)
            if not entry.holds or key in probed:
                continue
            probed.add(key)
            probe = self._probe(key, engine)
            if probe is None:
                continue
            probe.run_once()
            sample = probe.health.snapshot().last_sample
            if sample is not None:
                states.update((backend.pid, backend.state) for backend in sample.backends)
        # A probe keeps a connection open: once no live engine has its URL (a test's engine on
        # a schema of its own), it goes, or a long suite would hold one per test.
        for key in [key for key in self._probes if key not in live]:
            self._probes.pop(key).close()
        return states

    def _probe(self, key: str, engine: Engine) -> ServerProbe | None:
        probe = self._probes.get(key)
        if probe is None:
            from monitor.probes.runner import ServerProbe
            from monitor.state.server import ServerHealth

            self._internal.active = True
            try:
                probe = ServerProbe(
                    engine.url, ServerHealth(), application_name=PROBE_APPLICATION_NAME
                )
            except Exception:
                log.warning("pool-monitor could not probe %s", engine.url, exc_info=True)
                return None
            finally:
                self._internal.active = False
            # Not an engine of the app's: its "One engine per app" verdict must not count it.
            attachments.plumbing(probe.engine)
            self._probes[key] = probe
        return probe


def _probe_key(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _site_text(site: tuple[Frame, ...]) -> str:
    return str(site[0]) if site else "unknown site"
