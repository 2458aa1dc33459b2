"""The demo app with the monitor on vs off: throughput and p99 latency, side by side.

Three app processes share one database: monitor on, monitor off, and a second monitor-off app
(the control: its figures against "off" are what two identical apps measure against each other
in the same run, the noise floor). A CRUD read (GET /products/{id}) and a CRUD write
(POST /products) are measured two ways:
- throughput: wrk loads all three apps at once (closed loop, saturated): they share one core for
  the same seconds, so a burst of noise from the machine hits all of them, and each app's
  throughput is its share of the core divided by its CPU per request. The goal (ratio >= 0.97)
  is judged here: on this 2-core VM, runs one at a time vary by up to 15% from run to run.
- latency: one app at a time (each first in turn), at a fixed rate of BENCH_LOAD (0.5) times
  what the apps served in their warm-up, the same rate for all three (`bench/fixed_rate.py`:
  open loop, latency counted from when each request was due). The p50 and p99 differences
  (goal p99 <= 1 ms) are read here. A saturated closed loop is not used for latency: with c
  connections its latency is about c / throughput, queueing that restates the throughput ratio
  (scaled by the chosen c) and carries the machine's drift.
Also printed: the app's CPU time per request (from /proc), on/off.

Two more things bias runs on this machine, and both are handled here:
- the apps and the load trade cores: the apps are pinned to one core and wrk and this script
  to the other (`taskset`; BENCH_PIN=0 turns it off), which also halves the apps' CPU per
  request;
- a process runs a few % faster or slower than an identical one for its whole life: the hash
  seed alone moves throughput by a few %, and the app started first runs about 3% slower than
  those started after it (measured with identical apps; the cause is outside the app). The
  apps are started afresh for each of BENCH_GENERATIONS generations, all three with that
  generation's hash seed, and in another order each time (6 generations: every order once).
  The figures are medians over every round of every generation. Each comes with a 95%
  interval from resampling whole generations (`bench/interval.py`) and the verdict it allows
  against the goal: met, missed, or not resolved by this run when the interval spans the goal.
Run: `.venv/bin/python bench/overhead.py` (needs `wrk`; DATABASE_URL or the local PostgreSQL).
Env: BENCH_GENERATIONS (6), BENCH_ROUNDS per generation, case and way (3), BENCH_SECONDS (5),
BENCH_LOAD (0.5), BENCH_WAYS (`throughput,latency`; one of them alone runs only that way).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fixed_rate import fixed_rate
from bench.interval import bootstrap_interval, verdict

ROOT = Path(__file__).resolve().parents[1]
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
GENERATIONS = int(os.environ.get("BENCH_GENERATIONS", "6"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "4"))
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
LOAD = float(os.environ.get("BENCH_LOAD", "0.5"))  # the fixed rate, as a share of capacity
WAYS = frozenset(os.environ.get("BENCH_WAYS", "throughput,latency").split(","))
PIN = (
    os.environ.get("BENCH_PIN", "1") == "1"
    and shutil.which("taskset") is not None
    and (os.cpu_count() or 1) >= 2
)

RATIO_GOAL = 0.97  # throughput, monitor on / off
P99_GOAL_MS = 1.0  # p99 latency, monitor on - off

READ, WRITE = "read  GET /products/{id}", "write POST /products"
WRITE_BODY = {"name": "bench", "price": 1.5}
# The request each case sends at a fixed rate: method and body.
FIXED_RATE_REQUESTS: dict[str, tuple[str, bytes | None]] = {
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
    factory: str = "monitor.app:create_app",
    *,
    launcher: Sequence[str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    ready_within_s: float = 30.0,
) -> subprocess.Popen[bytes]:
    """Serve the demo app (`factory`) on `port` and wait until it is ready.

    `launcher` runs the interpreter (default: pinned to core 1 when pinning is on)."""
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
    # Pinning the app to one core and wrk to the other keeps them from trading places, which
    # otherwise swings throughput by 10% between identical runs on a 2-core machine. (One at a
    # time, only the app measured is busy; all at once, the apps share that core on purpose.)
    if launcher is None:
        launcher = ["taskset", "-c", "1"] if PIN else []
    process = subprocess.Popen(
        [*launcher, sys.executable, "-m", "uvicorn", "--factory", factory,
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


def crud_cases(
    base_url: str, write_script: Path | None, timeout_s: float = 5.0
) -> dict[str, tuple[str, Path | None]]:
    """The two cases measured, case -> (path, wrk script): a read of a product made here for it,
    and a write."""
    product = httpx.post(
        f"{base_url}/products", json={"name": "read-me", "price": 1}, timeout=timeout_s
    ).json()
    return {
        READ: (f"/products/{product['id']}", None),
        WRITE: ("/products", write_script),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Result = tuple[float, float, float]  # requests/s, p99 ms, app CPU ms per request
# p50 ms, p99 ms, app CPU ms per request, how far the load fell behind its schedule (ms),
# failed requests
Latency = tuple[float, float, float, float, float]
# case -> app -> one result per round (a Result or a Latency: figures are read by position)
Results = dict[str, dict[str, list[tuple[float, ...]]]]


def wrk_command(url: str, script: Path | None, seconds: int) -> list[str]:
    return [
        *(["taskset", "-c", "0"] if PIN else []),
        "wrk",
        *(["-s", str(script)] if script is not None else []),
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--latency",
        url,
    ]


def wrk_result(output: str, app_cpu_s: float) -> Result:
    """Requests per second, p99 latency in ms and the app's CPU ms per request of one wrk run."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    p99_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    if "Non-2xx" in output:
        raise SystemExit(f"wrk saw errors:\n{output}")
    requests = float(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    return rps, p99_ms, app_cpu_s * 1000 / max(requests, 1.0)


def wrk(url: str, script: Path | None, pid: int, seconds: int = SECONDS) -> Result:
    """One wrk run against one app (the others idle)."""
    cpu_before = cpu_seconds(pid)
    command = wrk_command(url, script, seconds)
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30).stdout
    return wrk_result(output, cpu_seconds(pid) - cpu_before)


