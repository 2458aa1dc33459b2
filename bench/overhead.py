"""The demo app with the monitor on vs off: throughput and p99 latency under wrk, side by side.

Two app processes (MONITOR_ENABLED=true / false) share one database; wrk runs alternate between
them for a CRUD read (GET /products/{id}) and a CRUD write (POST /products). Prints the median
throughput ratio (on/off; goal >= 0.97) and the p99 difference (goal <= 1 ms), and the same
ratio for a third, identical monitor-off app: the noise floor of the machine in that run.
Also prints the app's CPU time per request (from /proc), on/off.

Two things make single runs on a 2-core machine mislead, and both are handled here:
- the apps and wrk trade cores: each app is pinned to one core and wrk to the other
  (`taskset`; BENCH_PIN=0 turns it off), which also halves the apps' CPU per request;
- a process runs a few % faster or slower than an identical one for its whole life (memory
  layout; the hash seed alone moves throughput by a few %, and a fixed seed turns that into a
  fixed bias of one code version against another): the apps are started afresh for each of
  BENCH_GENERATIONS generations, all three with that generation's hash seed, and the figures
  are medians over every round of every generation.
Run: `.venv/bin/python bench/overhead.py` (needs `wrk`; DATABASE_URL or the local PostgreSQL).
Env: BENCH_GENERATIONS (5), BENCH_ROUNDS per generation (3), BENCH_SECONDS per run (5).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
GENERATIONS = int(os.environ.get("BENCH_GENERATIONS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "4"))
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
PIN = (
    os.environ.get("BENCH_PIN", "1") == "1"
    and shutil.which("taskset") is not None
    and (os.cpu_count() or 1) >= 2
)

WRITE_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"name": "bench", "price": 1.5}'
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
) -> subprocess.Popen[bytes]:
    """Serve the demo app (`factory`) on `port` and wait until it is ready."""
    env = {
        **os.environ,
        "DATABASE_URL": DATABASE_URL,
        "MONITOR_ENABLED": "true" if enabled else "false",
        "MONITOR_POOL_SIZE": "10",
        "MONITOR_LEAK_THRESHOLD_S": "30",
        # The same dict layouts in the apps compared with each other.
        "PYTHONHASHSEED": str(hash_seed),
    }
    # Pinning the app to one core and wrk to the other keeps them from trading places, which
    # otherwise swings throughput by 10% between identical runs on a 2-core machine. (Only the
    # app being measured is busy; the others wait on the same core.)
    pin = ["taskset", "-c", "1"] if PIN else []
    process = subprocess.Popen(
        [*pin, sys.executable, "-m", "uvicorn", "--factory", factory,
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"app on port {port} did not become ready")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(
    url: str, script: Path | None, pid: int, seconds: int = SECONDS
) -> tuple[float, float, float]:
    """Requests per second, p99 latency in ms, and the app's CPU ms per request for one run."""
    cpu_before = cpu_seconds(pid)
    command = [
        *(["taskset", "-c", "0"] if PIN else []),
        "wrk",
        *(["-s", str(script)] if script is not None else []),
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--latency",
        url,
    ]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30).stdout
    cpu_s = cpu_seconds(pid) - cpu_before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    p99_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    if "Non-2xx" in output:
        raise SystemExit(f"wrk saw errors:\n{output}")
    requests = float(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    return rps, p99_ms, cpu_s * 1000 / max(requests, 1.0)


def median_ratio(
    results: dict[str, list[tuple[float, float, float]]], app: str, field: int = 0
) -> float:
    """Median over rounds of the app's figure (throughput by default) over the monitor-off app's."""
    pairs = zip(results[app], results["off"], strict=True)
    return statistics.median(mine[field] / off[field] for mine, off in pairs)


Result = tuple[float, float, float]  # requests/s, p99 ms, app CPU ms per request


def run_generation(
    generation: int, results: dict[str, dict[str, list[Result]]], script_path: Path
) -> None:
    """Start the three apps afresh, run ROUNDS alternating rounds of every case, stop them."""
    # "control" is a second app with the monitor off: its ratio to "off" is the noise floor,
    # what two identical apps measure against each other in the same run.
    monitor_on = {"on": True, "off": False, "control": False}
    ports = {name: free_port() for name in monitor_on}
    apps = {
        name: start_app(monitor_on[name], port, hash_seed=generation + 1)
        for name, port in ports.items()
    }
    try:
        product = httpx.post(
            f"http://127.0.0.1:{ports['off']}/products", json={"name": "read-me", "price": 1}
        ).json()
        cases = {
            "read  GET /products/{id}": (f"/products/{product['id']}", None),
            "write POST /products": ("/products", script_path),
        }
        names = list(monitor_on)
        for case, (path, script) in cases.items():
            for app in names:  # warm-up, not counted: pools filled, lazy imports done
                wrk(f"http://127.0.0.1:{ports[app]}{path}", script, apps[app].pid, seconds=1)
            per_app = results.setdefault(case, {app: [] for app in names})
            for round_index in range(ROUNDS):
                shift = (round_index + generation) % len(names)
                for app in names[shift:] + names[:shift]:  # each app goes first in turn
                    url = f"http://127.0.0.1:{ports[app]}{path}"
                    per_app[app].append(wrk(url, script, apps[app].pid))
    finally:
        for process in apps.values():
            process.terminate()
            process.wait(timeout=15)


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package 'wrk')")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(WRITE_LUA)
    results: dict[str, dict[str, list[Result]]] = {}
    generation_ratios: dict[str, list[float]] = {}
    try:
        print(
            f"wrk -t{THREADS} -c{CONNECTIONS} -d{SECONDS}s, {'pinned' if PIN else 'not pinned'}, "
            f"{GENERATIONS} generations of fresh apps x {ROUNDS} alternating rounds per case"
        )
        for generation in range(GENERATIONS):
            run_generation(generation, results, Path(lua.name))
            for case, per_app in results.items():
                latest = {app: rounds[-ROUNDS:] for app, rounds in per_app.items()}
                generation_ratios.setdefault(case, []).append(median_ratio(latest, "on"))
        print(
            f"{'case':26} {'off rps':>9} {'on rps':>9} {'ratio':>7} {'off p99':>9} {'on p99':>9} "
            f"{'diff':>8} {'control':>8} {'cpu/req on/off':>15}  per generation"
        )
        for case, per_app in results.items():
            p99_diff = statistics.median(
                on[1] - off[1] for on, off in zip(per_app["on"], per_app["off"], strict=True)
            )
            off_rps = statistics.median(r[0] for r in per_app["off"])
            on_rps = statistics.median(r[0] for r in per_app["on"])
            off_p99 = statistics.median(r[1] for r in per_app["off"])
            on_p99 = statistics.median(r[1] for r in per_app["on"])
            spread = " ".join(f"{ratio:.3f}" for ratio in generation_ratios[case])
            print(
                f"{case:26} {off_rps:9.0f} {on_rps:9.0f} {median_ratio(per_app, 'on'):7.3f} "
                f"{off_p99:7.2f}ms {on_p99:7.2f}ms {p99_diff:+7.2f}ms "
                f"{median_ratio(per_app, 'control'):8.3f} {median_ratio(per_app, 'on', 2):15.3f}"
                f"  {spread}"
            )
        print("goals: ratio >= 0.97, p99 diff <= 1 ms; control: off vs an identical off app")
    finally:
        os.unlink(lua.name)


if __name__ == "__main__":
    main()
