"""Background work of a started monitor: the server probes, the leak sweep and, as one worker of
several, publishing this worker's report; all on one scheduler.

One probe per distinct database URL (the pools of one server share it), one sweep for every
pool; with several workers, one prober per group and database (the others read its sample).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from monitor.instrumentation.attachments import plumbing
from monitor.probes.pgbouncer import PgBouncerProbe
from monitor.probes.runner import ServerProbe
from monitor.probes.scheduler import start_scheduler, stop_scheduler
from monitor.process_group import PUBLISH_INTERVAL_S, STALE_AFTER_S, ProbeLeadership
from monitor.state.server import ServerHealth
from monitor.urls import mask_url
from monitor.watched_pool import WatchedPool

if TYPE_CHECKING:
    from monitor.pool_monitor import PoolMonitor

PROBE_APPLICATION_NAME = "pool-monitor-probe"
PROBE_JOB = "server-probe"

# At most this share of one core goes to publishing (a report every second for a usual pool).
PUBLISH_CPU_SHARE = 0.01

log = logging.getLogger(__name__)


class Background:
    def __init__(self, monitor: PoolMonitor) -> None:
        self._monitor = monitor
        self._probes: dict[str, ServerProbe] = {}  # by job id
        self._leaderships: list[ProbeLeadership] = []
        self._pgbouncer: PgBouncerProbe | None = None
        self._scheduler: Any = None
        self._lock = threading.Lock()
        self._publish_failed = False
        self._publish_not_before = 0.0

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
                plumbing(probe.engine)
                self._probes[job_id] = probe
                leadership = None
                if monitor.group is not None:
                    # One prober per group and database; the others read its results.
                    leadership = ProbeLeadership(
                        monitor.group.directory.parent, mask_url(pools[0].probe_url)
                    )
                    self._leaderships.append(leadership)
                run = self._probe_then_sweep(probe, health, pools, leadership)
                jobs.insert(index, (job_id, run, monitor.probe_interval_s))
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
        for leadership in self._leaderships:
            leadership.release()  # another worker takes over at its next tick
        self._leaderships.clear()
        self._pgbouncer = None

    def sweep(self) -> None:
        for watched in self._monitor.pools:
            self._sweep(watched)

    def _sweep(self, watched: WatchedPool) -> None:
        # The monitor's states: behind PgBouncer the drivers' pids are translated through it.
        watched.tracker.sweep(self._monitor.pool_server_states(watched))

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

    def _probe_then_sweep(
        self,
        probe: ServerProbe,
        health: ServerHealth,
        pools: list[WatchedPool],
        leadership: ProbeLeadership | None,
    ) -> Callable[[], None]:
        def run() -> None:
            if leadership is None:
                probe.run_once()
            elif leadership.try_lead():
                probe.run_once()
                try:
                    leadership.publish(health.snapshot())
                except OSError as exc:
                    log.warning("could not publish the probe's sample: %s", exc)
            else:
                sample = leadership.read()
                if sample is not None:
                    health.adopt(sample)
            for watched in pools:
                self._sweep(watched)  # classify new leaks with the freshest server view

        return run


def _by_server(pools: tuple[WatchedPool, ...]) -> list[tuple[ServerHealth, list[WatchedPool]]]:
    """The pools grouped by the server health they share (one probe each), in pool order."""
    groups: dict[int, tuple[ServerHealth, list[WatchedPool]]] = {}
    for watched in pools:
        groups.setdefault(id(watched.server_health), (watched.server_health, []))[1].append(watched)
    return list(groups.values())
