"""Load generator for the demo app: a realistic CRUD mix over HTTP, a progress line, a summary.

`run_load` drives a fixed duration with a number of worker threads; `start_background_load`
keeps a gentle trickle going so the dashboard has something to show.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)

MAX_DURATION_S = 24 * 3600.0
MAX_CONCURRENCY = 512
MAX_BACKGROUND_RATE = 50.0
# Latencies kept per operation for percentiles; past this a uniform sample is kept (memory bound).
_RESERVOIR = 100_000
# Known row ids kept per table; past this new ids replace random old ones.
_MAX_IDS = 10_000
_PROGRESS_EVERY_S = 0.25
_RATE_WINDOW_S = 2.0  # the progress line's rate: requests answered over the last 2 s
# Longer than the app's pool timeout (10 s by default): under exhaustion the app answers 503
# after that wait, and the load must see that answer rather than give up first.
DEFAULT_REQUEST_TIMEOUT_S = 30.0
MAX_REQUEST_TIMEOUT_S = 600.0
# What an app with an exhausted pool answers: the app's answer, not a failure of the load.
UNAVAILABLE = 503
_USER_AGENT = "pool-monitor-load/0.1"
_BACKGROUND = "bg-"  # run id prefix of the background trickle's rows

# ~70% reads, ~20% creates, ~10% updates and deletes.
LOAD_MIX: Mapping[str, int] = {
    "list_products": 20,
    "get_product": 20,
    "list_users": 15,
    "get_user": 15,
    "create_product": 10,
    "create_user": 10,
    "update_product": 3,
    "update_user": 3,
    "delete_product": 2,
    "delete_user": 2,
}
# The background trickle deletes what it creates, so an open dashboard does not grow the tables.
BACKGROUND_MIX: Mapping[str, int] = {
    "list_products": 25,
    "get_product": 20,
    "list_users": 20,
    "get_user": 15,
    "create_product": 5,
    "create_user": 5,
    "delete_product": 5,
    "delete_user": 5,
}
_EXPECTED = {"list": 200, "get": 200, "create": 201, "update": 200, "delete": 204}


class LoadTargetUnreachable(RuntimeError):
    """The app did not answer at all before the load started."""


@dataclass(frozen=True, slots=True)
class OperationSummary:
    name: str
    requests: int
    errors: int  # failed unexpectedly: no answer, or an answer other than the expected or 503
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True, slots=True)
class LoadSummary:
    """What a run did; latencies in milliseconds, measured client-side."""

    base_url: str
    duration_s: float  # measured: from the start to the last answer (or the interrupt)
    concurrency: int
    requests: int
    errors: int  # failed unexpectedly (timeouts, refused connections, 500s, ...)
    p50_ms: float
    p95_ms: float
    p99_ms: float
    operations: tuple[OperationSummary, ...]
    error_kinds: tuple[tuple[str, int], ...]  # ("create_user: HTTP 409", 3), most frequent first
    interrupted: bool = False
    unavailable: int = 0  # answered 503: the pool had no connection within its timeout
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S

    @property
    def answered_ok(self) -> int:
        return self.requests - self.errors - self.unavailable

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


# ---- recording -------------------------------------------------------------------------------


class _Samples:
    """Count plus a bounded uniform sample of latencies (reservoir sampling)."""

    __slots__ = ("errors", "requests", "unavailable", "values")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.unavailable = 0
        self.values: list[float] = []

    def add(self, latency_s: float, error: str | None, rng: random.Random) -> None:
        self.requests += 1
        if error is not None:
            if error.endswith(f"HTTP {UNAVAILABLE}"):
                self.unavailable += 1
            else:
                self.errors += 1
        if len(self.values) < _RESERVOIR:
            self.values.append(latency_s)
        else:
            slot = rng.randrange(self.requests)
            if slot < _RESERVOIR:
                self.values[slot] = latency_s


class _Recorder:
    def __init__(self, seed: int | None) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._total = _Samples()
        self._ops: dict[str, _Samples] = {}
        self._error_kinds: Counter[str] = Counter()

    def record(self, operation: str, latency_s: float, error: str | None) -> None:
        with self._lock:
            self._total.add(latency_s, error, self._rng)
            self._ops.setdefault(operation, _Samples()).add(latency_s, error, self._rng)
            if error is not None:
                self._error_kinds[error] += 1

    def totals(self) -> tuple[int, int, int]:
        """(requests, unexpected failures, 503 answers) so far."""
        with self._lock:
            return self._total.requests, self._total.errors, self._total.unavailable

    def summary(
        self,
        base_url: str,
        duration_s: float,
        concurrency: int,
        interrupted: bool,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> LoadSummary:
        with self._lock:
            operations = tuple(
                OperationSummary(name, s.requests, s.errors, *_percentiles_ms(s.values))
                for name, s in sorted(self._ops.items())
            )
            p50, p95, p99 = _percentiles_ms(self._total.values)
            return LoadSummary(
                base_url=base_url,
                duration_s=duration_s,
                concurrency=concurrency,
                requests=self._total.requests,
                errors=self._total.errors,
                p50_ms=p50,
                p95_ms=p95,
                p99_ms=p99,
                operations=operations,
                error_kinds=tuple(self._error_kinds.most_common()),
                interrupted=interrupted,
                unavailable=self._total.unavailable,
                request_timeout_s=request_timeout_s,
            )


def _percentiles_ms(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return 0.0, 0.0, 0.0
    ordered = sorted(values)
    p50, p95, p99 = (nearest_rank(ordered, fraction) * 1000 for fraction in (0.50, 0.95, 0.99))
    return p50, p95, p99


def nearest_rank(ordered: Sequence[float], fraction: float) -> float:
    """The `fraction` percentile (0.99 for the p99) of sorted values: the smallest value with at
    least that share of the values at or below it, a value that was measured."""
    if not ordered:
        raise ValueError("no values")
    # The 1e-9: 0.07 x 100 is 7.000000000000001 in floats, which must not round up to rank 8.
    return ordered[max(1, min(len(ordered), math.ceil(fraction * len(ordered) - 1e-9))) - 1]


# ---- traffic ---------------------------------------------------------------------------------


class _Ids:
    """Row ids the readers and updaters may use; shared by the workers, never deleted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, list[int]] = {"products": [], "users": []}

    def add(self, table: str, row_id: int, rng: random.Random) -> None:
        with self._lock:
            ids = self._ids[table]
            if len(ids) < _MAX_IDS:
                ids.append(row_id)
            else:
                ids[rng.randrange(len(ids))] = row_id

    def pick(self, table: str, rng: random.Random) -> int | None:
        with self._lock:
            ids = self._ids[table]
            return ids[rng.randrange(len(ids))] if ids else None

    def discover(self, client: httpx.Client, rng: random.Random) -> None:
        """Existing rows become read targets; a failure here just means starting empty."""
        for table in ("products", "users"):
            try:
                response = client.get(f"/{table}", params={"limit": 100})
                if response.status_code == 200:
                    for item in response.json().get("items", []):
                        if not _is_background_row(item):
                            self.add(table, int(item["id"]), rng)
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                continue


