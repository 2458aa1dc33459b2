"""Background work of a started monitor: the server probe, the leak sweep and, as one worker of
several, publishing this worker's report; all on one scheduler."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from monitor.instrumentation.pools_seen import ignore_pool
from monitor.probes.pgbouncer import PgBouncerProbe
from monitor.probes.runner import ServerProbe
from monitor.probes.scheduler import start_scheduler, stop_scheduler
from monitor.process_group import PUBLISH_INTERVAL_S, STALE_AFTER_S, ProbeLeadership
from monitor.urls import mask_url

if TYPE_CHECKING:
    from monitor.pool_monitor import PoolMonitor

PROBE_APPLICATION_NAME = "pool-monitor-probe"

# At most this share of one core goes to publishing (a report every second for a usual pool).
PUBLISH_CPU_SHARE = 0.01

log = logging.getLogger(__name__)


class Background:
    def __init__(self, monitor: PoolMonitor) -> None:
        self._monitor = monitor
        self._probe: ServerProbe | None = None
        self._leadership: ProbeLeadership | None = None
        self._pgbouncer: PgBouncerProbe | None = None
        self._scheduler: Any = None
        self._publish_failed = False
        self._publish_not_before = 0.0

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
            if monitor.group is not None:
                # One prober per group and database; the others read its results.
                self._leadership = ProbeLeadership(
                    monitor.group.directory.parent, mask_url(monitor.probe_url)
                )
            jobs.insert(0, ("server-probe", self._probe_then_sweep, monitor.probe_interval_s))
        if monitor.group is not None:
            jobs.append(("group-publish", self.publish, PUBLISH_INTERVAL_S))
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
        if self._leadership is not None:
            self._leadership.release()  # another worker takes over at its next tick
            self._leadership = None
        self._pgbouncer = None

    def sweep(self) -> None:
        self._monitor.tracker.sweep(self._monitor.server_states())

    def publish(self) -> None:
        """This worker's report for the group, then fold in the reports of exited workers."""
        group = self._monitor.group
        if group is None:
            return
        if time.monotonic() < self._publish_not_before:
            return
        started, cpu = time.monotonic(), time.thread_time()
        try:
            self._monitor.publish()
            group.reap()
        except OSError as exc:
            if not self._publish_failed:  # once per outage, not every second
                log.warning("could not publish to the worker group: %s", exc)
            self._publish_failed = True
        else:
            self._publish_failed = False
        finally:
            # A large pool publishes less often rather than cost more than its share of a core.
            pause = (time.thread_time() - cpu) / PUBLISH_CPU_SHARE
            self._publish_not_before = started + min(pause, STALE_AFTER_S / 3)

    def _probe_then_sweep(self) -> None:
        assert self._probe is not None
        leadership = self._leadership
        if leadership is None:
            self._probe.run_once()
        elif leadership.try_lead():
            self._probe.run_once()
            try:
                leadership.publish(self._monitor.server_health.snapshot())
            except OSError as exc:
                log.warning("could not publish the probe's sample: %s", exc)
        else:
            sample = leadership.read()
            if sample is not None:
                self._monitor.server_health.adopt(sample)
        self.sweep()  # classify new leaks with the freshest server view