def wrk_together(
    urls: Mapping[str, str], script: Path | None, pids: Mapping[str, int], seconds: int = SECONDS
) -> dict[str, Result]:
    """One wrk run per app, all at once: the apps share their core for the same seconds, so
    whatever the machine does meanwhile hits them alike, and each one's throughput is its
    share of the core divided by its CPU per request."""
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    runs = {
        name: subprocess.Popen(wrk_command(url, script, seconds), stdout=subprocess.PIPE, text=True)
        for name, url in urls.items()
    }
    outputs = {name: run.communicate(timeout=seconds + 30)[0] for name, run in runs.items()}
    return {
        name: wrk_result(outputs[name], cpu_seconds(pids[name]) - cpu_before[name]) for name in urls
    }


def at_fixed_rate(url: str, case: str, rate: float, pid: int, seconds: int = SECONDS) -> Latency:
    """One fixed-rate run against one app (the others idle): p50, p99, CPU per request, how far
    the load fell behind its schedule, failures. A failed round is reported and kept: a failed
    request counts as its time to failure (a VM pause here once made the load catch up in a
    burst that timed out; the apps recovered)."""
    method, body = FIXED_RATE_REQUESTS[case]
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


def median_ratio(results: dict[str, list[tuple[float, ...]]], app: str, field: int = 0) -> float:
    """Median over rounds of the app's figure (throughput by default) over the monitor-off app's."""
    pairs = zip(results[app], results["off"], strict=True)
    return statistics.median(mine[field] / off[field] for mine, off in pairs)


START_ORDERS = list(itertools.permutations(("on", "off", "control")))


def start_order(generation: int) -> tuple[str, ...]:
    """The order the apps start in: every permutation in turn, so no app keeps the first place."""
    return START_ORDERS[generation % len(START_ORDERS)]


