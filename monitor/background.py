"""Background work of a started monitor: the server probes and the leak sweep, on one scheduler.

One probe per distinct database URL (the pools of one server share it), one sweep for every pool.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from monitor.instrumentation.pools_seen import ignore_pool
from monitor.probes.pgbouncer import PgBouncerProbe
from monitor.probes.runner import ServerProbe
from monitor.probes.scheduler import start_scheduler, stop_scheduler
from monitor.state.server import ServerHealth
from monitor.watched_pool import WatchedPool

if TYPE_CHECKING:
    from monitor.pool_monitor import PoolMonitor

PROBE_APPLICATION_NAME = "pool-monitor-probe"
PROBE_JOB = "server-probe"


class Background:
    def __init__(self, monitor: PoolMonitor) -> None:
        self._monitor = monitor
        self._probes: dict[str, ServerProbe] = {}  # by job id
        self._pgbouncer: PgBouncerProbe | None = None
        self._scheduler: Any = None
        self._lock = threading.Lock()

    @property
    def _probe(self) -> ServerProbe | None:
        """The primary pool's probe (diagnostics and tests)."""
        return self._probes.get(PROBE_JOB)

    def start(self) -> None:
        with self._lock:
            self._start()

    def stop(self) -> None:
        with self._lock:
            self._stop()

    def restart(self) -> None:
        """Pick up pools added while running."""
        with self._lock:
            if self._scheduler is not None:
                self._stop()
                self._start()

    def _start(self) -> None:
        monitor = self._monitor
        jobs = [("leak-sweep", self.sweep, min(1.0, monitor.leak_threshold_s / 4))]
        if monitor.probe_enabled:
            for index, (health, pools) in enumerate(_by_server(monitor.pools)):
                job_id = PROBE_JOB if index == 0 else f"{PROBE_JOB}-{index + 1}"
                probe = ServerProbe(
                    pools[0].probe_url,
                    health,
                    timeout_s=monitor.probe_timeout_s,
                    application_name=PROBE_APPLICATION_NAME,
                )
                ignore_pool(probe.engine.pool)
                self._probes[job_id] = probe
                run = self._probe_then_sweep(probe, pools)
                jobs.insert(index, (job_id, run, monitor.probe_interval_s))
        if monitor.pgbouncer_url is not None and monitor.pgbouncer_health is not None:
            # Same schedule and time budget as the server probe, on a job of its own.
            self._pgbouncer = PgBouncerProbe(
                monitor.pgbouncer_url,
                monitor.pgbouncer_health,
                timeout_s=monitor.probe_timeout_s,
                application_name=PROBE_APPLICATION_NAME,
            )
            jobs.append(("pgbouncer-probe", self._pgbouncer.run_once, monitor.probe_interval_s))
        probes = dict(self._probes)

        def skipped(job_id: str) -> None:
            # APScheduler drops an overlapping tick before the job runs: count it here.
            probe = probes.get(job_id)
            if probe is not None:
                probe.record_skipped()

        self._scheduler = start_scheduler(jobs, on_skip=skipped)

    def _stop(self) -> None:
        if self._scheduler is not None:
            stop_scheduler(self._scheduler)
            self._scheduler = None
        for probe in self._probes.values():
            probe.close()
        self._probes.clear()
        self._pgbouncer = None

    def sweep(self) -> None:
        for watched in self._monitor.pools:
            self._sweep(watched)

    def _sweep(self, watched: WatchedPool) -> None:
        # The monitor's states: behind PgBouncer the drivers' pids are translated through it.
        watched.tracker.sweep(self._monitor.pool_server_states(watched))

    def _probe_then_sweep(self, probe: ServerProbe, pools: list[WatchedPool]) -> Any:
        def run() -> None:
            probe.run_once()
            for watched in pools:
                self._sweep(watched)  # classify new leaks with the freshest server view

        return run


def _by_server(pools: tuple[WatchedPool, ...]) -> list[tuple[ServerHealth, list[WatchedPool]]]:
    """The pools grouped by the server health they share (one probe each), in pool order."""
    groups: dict[int, tuple[ServerHealth, list[WatchedPool]]] = {}
    for watched in pools:
        groups.setdefault(id(watched.server_health), (watched.server_health, []))[1].append(watched)
    return list(groups.values())
