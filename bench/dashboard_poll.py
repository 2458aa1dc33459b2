"""What an open dashboard costs the app it watches: CPU per 2-second poll, two ways side by side.

The served demo app (monitor on; the demo's leak and slow-query scenarios leave rows in the held,
leaks and slow-query panels) is polled the way the dashboard polls it, `/monitor/partials`
(every panel in one answer, swapped in by id), and the way it polled before, one
`/monitor/partials/<panel>` request per panel. The app's CPU time per poll comes from /proc;
rounds alternate the two ways, figures are medians.
A CRUD read is measured in the same rounds, to put a poll in units of the app's own requests.
Run: `.venv/bin/python bench/dashboard_poll.py` (DATABASE_URL or the local PostgreSQL).
Env: BENCH_ROUNDS (5), BENCH_POLLS per round and way (40).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.overhead import READ, cpu_seconds, crud_cases, free_port, start_app, stop_app
from monitor.selftest import DEMO_HEADERS
from monitor.web.views import PANEL_NAMES

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
POLLS = int(os.environ.get("BENCH_POLLS", "40"))
POLL_INTERVAL_S = 2.0  # the dashboard's hx-trigger


def cpu_ms_per_call(pid: int, call: Callable[[], None], calls: int) -> float:
    """The app's CPU milliseconds per `call()`, over `calls` calls in a row."""
    before = cpu_seconds(pid)
    for _ in range(calls):
        call()
    return (cpu_seconds(pid) - before) * 1000 / calls


def main() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    demo = {
        "MONITOR_DEMO_ROUTES": "true",
        "MONITOR_DEMO_HOLD_TTL_S": "600",
        "MONITOR_LEAK_THRESHOLD_S": "1",
    }
    app = start_app(True, port, launcher=[], extra_env=demo)
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            read_path = crud_cases(base, None)[READ][0]
            for path in ("/demo/leak?count=2&hold_s=600", "/demo/slow-query"):
                response = client.post(path, headers=DEMO_HEADERS)
                if response.status_code != 200:
                    raise SystemExit(f"POST {path} answered {response.status_code}")
            measure(app.pid, client, read_path)
    finally:
        stop_app(app)


def get(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    if response.status_code != 200:
        raise SystemExit(f"GET {path} answered {response.status_code}: {response.text[:300]}")


def poll_per_panel(client: httpx.Client) -> None:
    for name in PANEL_NAMES:
        get(client, f"/monitor/partials/{name}")


def measure(pid: int, client: httpx.Client, read_path: str) -> None:
    ways: dict[str, Callable[[], None]] = {
        "combined": lambda: get(client, "/monitor/partials"),
        "per panel": lambda: poll_per_panel(client),
        "CRUD read": lambda: get(client, read_path),
    }
    for call in ways.values():  # warm-up: imports, template compilation, the first probe
        call()
    time.sleep(2.0)  # the leak sweep has flagged the held connections
    for path in ("/monitor/partials", "/monitor/partials/held"):
        if "POST /demo/leak" not in client.get(path).text:
            raise SystemExit(f"{path} does not show the demo's held connections")
    per_way: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(ROUNDS):
        for name, call in ways.items():
            per_way[name].append(cpu_ms_per_call(pid, call, POLLS))
    medians = {name: statistics.median(values) for name, values in per_way.items()}
    print(
        f"app CPU per call, median of {ROUNDS} rounds x {POLLS} calls ({len(PANEL_NAMES)} panels)"
    )
    for name, median in medians.items():
        print(f"  {name:<10} {median:7.2f} ms")
    combined, per_panel = medians["combined"], medians["per panel"]
    print(f"per panel / combined: {per_panel / combined:.1f}x")
    for name in ("combined", "per panel"):
        print(
            f"{name}: an open dashboard takes {medians[name] / POLL_INTERVAL_S / 10:.2f}% of a core "
            f"({medians[name] / medians['CRUD read']:.1f} CRUD reads per poll)"
        )


if __name__ == "__main__":
    main()
