"""Instructions per request of the served demo app, monitor on vs off, counted by valgrind.

Throughput ratios between two app processes on this 2-core machine move by several % with
memory layout, start order and neighbours; instruction counts move by about 1% from run to run
(timing decides how often the event loop and the worker threads wake up). Each app runs under
callgrind (uvicorn, its worker threads, the monitor's listeners, middleware and sweep: the
whole process) and answers FEW, then MANY requests from 4 keep-alive clients outside valgrind;
the difference divided by MANY - FEW removes start-up and shutdown. The probe is slowed to once
an hour because valgrind stretches wall time 50-fold (its cost is `bench/probe.py`'s).
Run: `.venv/bin/python bench/overhead_instructions.py` (needs `valgrind`; about 5 minutes).
Env: BENCH_FEW (200), BENCH_MANY (1000).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.overhead import READ, WRITE, WRITE_BODY, crud_cases, free_port, start_app

FEW = int(os.environ.get("BENCH_FEW", "200"))
MANY = int(os.environ.get("BENCH_MANY", "1000"))
CLIENTS = 4
CASES = (READ, WRITE)


def send_requests(base: str, case: str, path: str, count: int) -> None:
    """`count` requests of `case` to `path` from CLIENTS keep-alive clients; all must be 2xx."""
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

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{case}: the app answered {failures[0]}")


def instructions(
    enabled: bool,
    case: str,
    count: int,
    workdir: Path,
    *,
    factory: str = "monitor.app:create_app",
    extra_env: Mapping[str, str] | None = None,
) -> int:
    """Instructions the whole app process ran from start to exit, answering `count` requests."""
    handle, name = tempfile.mkstemp(prefix=f"callgrind.{count}.", suffix=".out", dir=workdir)
    os.close(handle)  # callgrind writes it when the app exits
    out = Path(name)
    port = free_port()
    app = start_app(
        enabled,
        port,
        hash_seed=1,
        factory=factory,
        launcher=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"],
        extra_env={"MONITOR_PROBE_INTERVAL_S": "3600", **(extra_env or {})},
        ready_within_s=300,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        path, _ = crud_cases(base, None, timeout_s=120)[case]
        send_requests(base, case, path, count)
    finally:
        app.terminate()
        app.wait(timeout=300)
    match = re.search(r"^summary: (\d+)$", out.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError("callgrind wrote no summary line")
    return int(match.group(1))


def per_request(enabled: bool, case: str, workdir: Path, **app: Any) -> float:
    """Instructions per request: MANY requests less FEW, so start-up and shutdown cancel.
    `app`: `factory` and `extra_env` for `instructions`."""
    few = instructions(enabled, case, FEW, workdir, **app)
    many = instructions(enabled, case, MANY, workdir, **app)
    return (many - few) / (MANY - FEW)


def main() -> None:
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found (Debian: apt-get install valgrind)")
    print(f"whole app process under callgrind, ({MANY} - {FEW} requests), {CLIENTS} clients")
    print(f"{'case':26} {'off':>12} {'on':>12} {'ratio':>7}")
    with tempfile.TemporaryDirectory() as workdir:
        for case in CASES:
            off = per_request(False, case, Path(workdir))
            on = per_request(True, case, Path(workdir))
            print(f"{case:26} {off:12,.0f} {on:12,.0f} {on / off:7.3f}", flush=True)


if __name__ == "__main__":
    main()
