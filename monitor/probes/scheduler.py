"""Periodic jobs on an APScheduler background thread: never overlapping, never piling up."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)

# APScheduler logs every run of every job at INFO (about 2.5 lines a second here), and its
# executors log under their own names: quiet unless the user set a level on them.
QUIET_LOGGERS = ("apscheduler", __name__)


def quiet_scheduler_logs() -> None:
    """WARNING for the scheduler's loggers the user left unset; the root logger is untouched."""
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


Job = tuple[str, Callable[[], None], float]  # job id, function, interval in seconds


def start_scheduler(
    jobs: Sequence[Job], *, on_skip: Callable[[str], None] | None = None
) -> BackgroundScheduler:
    """Start a daemon scheduler running each job now and then every interval.

    A tick that finds the job still running (or comes too late) is dropped and reported to
    `on_skip` with the job id, so a slow database never queues probes behind each other.
    """
    quiet_scheduler_logs()
    scheduler = BackgroundScheduler(daemon=True, timezone=UTC, logger=log)
    if on_skip is not None:

        def report_skip(event: JobEvent) -> None:
            try:
                on_skip(event.job_id)
            except Exception:
                log.exception("on_skip failed for job %s", event.job_id)

        scheduler.add_listener(report_skip, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
    first_run_at = datetime.now(UTC)
    for job_id, function, interval_s in jobs:
        if interval_s <= 0:
            raise ValueError(f"interval of job {job_id!r} must be positive")
        options: dict[str, Any] = {
            "id": job_id,
            "name": job_id,
            "seconds": interval_s,
            "max_instances": 1,
            "coalesce": True,
            # APScheduler wants whole seconds here; a tick later than this is dropped.
            "misfire_grace_time": max(1, round(interval_s)),
            "next_run_time": first_run_at,
            "replace_existing": True,
        }
        scheduler.add_job(function, "interval", **options)
    scheduler.start()
    return scheduler


def stop_scheduler(scheduler: BackgroundScheduler) -> None:
    """Stop scheduling without waiting for a running job (each job bounds its own time)."""
    if scheduler.running:
        scheduler.shutdown(wait=False)
