"""Python bytecodes per request of the demo app, monitor on vs off, and which modules run them.

Deterministic where wall-clock figures are not: each case's requests go through the app
in-process (Starlette's test client) with an opcode tracer on every thread that serves requests.
The monitor's own background threads (the scheduler and its workers: leak sweep, probe) are left
out: their work follows the clock, not the requests, and tracing stretches the clock. The
figure complements `bench/overhead_instructions.py`, which counts machine instructions of the
whole process, background included.
Run: `.venv/bin/python bench/overhead_bytecodes.py` (DATABASE_URL or the local PostgreSQL).
Env: BENCH_REQUESTS per case and app (100).
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.overhead import DATABASE_URL, READ, WRITE, WRITE_BODY

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "100"))
WARM_UP = 20
MONITOR = str(Path(__file__).resolve().parents[1] / "monitor") + os.sep
# Threads that run on the clock, not per request: APScheduler's own and its executor's workers.
BACKGROUND_THREADS = ("APScheduler", "ThreadPoolExecutor")
Counts = collections.Counter[str]


def module_group(filename: str) -> str:
    """`monitor/<module>.py` for this project's code, the package name for an installed one,
    the file name for the standard library."""
    if filename.startswith(MONITOR):
        return "monitor/" + filename[len(MONITOR) :]
    _, packages, inside = filename.partition("site-packages" + os.sep)
    if packages:
        return inside.split(os.sep, 1)[0]
    return os.path.basename(filename)


def opcode_tracer(counts: Counts, active: list[bool]) -> Callable[..., Any]:
    """A `settrace` function counting opcodes by module group while `active[0]` is true."""
    background: dict[int, bool] = {}

    def tracer(frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        if not active[0]:
            return tracer
        ident = threading.get_ident()
        skip = background.get(ident)
        if skip is None:
            skip = background[ident] = threading.current_thread().name.startswith(
                BACKGROUND_THREADS
            )
        if skip:
            return None
        if event == "call":
            frame.f_trace_opcodes = True
        elif event == "opcode":
            counts[module_group(frame.f_code.co_filename)] += 1
        return tracer

    return tracer


def per_request(enabled: bool, case: str) -> dict[str, float]:
    """Opcodes per request of `case` by module group, with the monitor on or off."""
    from fastapi.testclient import TestClient

    from monitor.app import create_app
    from monitor.settings import Settings

    counts: Counts = collections.Counter()
    active = [False]
    tracer = opcode_tracer(counts, active)
    # Set before the app starts, so every thread it starts is traced from its first call.
    threading.settrace(tracer)
    sys.settrace(tracer)
    try:
        app = create_app(Settings(database_url=DATABASE_URL, enabled=enabled))
        with TestClient(app) as client:
            product = client.post("/products", json={"name": "read-me", "price": 1}).json()

            def send() -> None:
                if case == WRITE:
                    response = client.post("/products", json=WRITE_BODY)
                else:
                    response = client.get(f"/products/{product['id']}")
                if response.is_error:
                    raise SystemExit(f"{case}: the app answered {response.status_code}")

            for _ in range(WARM_UP):
                send()
            active[0] = True
            for _ in range(REQUESTS):
                send()
            active[0] = False
    finally:
        sys.settrace(None)
        threading.settrace(None)
    return {group: count / REQUESTS for group, count in counts.items()}


def main() -> None:
    warnings.filterwarnings("ignore", message="Using `httpx`")  # the test client's notice
    print(f"Python opcodes per request, {REQUESTS} requests per case, request threads only")
    for case in (READ, WRITE):
        on, off = per_request(True, case), per_request(False, case)
        total_on, total_off = sum(on.values()), sum(off.values())
        print(
            f"{case}: on {total_on:,.0f}, off {total_off:,.0f}, "
            f"ratio {total_on / total_off:.4f} ({total_on - total_off:+,.0f}); where they differ:"
        )
        differences = {group: on.get(group, 0) - off.get(group, 0) for group in on.keys() | off}
        for group, difference in sorted(differences.items(), key=lambda item: -abs(item[1])):
            if abs(difference) >= 1:
                print(f"  {group:<45} {difference:+8.1f}")


if __name__ == "__main__":
    main()
