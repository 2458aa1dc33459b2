"""The demo app for `bench/overhead_inprocess.py`: SIGUSR1 detaches or re-attaches the monitor.

Only for the benchmark: it measures the monitor's per-request work inside one process, where
the memory-layout bias of one process against another cannot enter. The attribution middleware
stays in place (it is part of the app's middleware stack); what toggles is everything
`PoolMonitor` attaches: pool and statement wrappers, listeners, the probe and the leak sweep.
Run by the benchmark: `uvicorn --factory bench.toggle_app:create_toggled_app`.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from fastapi import FastAPI

from monitor.app import _attach_monitor, create_app
from monitor.pool_monitor import PoolMonitor
from monitor.settings import Settings


def create_toggled_app() -> FastAPI:
    settings = Settings()
    app = create_app(settings)
    lock = threading.Lock()

    def toggle(signum: int, frame: FrameType | None) -> None:
        with lock:
            monitor: PoolMonitor | None = getattr(app.state, "pool_monitor", None)
            if monitor is not None:
                monitor.detach()
                app.state.pool_monitor = None
                return
            # The app's own wiring (sets app.state.pool_monitor and starts it), not a copy of it.
            _attach_monitor(app, settings, app.state.engine, app.state.engine.url, "DATABASE_URL")

    signal.signal(signal.SIGUSR1, toggle)
    return app
