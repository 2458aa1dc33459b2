"""Soak: mixed CRUD load, dashboard polling and periodic leaks for N minutes against one app.

Prints RSS, threads, open fds and the /metrics series count every interval; after warm-up they
should stay flat. Not part of the test suite. Run:
`.venv/bin/python bench/soak.py --minutes 5` (DATABASE_URL or the local PostgreSQL).
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
DEMO_HEADERS = {"HX-Request": "true"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def crud_worker(base: str, stop: threading.Event, errors: list[int]) -> None:
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


def dashboard_poller(base: str, stop: threading.Event) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        while not stop.wait(2):
            client.get("/monitor/")
            client.get("/monitor/partials")  # what an open dashboard polls
            client.get("/monitor/api/snapshot")


def leaker(base: str, stop: threading.Event) -> None:
    with httpx.Client(base_url=base, timeout=30) as client:
        while not stop.wait(15):
            client.post("/demo/leak", params={"hold_s": 3}, headers=DEMO_HEADERS)
            client.post("/demo/gc-leak", headers=DEMO_HEADERS)
            client.post("/demo/slow-query", params={"seconds": 0.3}, headers=DEMO_HEADERS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    port = free_port()
    env = {**os.environ, "DATABASE_URL": DATABASE_URL, "MONITOR_DEMO_ROUTES": "true",
           "MONITOR_LEAK_THRESHOLD_S": "1", "MONITOR_PROBE_INTERVAL_S": "2"}  # fmt: skip
    app = subprocess.Popen(
        [sys.executable, "-m", "monitor", "serve", "--port", str(port)],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    errors: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        threads = [
            threading.Thread(target=crud_worker, args=(base, stop, errors))
            for _ in range(args.clients)
        ]
        threads += [threading.Thread(target=dashboard_poller, args=(base, stop)),
                    threading.Thread(target=leaker, args=(base, stop))]  # fmt: skip
        for thread in threads:
            thread.start()
        process = psutil.Process(app.pid)
        print(f"{'t (s)':>6} {'RSS MB':>8} {'threads':>8} {'fds':>5} {'series':>7} {'5xx':>5}")
        started = time.monotonic()
        end = started + args.minutes * 60
        while time.monotonic() < end:
            metrics = httpx.get(f"{base}/metrics", timeout=10).text
            print(
                f"{time.monotonic() - started:6.0f} {process.memory_info().rss / 2**20:8.1f} "
                f"{process.num_threads():8d} {process.num_fds():5d} {series_count(metrics):7d} {len(errors):5d}",
                flush=True,
            )
            time.sleep(min(args.interval, max(0.0, end - time.monotonic())))
    finally:
        stop.set()
        app.terminate()
        app.wait(timeout=15)


if __name__ == "__main__":
    main()