def run_generation(
    generation: int,
    latency: Results,
    throughput: Results,
    rates: dict[str, list[float]],
    script: Path,
) -> None:
    """Start the three apps afresh; per case, ROUNDS rounds of one app at a time at a fixed rate
    (each app first in turn), then ROUNDS rounds of all three at once under wrk; stop them."""
    # "control" is a second app with the monitor off: its ratio to "off" is the noise floor,
    # what two identical apps measure against each other in the same run.
    monitor_on = {"on": True, "off": False, "control": False}
    ports = {name: free_port() for name in monitor_on}
    apps = {
        name: start_app(monitor_on[name], ports[name], hash_seed=generation + 1)
        for name in start_order(generation)
    }
    pids = {name: app.pid for name, app in apps.items()}
    try:
        cases = crud_cases(f"http://127.0.0.1:{ports['off']}", script)
        names = list(monitor_on)
        for case, (path, case_script) in cases.items():
            urls = {name: f"http://127.0.0.1:{ports[name]}{path}" for name in names}
            # Warm-up, not counted (pools filled, lazy imports done); it also sets the rate.
            served = [wrk(urls[name], case_script, pids[name], seconds=2)[0] for name in names]
            rate = LOAD * statistics.median(served)
            rates.setdefault(case, []).append(rate)
            if "latency" in WAYS:
                one_at_a_time = latency.setdefault(case, {name: [] for name in names})
                for round_index in range(ROUNDS):
                    shift = (round_index + generation) % len(names)
                    for name in names[shift:] + names[:shift]:
                        result = at_fixed_rate(urls[name], case, rate, pids[name])
                        one_at_a_time[name].append(result)
            if "throughput" in WAYS:
                all_at_once = throughput.setdefault(case, {name: [] for name in names})
                for _ in range(ROUNDS):
                    for name, result in wrk_together(urls, case_script, pids).items():
                        all_at_once[name].append(result)
    finally:
        for process in apps.values():
            stop_app(process)


def round_diffs(
    per_app: dict[str, list[tuple[float, ...]]], app: str, field: int = 1
) -> list[float]:
    """Per round, the app's p99 (or another `field`) minus the monitor-off app's."""
    pairs = zip(per_app[app], per_app["off"], strict=True)
    return [mine[field] - off[field] for mine, off in pairs]


def median_diff(per_app: dict[str, list[tuple[float, ...]]], app: str, field: int = 1) -> float:
    """Median over rounds of the app's p99 (or another `field`) minus the monitor-off app's."""
    return statistics.median(round_diffs(per_app, app, field))


def judged(per_generation: list[list[float]], goal: float, *, at_least: bool, digits: int) -> str:
    """The run's 95% interval for the median and its verdict against the goal."""
    interval = bootstrap_interval(per_generation)
    sign = "" if at_least else "+"  # a ratio, or a difference
    low, high = (f"{bound:{sign}.{digits}f}" for bound in interval)
    return f"{low}..{high} {verdict(interval, goal, at_least=at_least)}"


def report_throughput(results: Results, generation_ratios: dict[str, list[list[float]]]) -> None:
    print(
        f"throughput, all three loaded at once by wrk (goal: ratio >= {RATIO_GOAL}; "
        "95% interval over generations, and the verdict it allows):"
    )
    print(
        f"  {'case':26} {'off rps':>8} {'on rps':>8} {'ratio':>6} {'95% interval, verdict':>25} "
        f"{'control':>8} {'cpu/req on/off':>15}  per generation"
    )
    for case, per_app in results.items():
        off_rps, on_rps = (statistics.median(r[0] for r in per_app[a]) for a in ("off", "on"))
        per_generation = generation_ratios[case]
        spread = " ".join(f"{statistics.median(ratios):.3f}" for ratios in per_generation)
        print(
            f"  {case:26} {off_rps:8.0f} {on_rps:8.0f} {median_ratio(per_app, 'on'):6.3f} "
            f"{judged(per_generation, RATIO_GOAL, at_least=True, digits=3):>25} "
            f"{median_ratio(per_app, 'control'):8.3f} {median_ratio(per_app, 'on', 2):15.3f}  "
            f"{spread}"
        )


