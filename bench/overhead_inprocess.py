"""The monitor's per-request cost inside one app process: detached and re-attached between runs.

`bench/overhead.py` compares separate processes, which also compares their memory layouts; here
one process (`bench/toggle_app.py`) alternates between the monitor attached and detached (the
attribution middleware stays), so the ratio is the work the monitor does per request and nothing
else. Order alternates between rounds (on-off, off-on, ...) so drift cancels.
Run: `.venv/bin/python bench/overhead_inprocess.py` (needs `wrk`; DATABASE_URL or local PostgreSQL).
Env: BENCH_ROUNDS (8), BENCH_SECONDS (5), BENCH_PIN (1).
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.overhead import (
    PIN,
    SECONDS,
    WRITE_LUA,
    Result,
    crud_cases,
    free_port,
    start_app,
    stop_app,
    wrk,
)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "8"))


def main() -> None:
    port = free_port()
    app = start_app(True, port, factory="bench.toggle_app:create_toggled_app")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(WRITE_LUA)
    try:
        cases = crud_cases(f"http://127.0.0.1:{port}", Path(lua.name))
        print(
            f"one app process, monitor attached / detached by signal, {ROUNDS} rounds of "
            f"wrk -d{SECONDS}s per case, {'pinned' if PIN else 'not pinned'}"
        )
        print(f"{'case':26} {'ratio':>7} {'p99 diff':>9} {'cpu/req on/off':>15}")
        attached = True  # the app starts with the monitor attached
        for case, (path, script) in cases.items():
            url = f"http://127.0.0.1:{port}{path}"
            wrk(url, script, app.pid, seconds=1)  # warm-up, not counted
            results: dict[bool, list[Result]] = {True: [], False: []}
            for _ in range(ROUNDS):
                # One run in the current state, toggle, one in the other: the order alternates.
                results[attached].append(wrk(url, script, app.pid))
                app.send_signal(signal.SIGUSR1)
                attached = not attached
                time.sleep(0.5)  # the handler runs on the app's next bytecode; settle anyway
                results[attached].append(wrk(url, script, app.pid))
            pairs = list(zip(results[True], results[False], strict=True))
            print(
                f"{case:26} {statistics.median(on[0] / off[0] for on, off in pairs):7.3f} "
                f"{statistics.median(on[1] - off[1] for on, off in pairs):+7.2f}ms "
                f"{statistics.median(on[2] / off[2] for on, off in pairs):15.3f}"
            )
    finally:
        stop_app(app)
        os.unlink(lua.name)


if __name__ == "__main__":
    main()
