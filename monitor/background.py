"""Background work of a started monitor: the server probe and the leak sweep, on one scheduler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from monitor.instrumentation.pools_seen import ignore_pool
from monitor.probes.pgbouncer import PgBouncerProbe
from monitor.probes.runner import ServerProbe
from monitor.probes.scheduler import start_scheduler, stop_scheduler

if TYPE_CHECKING:
    from monitor.pool_monitor import PoolMonitor

PROBE_APPLICATION_NAME = "pool-monitor-probe"


class Background:
    def __init__(self, monitor: PoolMonitor) -> None:
        self._monitor = monitor
        self._probe: ServerProbe | None = None
        self._pgbouncer: PgBouncerProbe | None = None
        self._scheduler: Any = None

    def start(self) -> None:
        monitor = self._monitor
        jobs = [("leak-sweep", self.sweep, min(1.0, monitor.tracker.leak_threshold_s / 4))]
        if monitor.probe_enabled:
            self._probe = ServerProbe(
                monitor.probe_url,
                monitor.server_health,
                timeout_s=monitor.probe_timeout_s,
                application_name=PROBE_APPLICATION_NAME,
            )
            ignore_pool(self._probe.engine.pool)
            jobs.insert(0, ("server-probe", self._probe_then_sweep, monitor.probe_interval_s))
        if monitor.pgbouncer_url is not None and monitor.pgbouncer_health is not None:
            # Same schedule and time budget as the server probe, on a job of its own.
            self._pgbouncer = PgBouncerProbe(
                monitor.pgbouncer_url,
                monitor.pgbouncer_health,
                timeout_s=monitor.probe_timeout_s,
                application_name=PROBE_APPLICATION_NAME,
            )
            jobs.append(("pgbouncer-probe", self._pgbouncer.run_once, monitor.probe_interval_s))
        probe = self._probe

        def skipped(job_id: str) -> None:
            # APScheduler drops an overlapping tick before the job runs: count it here.
            if job_id == "server-probe" and probe is not None:
                probe.record_skipped()

        self._scheduler = start_scheduler(jobs, on_skip=skipped)

    def stop(self) -> None:
        if self._scheduler is not None:
            stop_scheduler(self._scheduler)
            self._scheduler = None
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        self._pgbouncer = None

    def sweep(self) -> None:
        self._monitor.tracker.sweep(self._monitor.server_states())

    def _probe_then_sweep(self) -> None:
        assert self._probe is not None
        self._probe.run_once()
        self.sweep()  # classify new leaks with the freshest server view