def _is_background_row(item: Mapping[str, Any]) -> bool:
    """Rows of the background trickle are deleted soon: reading them would race into 404s."""
    name, email = str(item.get("name") or ""), str(item.get("email") or "")
    return name.startswith(f"load {_BACKGROUND}") or email.startswith(f"load-{_BACKGROUND}")


class _Traffic:
    """Sends one CRUD request at a time, following a weighted mix.

    Rows this worker may delete are private to it, so no other worker reads a deleted id (no 404s).
    """

    def __init__(
        self,
        ids: _Ids,
        rng: random.Random,
        mix: Mapping[str, int],
        *,
        run_id: str,
        share_ratio: float,
    ) -> None:
        self._ids = ids
        self._rng = rng
        self._names = list(mix)
        self._weights = list(mix.values())
        self._run_id = run_id
        self._share_ratio = share_ratio
        self._own: dict[str, list[int]] = {"products": [], "users": []}
        self._serial = 0

    def step(self, client: httpx.Client) -> tuple[str, float, str | None]:
        """One request: (operation, latency in seconds, error kind or None)."""
        operation = self._rng.choices(self._names, self._weights)[0]
        verb, _, noun = operation.partition("_")
        table = noun if noun.endswith("s") else f"{noun}s"
        method, path, body, operation = self._request(verb, table, operation)
        started = time.perf_counter()
        try:
            response = client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            return operation, time.perf_counter() - started, f"{operation}: {type(exc).__name__}"
        latency = time.perf_counter() - started
        verb = operation.partition("_")[0]
        if response.status_code != _EXPECTED[verb]:
            return operation, latency, f"{operation}: HTTP {response.status_code}"
        if verb == "create":
            self._remember(table, response)
        return operation, latency, None

    def _request(
        self, verb: str, table: str, operation: str
    ) -> tuple[str, str, dict[str, Any] | None, str]:
        """(method, path, JSON body, the operation actually sent) for the chosen operation."""
        rng = self._rng
        if verb == "delete":
            own = self._own[table]
            if own:
                return "DELETE", f"/{table}/{own.pop()}", None, operation
            verb = "get"  # nothing of ours to delete yet
        if verb in ("get", "update"):
            row_id = self._ids.pick(table, rng)
            if row_id is None:
                return "GET", f"/{table}", None, f"list_{table}"
            if verb == "get":
                return "GET", f"/{table}/{row_id}", None, f"get_{table[:-1]}"
            return "PATCH", f"/{table}/{row_id}", self._update_body(table), operation
        if verb == "create":
            return "POST", f"/{table}", self._create_body(table), operation
        return "GET", f"/{table}", None, operation

    def _create_body(self, table: str) -> dict[str, Any]:
        self._serial += 1
        if table == "products":
            return {
                "name": f"load {self._run_id}-{self._serial}",
                "price": f"{self._rng.uniform(1, 500):.2f}",
                "description": "created by pool-monitor load",
            }
        # Unique across runs and workers: the run id is random, the serial is per worker.
        return {"email": f"load-{self._run_id}-{self._serial}@example.com", "name": "Load User"}

    def _update_body(self, table: str) -> dict[str, Any]:
        if table == "products":
            return {"price": f"{self._rng.uniform(1, 500):.2f}"}
        return {"name": f"Load User {self._rng.randrange(1000)}"}

    def _remember(self, table: str, response: httpx.Response) -> None:
        try:
            row_id = int(response.json()["id"])
        except (ValueError, KeyError, TypeError):
            return
        own = self._own[table]
        if self._rng.random() < self._share_ratio or len(own) >= 1000:
            self._ids.add(table, row_id, self._rng)
        else:
            own.append(row_id)


