"""The group directory on a real filesystem: publish, read, reap, and the prober's lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.process_group import GroupMember, ProbeLeadership, group_directory, prune_groups
from monitor.state.group import summary
from monitor.state.records import PoolSnapshot, PoolStats, to_dict
from tests.state.conftest import FakeClock
from tests.state.test_group import STATS, worker
from tests.state.test_view import health


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def member(tmp_path: Path, pid: int, clock: FakeClock, alive: set[int]) -> GroupMember:
    return GroupMember(tmp_path, "app", pid=pid, clock=clock, alive=lambda p: p in alive)


def take(_clock: FakeClock, pid: int, cycles: int) -> tuple[PoolSnapshot, PoolStats]:
    tracker_clock = FakeClock()  # its own: the group's clock stands still while it works
    return worker(tracker_clock, pid, held=1, cycles=cycles, at=tracker_clock.now).pool, STATS


def test_workers_see_each_other_and_a_dead_one_retires(tmp_path: Path, clock: FakeClock) -> None:
    alive = {1, 2, 3}
    one, two, three = (member(tmp_path, pid, clock, alive) for pid in (1, 2, 3))
    for m, cycles in ((one, 1), (two, 2), (three, 3)):
        m.publish(lambda m=m, c=cycles: m.report(*take(clock, m.pid, c)))
    own = one.publish(lambda: one.report(*take(clock, 1, 1)))
    pool, stats, info = one.combine(own)
    assert info.workers == (1, 2, 3) and stats.max_connections == 15
    total = pool.counters.checkouts
    assert total == 3 + 6  # three cycles on top of one held checkout per worker
    assert {c.worker for c in pool.connections if c.checked_out} == {1, 2, 3}
    # A scrape reads the others' summaries: the same counts, no connections of theirs.
    light, light_stats, _ = one.combine(own, detail=False)
    assert light.counters == pool.counters and light_stats == stats
    assert light.checked_out == pool.checked_out and len(light.leaks) == len(pool.leaks) == 3
    assert {c.worker for c in light.connections} == {1}
    assert one.path.stat().st_size < one.detail_path.stat().st_size
    assert json.loads(one.path.read_text()) == to_dict(summary(own))

    alive.discard(3)  # killed: its file stays until a live worker reaps it
    assert two.reap() == 1
    assert not three.path.exists() and not three.detail_path.exists()
    pool, _stats, info = one.combine(one.publish(lambda: one.report(*take(clock, 1, 1))))
    assert info.workers == (1, 2) and info.retired_workers == 1
    assert pool.counters.checkouts == total  # its counts stay in the group's totals

    two.leave()  # a clean exit retires at once
    pool, _stats, info = one.combine(one.publish(lambda: one.report(*take(clock, 1, 1))))
    assert info.workers == (1,) and pool.counters.checkouts == total


def test_unreadable_or_other_version_reports_are_skipped(tmp_path: Path, clock: FakeClock) -> None:
    one = member(tmp_path, 1, clock, {1, 8, 9})
    (one.directory / "worker-8-1.json").write_text("{not json")
    (one.directory / "worker-9-1.json").write_text(json.dumps({"schema": 999}))
    _pool, _stats, info = one.combine(one.publish(lambda: one.report(*take(clock, 1, 1))))
    assert info.workers == (1,)


def test_one_prober_and_takeover_when_it_dies(tmp_path: Path) -> None:
    # The lock holder is another process: the kernel frees its lock when it dies.
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "leading"
    mine = ProbeLeadership(tmp_path, "postgresql://u:***@db/app")
    try:
        assert mine.try_lead() is False
        assert mine.read() is not None  # the leader's sample, read by the follower
        holder.kill()
        holder.wait(10)
        assert mine.try_lead() is True and mine.leading
        mine.publish(health(()))
        assert mine.read() == health(())
    finally:
        mine.release()
        if holder.poll() is None:
            holder.kill()


_HOLD_LOCK = """
import sys, time
from pathlib import Path

import pytest
from monitor.process_group import ProbeLeadership
from tests.state.test_view import health
leader = ProbeLeadership(Path(sys.argv[1]), "postgresql://u:***@db/app")
assert leader.try_lead()
leader.publish(health(()))
print("leading", flush=True)
time.sleep(60)
"""


def test_group_directory_only_for_workers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if "GROUP_DIR" not in k and "MULTIPROC" not in k}
    # A plain process is its own monitor: no directory, nothing published.
    code = "from monitor.process_group import group_directory as g; print(g())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "None"
    env["MONITOR_GROUP_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(tmp_path)
    assert group_directory() is None or "MONITOR_GROUP_DIR" in os.environ


def test_groups_of_gone_supervisors_are_pruned(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    gone = tmp_path / f"group-{dead.pid}-1"
    recent = tmp_path / f"group-{dead.pid}-2"
    mine = tmp_path / f"group-{os.getpid()}-1"
    for path in (gone, recent, mine):
        (path / "app").mkdir(parents=True)
    os.utime(gone, (1e9, 1e9))
    os.utime(mine, (1e9, 1e9))
    prune_groups(tmp_path)
    assert not gone.exists()
    assert recent.exists() and mine.exists()  # just made, or its supervisor still runs