def report_latency(
    results: Results, generation_diffs: dict[str, list[list[float]]], rates: dict[str, list[float]]
) -> None:
    print(
        f"latency, one app at a time at a fixed rate ({LOAD:.0%} of capacity; goal: p99 diff "
        f"<= {P99_GOAL_MS} ms):"
    )
    print(
        f"  {'case':26} {'rate/s':>7} {'off p50':>9} {'diff':>8} {'off p99':>9} {'on p99':>9} "
        f"{'diff':>8} {'95% interval, verdict':>25} {'control':>8} {'cpu/req on/off':>15}  "
        "p99 diff per generation"
    )
    for case, per_app in results.items():
        off_p50, off_p99, on_p99 = (
            statistics.median(r[field] for r in per_app[app])
            for app, field in (("off", 0), ("off", 1), ("on", 1))
        )
        per_generation = generation_diffs[case]
        spread = " ".join(f"{statistics.median(diffs):+.2f}" for diffs in per_generation)
        print(
            f"  {case:26} {statistics.median(rates[case]):7.0f} {off_p50:7.2f}ms "
            f"{median_diff(per_app, 'on', 0):+6.2f}ms {off_p99:7.2f}ms {on_p99:7.2f}ms "
            f"{median_diff(per_app, 'on'):+6.2f}ms "
            f"{judged(per_generation, P99_GOAL_MS, at_least=False, digits=2):>25} "
            f"{median_diff(per_app, 'control'):+6.2f}ms "
            f"{median_ratio(per_app, 'on', 2):15.3f}  {spread}"
        )


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package 'wrk')")
    if not WAYS or not WAYS.issubset({"throughput", "latency"}):
        raise SystemExit("BENCH_WAYS: throughput, latency or both (comma-separated)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(WRITE_LUA)
    if PIN:
        os.sched_setaffinity(0, {0})  # the fixed-rate load runs here: on wrk's core, not the apps'
    latency: Results = {}  # one app at a time, at a fixed rate
    throughput: Results = {}  # all three at once, under wrk
    rates: dict[str, list[float]] = {}
    # case -> per generation, its rounds' figures: the interval resamples whole generations
    throughput_ratios: dict[str, list[list[float]]] = {}
    p99_diffs: dict[str, list[list[float]]] = {}
    try:
        print(
            f"{' and '.join(way for way in ('throughput', 'latency') if way in WAYS)}: "
            f"wrk -t{THREADS} -c{CONNECTIONS} -d{SECONDS}s, {SECONDS} s at a fixed rate, "
            f"{'pinned' if PIN else 'not pinned'}, "
            f"{GENERATIONS} generations of fresh apps x {ROUNDS} rounds per case and way"
        )
        for generation in range(GENERATIONS):
            run_generation(generation, latency, throughput, rates, Path(lua.name))
            for case in throughput:
                latest = {app: rounds[-ROUNDS:] for app, rounds in throughput[case].items()}
                throughput_ratios.setdefault(case, []).append(
                    [on[0] / off[0] for on, off in zip(latest["on"], latest["off"], strict=True)]
                )
            for case in latency:
                latest = {app: rounds[-ROUNDS:] for app, rounds in latency[case].items()}
                p99_diffs.setdefault(case, []).append(round_diffs(latest, "on"))
        if throughput:
            report_throughput(throughput, throughput_ratios)
        if latency:
            report_latency(latency, p99_diffs, rates)
            rounds = [r for per_app in latency.values() for runs in per_app.values() for r in runs]
            print(
                f"fixed-rate load: fell behind its schedule by at most "
                f"{max(r[3] for r in rounds):.1f} ms; {sum(r[4] for r in rounds):.0f} requests failed"
            )
        orders = ", ".join(">".join(start_order(g)) for g in range(GENERATIONS))
        print(f"start order per generation: {orders}")
        print("control: off vs an identical off app (the noise floor)")
    finally:
        os.unlink(lua.name)


if __name__ == "__main__":
    main()