def _client(base_url: str, timeout_s: float) -> httpx.Client:
    return httpx.Client(
        base_url=base_url,
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0)),
        headers={"User-Agent": _USER_AGENT},
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


def _rng(seed: int | None, worker: int) -> random.Random:
    return random.Random(None if seed is None else f"{seed}-{worker}")


# ---- the fixed-duration run ------------------------------------------------------------------


def run_load(
    base_url: str,
    duration_s: float,
    concurrency: int,
    *,
    seed: int | None = None,
    progress: bool = True,
    request_timeout_s: float | None = None,
) -> LoadSummary:
    """Send the CRUD mix from `concurrency` threads for `duration_s`; raises LoadTargetUnreachable
    when the app does not answer at all first. Ctrl-C ends the run early with a summary.

    `request_timeout_s`: by default 30 s, or longer than the app's pool timeout when its
    snapshot says so, so that an exhausted pool's 503 arrives before the client gives up."""
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration must be in (0, {MAX_DURATION_S:g}] seconds, got {duration_s}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY}, got {concurrency}")
    if request_timeout_s is not None and not 0 < request_timeout_s <= MAX_REQUEST_TIMEOUT_S:
        raise ValueError(
            f"request timeout must be in (0, {MAX_REQUEST_TIMEOUT_S:g}] seconds, "
            f"got {request_timeout_s}"
        )
    base = _base_url(base_url)
    ids = _Ids()
    pool_timeout_s = _preflight(base, ids, seed)
    if request_timeout_s is None:
        request_timeout_s = DEFAULT_REQUEST_TIMEOUT_S
        if pool_timeout_s is not None:
            request_timeout_s = min(
                MAX_REQUEST_TIMEOUT_S, max(request_timeout_s, pool_timeout_s + 5)
            )

    recorder = _Recorder(seed)
    stop = threading.Event()
    run_id = uuid.uuid4().hex[:10]
    started = time.monotonic()
    deadline = started + duration_s

    def work(worker: int) -> None:
        rng = _rng(seed, worker)
        traffic = _Traffic(ids, rng, LOAD_MIX, run_id=f"{run_id}-{worker}", share_ratio=0.5)
        with _client(base, request_timeout_s) as client:
            # Bounded by the deadline; each request by its timeout.
            while not stop.is_set() and time.monotonic() < deadline:
                recorder.record(*traffic.step(client))

    threads = [
        threading.Thread(target=work, args=(index,), name=f"load-{index}", daemon=True)
        for index in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    interrupted = False
    # Workers finish at the deadline plus at most one request timeout.
    give_up = deadline + request_timeout_s + 1.0
    recent: deque[tuple[float, int]] = deque()  # (time, requests answered) for the current rate
    try:
        while any(t.is_alive() for t in threads) and time.monotonic() < give_up:
            time.sleep(_PROGRESS_EVERY_S)
            if progress:
                _show_progress(recorder, started, duration_s, final=False, recent=recent)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        for thread in threads:
            thread.join(timeout=request_timeout_s)
    stop.set()
    elapsed = time.monotonic() - started
    if progress:
        _show_progress(recorder, started, duration_s, final=True, recent=recent)
    return recorder.summary(base, elapsed, concurrency, interrupted, request_timeout_s)


def _base_url(url: str) -> str:
    """The URL without a trailing slash; ValueError unless it is a plain http(s) URL."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"invalid URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"invalid URL {url!r}: expected http://host:port")
    return url.rstrip("/")


def _preflight(base: str, ids: _Ids, seed: int | None) -> float | None:
    """Check the app answers and learn its rows; returns its pool timeout when it says."""
    try:
        with _client(base, 3.0) as client:
            client.get("/healthz")
            ids.discover(client, _rng(seed, -1))
            return _pool_timeout(client)
    except httpx.HTTPError as exc:
        raise LoadTargetUnreachable(
            f"cannot reach {base} ({type(exc).__name__}: {exc}); is the app running?"
        ) from exc


def _pool_timeout(client: httpx.Client) -> float | None:
    """The app's pool timeout from the monitor's snapshot (None when it has no monitor, asks
    for a token, or says nothing)."""
    try:
        response = client.get("/monitor/api/snapshot")
        if response.status_code != 200:
            return None
        value = response.json()["pool_stats"]["timeout_s"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _show_progress(
    recorder: _Recorder,
    started: float,
    duration_s: float,
    *,
    final: bool,
    recent: deque[tuple[float, int]] | None = None,
) -> None:
    """One line: progress, counts, and the rate now (over the last 2 s; the whole run at the
    end), so a stall under exhaustion shows at once instead of fading into an average."""
    requests, errors, unavailable = recorder.totals()
    now = time.monotonic()
    elapsed = now - started
    done = min(1.0, elapsed / duration_s)
    bar = "#" * round(done * 20)
    if final or recent is None:
        rate = requests / elapsed if elapsed > 0 else 0.0
        rate_text = f"{rate:.0f} req/s overall"
    else:
        recent.append((now, requests))
        while len(recent) > 1 and recent[0][0] < now - _RATE_WINDOW_S:
            recent.popleft()
        then, before = recent[0]
        rate = (requests - before) / (now - then) if now > then else 0.0
        rate_text = f"{rate:.0f} req/s now"
    line = (
        f"[{bar:<20}] {min(elapsed, duration_s):5.1f}/{duration_s:g} s  "
        f"{requests} requests  {unavailable} answered 503  {errors} failed  {rate_text}"
    )
    # One line rewritten in place; the padding wipes a longer previous line.
    sys.stderr.write(f"\r{line:<96}" + ("\n" if final else ""))
    sys.stderr.flush()


def format_summary(summary: LoadSummary) -> str:
    """The summary as an aligned text table (one row per operation, then the total)."""
    header = ("operation", "requests", "failed", "p50 ms", "p95 ms", "p99 ms")
    rows = [
        (op.name, str(op.requests), str(op.errors), *_ms(op.p50_ms, op.p95_ms, op.p99_ms))
        for op in summary.operations
    ]
    total = (
        "total",
        str(summary.requests),
        str(summary.errors),
        *_ms(summary.p50_ms, summary.p95_ms, summary.p99_ms),
    )
    widths = [max(len(row[i]) for row in [header, *rows, total]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = "  ".join(
            cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)
        )
        return f"{first}  {rest}"

    note = " (interrupted)" if summary.interrupted else ""
    out = [
        f"load on {summary.base_url}: {summary.duration_s:.1f} s, "
        f"concurrency {summary.concurrency}, request timeout {summary.request_timeout_s:g} s{note}",
        f"{summary.requests} requests, {summary.rate:.1f} req/s: {summary.answered_ok} answered as "
        f"expected, {summary.unavailable} answered 503 (no pool connection in time), "
        f"{summary.errors} failed unexpectedly",
        "",
        line(header),
        *(line(row) for row in rows),
        line(total),
    ]
    if summary.error_kinds:
        width = max(len(kind) for kind, _ in summary.error_kinds)
        out += ["", "not answered as expected:"]
        out += [f"  {kind.ljust(width)}  {count}" for kind, count in summary.error_kinds]
    return "\n".join(out)


def _ms(*values: float) -> tuple[str, ...]:
    return tuple(f"{value:.1f}" for value in values)


# ---- the background trickle ------------------------------------------------------------------


def start_background_load(
    base_url: str,
    *,
    rate_per_s: float = 3.0,
    seed: int | None = None,
    request_timeout_s: float = 2.0,
) -> Callable[[], None]:
    """A gentle CRUD trickle (one request every 1/rate s) in a daemon thread; returns `stop()`."""
    if not 0 < rate_per_s <= MAX_BACKGROUND_RATE:
        raise ValueError(f"rate must be in (0, {MAX_BACKGROUND_RATE:g}] per second")
    base = _base_url(base_url)
    stop = threading.Event()
    interval = 1.0 / rate_per_s

    def trickle() -> None:
        rng = _rng(seed, 0)
        ids = _Ids()
        traffic = _Traffic(
            ids,
            rng,
            BACKGROUND_MIX,
            run_id=f"{_BACKGROUND}{uuid.uuid4().hex[:10]}",
            share_ratio=0.0,
        )
        with _client(base, request_timeout_s) as client:
            ids.discover(client, rng)
            # Bounded by stop(): every wait returns at the next tick at the latest.
            while not stop.wait(interval):
                try:
                    operation, _, error = traffic.step(client)
                except Exception as exc:  # the trickle must never die on a surprise
                    operation, error = "request", type(exc).__name__
                if error is not None:
                    # The demo makes errors on purpose (an exhausted pool answers 503).
                    log.debug("background load: %s failed (%s)", operation, error)

    thread = threading.Thread(target=trickle, name="demo-background-load", daemon=True)
    thread.start()

    def stop_load() -> None:
        stop.set()
        thread.join(timeout=request_timeout_s + 1.0)

    return stop_load
