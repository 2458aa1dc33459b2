"""Scheduler: jobs run at once and repeatedly, never overlap, skipped ticks are reported."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from monitor.probes.scheduler import Job, start_scheduler, stop_scheduler
from tests.servers import wait_for

Starter = Callable[..., BackgroundScheduler]


@pytest.fixture
def start() -> Iterator[Starter]:
    """start_scheduler that stops every scheduler it started, whatever the test did."""
    started: list[BackgroundScheduler] = []

    def start_one(jobs: list[Job], **kwargs: object) -> BackgroundScheduler:
        scheduler = start_scheduler(jobs, **kwargs)  # type: ignore[arg-type]
        started.append(scheduler)
        return scheduler

    yield start_one
    for scheduler in started:
        stop_scheduler(scheduler)


def test_job_runs_at_once_then_repeatedly(start: Starter) -> None:
    runs: list[float] = []
    fast_runs: list[float] = []
    scheduler = start(
        [
            ("tick", lambda: runs.append(time.monotonic()), 60.0),
            ("fast", lambda: fast_runs.append(time.monotonic()), 0.2),
        ]
    )
    assert scheduler.running
    # First run at once: its interval (60 s) is twice this bounded wait.
    assert wait_for(lambda: len(runs) >= 1, 30.0)
    assert wait_for(lambda: len(fast_runs) >= 4, 30.0)  # then repeatedly
    job = scheduler.get_job("fast")
    assert job is not None
    assert job.max_instances == 1
    assert job.coalesce is True
    assert job.misfire_grace_time == 1


def test_slow_job_never_overlaps_and_skips_are_reported(start: Starter) -> None:
    lock = threading.Lock()
    running = 0
    most_running = 0
    runs = 0
    skipped: list[str] = []

    def slow_job() -> None:
        nonlocal running, most_running, runs
        with lock:
            running += 1
            most_running = max(most_running, running)
        time.sleep(0.35)
        with lock:
            running -= 1
            runs += 1

    start([("slow", slow_job, 0.1)], on_skip=skipped.append)
    assert wait_for(lambda: runs >= 3, 30.0)
    assert most_running == 1
    assert skipped and set(skipped) == {"slow"}


def test_stop_does_not_wait_for_a_running_job(start: Starter) -> None:
    release = threading.Event()
    entered = threading.Event()

    def blocking_job() -> None:
        entered.set()
        release.wait(5)

    scheduler = start([("block", blocking_job, 10.0)])
    try:
        assert entered.wait(30)
        stop_scheduler(scheduler)  # returns while the job still waits for `release`
        assert not scheduler.running
        assert not release.is_set()
        stop_scheduler(scheduler)  # idempotent
    finally:
        release.set()


def test_nothing_runs_after_stop(start: Starter) -> None:
    runs: list[int] = []
    scheduler = start([("tick", lambda: runs.append(1), 0.05)])
    assert wait_for(lambda: len(runs) >= 1, 30.0)
    stop_scheduler(scheduler)
    time.sleep(0.1)  # a run already handed to the executor may still finish
    count = len(runs)
    time.sleep(0.3)
    assert len(runs) == count


def test_invalid_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        start_scheduler([("bad", lambda: None, 0)])
