"""The served demo app in a benchmark: start it, load it (wrk, a fixed rate, a request driver),
count its CPU or instructions, stop it; and the soak, which watches one for minutes.

The fixed-rate load is open loop: request i is due at start + i / rate and its latency counts
from that due time, not from when a connection was free to send it, so a slow answer delays the
count of every request queued behind it (no coordinated omission). A closed loop at saturation
(wrk) measures queueing instead: with c connections its latency is about c / throughput.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bench.interval import Verdict
from monitor.demo.load import nearest_rank
from monitor.selftest import DEMO_HEADERS

ROOT = Path(__file__).resolve().parents[1]
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Pinning the apps to one core and the load to the other keeps them from trading places, which
# otherwise swings throughput by 10% between identical runs on a 2-core machine.
PIN = (
    os.environ.get("BENCH_PIN", "1") == "1"
    and shutil.which("taskset") is not None
    and (os.cpu_count() or 1) >= 2
)
APP_CORE, LOAD_CORE = "1", "0"
WRK_CONNECTIONS = 4

READ, WRITE = "read  GET /products/{id}", "write POST /products"
WRITE_BODY = {"name": "bench", "price": 1.5}
# The request each case sends: method and body.
CASE_REQUESTS: dict[str, tuple[str, bytes | None]] = {
    READ: ("GET", None),
    WRITE: ("POST", json.dumps(WRITE_BODY).encode()),
}
WRITE_LUA = f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{json.dumps(WRITE_BODY)}'
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_app(
    enabled: bool,
    port: int,
    hash_seed: int = 0,
    *,
    launcher: Sequence[str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    ready_within_s: float = 30.0,
) -> subprocess.Popen[bytes]:
    """Serve the demo app on `port` and wait until it is ready.

    `launcher` runs the interpreter (default: pinned to the apps' core when pinning is on)."""
    env = {
        **os.environ,
        "DATABASE_URL": DATABASE_URL,
        "MONITOR_ENABLED": "true" if enabled else "false",
        "MONITOR_POOL_SIZE": "10",
        "MONITOR_LEAK_THRESHOLD_S": "30",
        # The same dict layouts in the apps compared with each other.
        "PYTHONHASHSEED": str(hash_seed),
        **(extra_env or {}),
    }
    if launcher is None:
        launcher = ["taskset", "-c", APP_CORE] if PIN else []
    process = subprocess.Popen(
        [*launcher, sys.executable, "-m", "uvicorn", "--factory", "monitor.app:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + ready_within_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"app on port {port} did not become ready")


def stop_app(process: subprocess.Popen[bytes], within_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `within_s` (it waits for requests in
    flight, which an overload can leave waiting for the pool)."""
    process.terminate()
    try:
        process.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=within_s)


@contextmanager
def served(enabled: bool, **options: object) -> Iterator[tuple[str, int]]:
    """One demo app for the block: (base URL, pid)."""
    port = free_port()
    app = start_app(enabled, port, **options)  # type: ignore[arg-type]
    try:
        yield f"http://127.0.0.1:{port}", app.pid
    finally:
        stop_app(app)


def crud_cases(base_url: str, timeout_s: float = 5.0) -> dict[str, str]:
    """The two cases measured, case -> path: a read of a product made here for it, and a write."""
    product = httpx.post(
        f"{base_url}/products", json={"name": "read-me", "price": 1}, timeout=timeout_s
    ).json()
    return {READ: f"/products/{product['id']}", WRITE: "/products"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Result = tuple[float, float, float]  # requests/s, p99 ms, app CPU ms per request
# p50 ms, p99 ms, app CPU ms per request, how far the load fell behind its schedule (ms), failures
Latency = tuple[float, float, float, float, float]


@contextmanager
def write_script() -> Iterator[Path]:
    """wrk's Lua script for the write case, for the block."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(WRITE_LUA)
    try:
        yield Path(lua.name)
    finally:
        os.unlink(lua.name)


def wrk_command(url: str, case: str, script: Path, seconds: float) -> list[str]:
    return [
        *(["taskset", "-c", LOAD_CORE] if PIN else []),
        "wrk",
        *(["-s", str(script)] if case == WRITE else []),
        "-t1",
        f"-c{WRK_CONNECTIONS}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        url,
    ]


def wrk_result(output: str, app_cpu_s: float) -> Result:
    """Requests per second, p99 latency in ms and the app's CPU ms per request of one wrk run."""
    if "Non-2xx" in output or "Requests/sec" not in output:
        raise SystemExit(f"wrk saw errors:\n{output}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    p99_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    requests = float(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    return rps, p99_ms, app_cpu_s * 1000 / max(requests, 1.0)


def wrk(url: str, case: str, script: Path, pid: int, seconds: float) -> Result:
    """One wrk run against one app (the others idle)."""
    cpu_before = cpu_seconds(pid)
    command = wrk_command(url, case, script, seconds)
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30).stdout
    return wrk_result(output, cpu_seconds(pid) - cpu_before)


def wrk_together(
    urls: Mapping[str, str], case: str, script: Path, pids: Mapping[str, int], seconds: float
) -> dict[str, Result]:
    """One wrk run per app, all at once: the apps share their core for the same seconds, so
    whatever the machine does meanwhile hits them alike."""
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    runs = {
        name: subprocess.Popen(
            wrk_command(url, case, script, seconds), stdout=subprocess.PIPE, text=True
        )
        for name, url in urls.items()
    }
    outputs = {name: run.communicate(timeout=seconds + 30)[0] for name, run in runs.items()}
    return {
        name: wrk_result(outputs[name], cpu_seconds(pids[name]) - cpu_before[name]) for name in urls
    }


def send_requests(base: str, case: str, path: str, count: int, clients: int = 4) -> None:
    """`count` requests of `case` to `path` from `clients` keep-alive clients; all must be 2xx."""
    remaining = iter(range(count))
    lock = threading.Lock()
    failures: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            while True:
                with lock:
                    if next(remaining, None) is None:
                        return
                response = http.post(path, json=WRITE_BODY) if case == WRITE else http.get(path)
                if response.is_error:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                    return

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{case}: the app answered {failures[0]}")


def callgrind_summary(out: Path) -> int:
    """The total instruction count callgrind wrote to `out`."""
    match = re.search(r"^summary: (\d+)$", out.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError("callgrind wrote no summary line")
    return int(match.group(1))


def served_instructions(enabled: bool, case: str, count: int, workdir: Path) -> int:
    """Instructions the whole app process ran from start to exit under callgrind, answering
    `count` requests. The probe is slowed to once an hour: valgrind stretches wall time 50-fold."""
    handle, name = tempfile.mkstemp(prefix=f"callgrind.{count}.", suffix=".out", dir=workdir)
    os.close(handle)  # callgrind writes it when the app exits
    out = Path(name)
    port = free_port()
    app = start_app(
        enabled,
        port,
        hash_seed=1,
        launcher=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"],
        extra_env={"MONITOR_PROBE_INTERVAL_S": "3600"},
        ready_within_s=300,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        send_requests(base, case, crud_cases(base, timeout_s=120)[case], count)
    finally:
        app.terminate()
        app.wait(timeout=300)
    return callgrind_summary(out)


REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class FixedRateResult:
    """Latencies in seconds, in the order the requests were due (a failed request counts until
    it failed); `errors`: what went wrong how often, most frequent first (("HTTP 503", 4), ...)."""

    latencies_s: tuple[float, ...]
    errors: tuple[tuple[str, int], ...]
    connections: int  # most connections open at once
    late_s: float  # how far behind its schedule the sender fell at worst (then it catches up)

    @property
    def failed(self) -> int:
        return sum(count for _, count in self.errors)

    def percentile_ms(self, fraction: float) -> float:
        """Nearest rank: a latency that was measured (0.99 for the p99)."""
        return nearest_rank(sorted(self.latencies_s), fraction) * 1000


class _Connections:
    """Idle keep-alive connections; new ones up to a bound, then callers wait for a free one."""

    def __init__(self, host: str, port: int, max_connections: int) -> None:
        self._host = host
        self._port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._free = asyncio.Semaphore(max_connections)
        self.open = 0
        self.most_open = 0

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        await self._free.acquire()
        if self._idle:
            return self._idle.pop()
        try:
            connection = await asyncio.open_connection(self._host, self._port)
        except BaseException:
            self._free.release()
            raise
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        return connection

    def give_back(
        self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], reusable: bool
    ) -> None:
        if reusable:
            self._idle.append(connection)
        else:
            connection[1].close()
            self.open -= 1
        self._free.release()

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


def _request_bytes(method: str, url: str, body: bytes | None) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http:// URLs: {url!r}")
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: keep-alive"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return parts.hostname, parts.port or 80, head + (body or b"")


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bool]:
    """Send one request, read its whole answer: (status, whether the connection stays open)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers:
        raise ValueError("an answer without Content-Length")  # the demo app always sends one
    await reader.readexactly(int(headers["content-length"]))
    return status, headers.get("connection", "").lower() != "close"


async def fixed_rate(
    url: str,
    rate: float,
    seconds: float,
    *,
    method: str = "GET",
    body: bytes | None = None,
    max_connections: int = 64,
) -> FixedRateResult:
    """`rate` requests per second to `url` for `seconds`; returns when the last one is answered."""
    if rate <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    host, port, request = _request_bytes(method, url, body)
    connections = _Connections(host, port, max_connections)
    count = max(1, round(rate * seconds))
    latencies: list[float] = [0.0] * count
    errors: Counter[str] = Counter()

    async def one(index: int, due: float) -> None:
        connection = None
        reusable = False
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                connection = await connections.take()
                status, reusable = await _exchange(*connection, request)
            if not 200 <= status < 300:
                errors[f"HTTP {status}"] += 1
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError) as error:
            errors[type(error).__name__] += 1
            reusable = False
        finally:
            latencies[index] = time.perf_counter() - due
            if connection is not None:
                connections.give_back(connection, reusable)

    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()

    def launch(index: int, due: float) -> None:
        tasks.append(loop.create_task(one(index, due)))

    def send_on_schedule() -> float:
        """In a thread: `time.sleep` wakes within tens of microseconds, the event loop's timers
        only within a millisecond (epoll). Returns how far behind schedule it fell at worst."""
        late_s = 0.0
        start = time.perf_counter() + 0.01
        for index in range(count):
            due = start + index / rate
            wait_s = due - time.perf_counter()
            if wait_s > 0:
                time.sleep(wait_s)
            else:
                late_s = max(late_s, -wait_s)
            loop.call_soon_threadsafe(launch, index, due)
        return late_s

    try:
        # The thread's result is delivered after every `launch` it scheduled: all tasks exist.
        late_s = await asyncio.to_thread(send_on_schedule)
        await asyncio.gather(*tasks)
    finally:
        connections.close()
    return FixedRateResult(
        tuple(latencies), tuple(errors.most_common()), connections.most_open, late_s
    )


def at_fixed_rate(url: str, case: str, rate: float, pid: int, seconds: float) -> Latency:
    """One fixed-rate run against one app (the others idle). A failed request counts as its time
    to failure and is reported (a VM pause can make the load catch up in a burst that times out)."""
    method, body = CASE_REQUESTS[case]
    cpu_before = cpu_seconds(pid)
    result = asyncio.run(fixed_rate(url, rate, seconds, method=method, body=body))
    app_cpu_s = cpu_seconds(pid) - cpu_before
    if result.failed:
        kinds = ", ".join(f"{kind} x{count}" for kind, count in result.errors)
        print(
            f"  {url}: {result.failed} of {len(result.latencies_s)} requests failed ({kinds}); "
            f"the load fell {result.late_s * 1000:.0f} ms behind its schedule at worst"
        )
    return (
        result.percentile_ms(0.50),
        result.percentile_ms(0.99),
        app_cpu_s * 1000 / len(result.latencies_s),
        result.late_s * 1000,
        result.failed,
    )


SOAK_RSS_GROWTH_GOAL_MB = 5.0  # after warm-up, over the run


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def _soak_crud(base: str, stop: threading.Event, errors: list[int]) -> None:
    rng = random.Random()
    with httpx.Client(base_url=base, timeout=10) as client:
        while not stop.is_set():
            roll = rng.random()
            if roll < 0.6:
                response = client.get("/products", params={"limit": 10})
            elif roll < 0.9:
                response = client.post("/products", json={"name": "soak", "price": 1})
            else:
                response = client.get(f"/products/{rng.randint(1, 1000)}")
            if response.status_code >= 500:
                errors.append(response.status_code)


def _soak_dashboard(base: str, stop: threading.Event) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        while not stop.wait(2):
            client.get("/monitor/")
            client.get("/monitor/partials")  # what an open dashboard polls
            client.get("/monitor/api/snapshot")


def _soak_leaks(base: str, stop: threading.Event) -> None:
    with httpx.Client(base_url=base, timeout=30) as client:
        while not stop.wait(15):
            client.post("/demo/leak", params={"hold_s": 3}, headers=DEMO_HEADERS)
            client.post("/demo/gc-leak", headers=DEMO_HEADERS)
            client.post("/demo/slow-query", params={"seconds": 0.3}, headers=DEMO_HEADERS)


def soak(minutes: float, interval_s: float, clients: int = 4) -> Verdict:
    """Mixed CRUD load, dashboard polling and periodic leaks against one app for `minutes`:
    RSS, threads, fds and series every `interval_s`; after the first sample they stay flat."""
    import psutil  # a dev dependency, needed by this scenario only

    demo = {"MONITOR_DEMO_ROUTES": "true", "MONITOR_LEAK_THRESHOLD_S": "1",
            "MONITOR_PROBE_INTERVAL_S": "2"}  # fmt: skip
    stop = threading.Event()
    errors: list[int] = []
    samples: list[tuple[float, int, int, int]] = []  # RSS MB, threads, fds, series
    with served(True, launcher=[], extra_env=demo) as (base, pid):
        threads = [threading.Thread(target=_soak_crud, args=(base, stop, errors))
                   for _ in range(clients)]  # fmt: skip
        threads += [threading.Thread(target=_soak_dashboard, args=(base, stop)),
                    threading.Thread(target=_soak_leaks, args=(base, stop))]  # fmt: skip
        for thread in threads:
            thread.start()
        try:
            process = psutil.Process(pid)
            print(f"{'t (s)':>6} {'RSS MB':>8} {'threads':>8} {'fds':>5} {'series':>7} {'5xx':>5}")
            started = time.monotonic()
            end = started + minutes * 60
            while time.monotonic() < end:
                metrics = httpx.get(f"{base}/metrics", timeout=10).text
                sample = (process.memory_info().rss / 2**20, process.num_threads(),
                          process.num_fds(), series_count(metrics))  # fmt: skip
                samples.append(sample)
                print(f"{time.monotonic() - started:6.0f} {sample[0]:8.1f} {sample[1]:8d} "
                      f"{sample[2]:5d} {sample[3]:7d} {len(errors):5d}", flush=True)  # fmt: skip
                time.sleep(min(interval_s, max(0.0, end - time.monotonic())))
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
    goal = f"RSS +<= {SOAK_RSS_GROWTH_GOAL_MB:.0f} MB after the first sample, no 5xx"
    if len(samples) < 3:
        return Verdict("soak", f"{len(samples)} samples: too short", goal, "not resolved")
    growth = samples[-1][0] - samples[1][0]
    fds = {sample[2] for sample in samples[1:]}
    figure = (
        f"RSS {samples[1][0]:.1f} -> {samples[-1][0]:.1f} MB over {minutes:g} min, "
        f"threads {samples[-1][1]}, fds {min(fds)}-{max(fds)}, {len(errors)} 5xx"
    )
    met = growth <= SOAK_RSS_GROWTH_GOAL_MB and not errors
    return Verdict("soak", figure, goal, "met" if met else "missed")
