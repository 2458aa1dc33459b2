"""The worker processes of one server as one monitor: a shared directory where each worker
publishes its snapshot, the exited workers' totals, and the lock that elects the one prober.

Plain JSON files written atomically (temporary file, then rename); no worker ever waits for
another: a reader takes what is there, a reaper or a would-be prober that finds the lock taken
tries again at its next tick.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitor.state.codec import DecodeError, from_dict, to_plain
from monitor.state.group import (
    SCHEMA_VERSION,
    GroupInfo,
    RetiredTotals,
    WorkerReport,
    merge_reports,
    retire,
    worker_key,
)
from monitor.state.records import PoolSnapshot, PoolStats, to_dict
from monitor.state.server import ServerHealthSnapshot

log = logging.getLogger(__name__)

GROUP_DIR_ENV = "MONITOR_GROUP_DIR"
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
PUBLISH_INTERVAL_S = 1.0
STALE_AFTER_S = 10.0  # a live worker silent this long is counted but not shown
REAP_AFTER_S = 120.0  # ... and this long, retired even if its pid exists (reused, or hung)
RETIRED_FILE = "retired.json"
_WORKER_FILE = re.compile(r"^worker-(\d+)-(\d+)\.json$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def group_directory() -> Path | None:
    """The group's shared directory, or None for a process that is not one worker of several.

    `MONITOR_GROUP_DIR` names it; else a subdirectory of `PROMETHEUS_MULTIPROC_DIR`; else one
    derived from the supervisor (uvicorn's or gunicorn's master) that started this worker.
    """
    explicit = os.environ.get(GROUP_DIR_ENV)
    if explicit:
        return Path(explicit)
    multiproc = os.environ.get(MULTIPROC_DIR_ENV)
    if multiproc:
        return Path(multiproc) / "pool-monitor"
    supervisor = supervisor_pid()
    if supervisor is None:
        return None
    started = _process_start_ticks(supervisor)
    name = f"group-{supervisor}" + (f"-{started}" if started is not None else "")
    root = Path(tempfile.gettempdir()) / f"pool-monitor-{os.getuid()}"
    try:
        # Private to this user: reports name routes and show (normalised) SQL.
        root.mkdir(mode=0o700, exist_ok=True)
        if root.is_symlink() or root.stat().st_uid != os.getuid():
            log.warning("%s is not this user's own directory; workers are not combined", root)
            return None
        prune_groups(root)
    except OSError as exc:
        log.warning("no worker group directory under %s: %s", root, exc)
        return None
    return root / name


def prune_groups(root: Path, *, older_than_s: float = 600.0) -> None:
    """Remove the directories of groups whose supervisor is gone (left by earlier runs)."""
    now = time.time()
    for path in root.glob("group-*"):
        match = re.match(r"^group-(\d+)", path.name)
        try:
            gone = match is not None and not pid_alive(int(match.group(1)))
            if gone and now - path.stat().st_mtime > older_than_s:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def supervisor_pid() -> int | None:
    """The master process when this is a worker of uvicorn (`--workers`) or gunicorn."""
    if "gunicorn.arbiter" in sys.modules:  # gunicorn forks its workers from the arbiter
        return os.getppid()
    # uvicorn's supervisor spawns each worker through multiprocessing, into uvicorn._subprocess.
    if multiprocessing.parent_process() is not None:
        target = getattr(multiprocessing.current_process(), "_target", None)
        if getattr(target, "__module__", None) == "uvicorn._subprocess":
            return os.getppid()
    return None


def _process_start_ticks(pid: int) -> int | None:
    """When `pid` started (Linux clock ticks): a reused supervisor pid makes another group."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def channel_name(text: str) -> str:
    """A file-name-safe, collision-resistant name for a pool or a database."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{_UNSAFE.sub('_', text)[:40]}-{digest}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def write_atomically(path: Path, data: Any) -> None:
    """Readers see the old file or the new one, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False)  # the C encoder
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> Any:
    with path.open() as file:
        return json.load(file)


class GroupMember:
    """One worker's pool in the group directory: publishes its report, reads everyone's."""

    def __init__(
        self,
        directory: Path,
        pool_name: str,
        *,
        pid: int | None = None,
        clock: Callable[[], float] = time.time,
        alive: Callable[[int], bool] = pid_alive,
        stale_after_s: float = STALE_AFTER_S,
        reap_after_s: float = REAP_AFTER_S,
    ) -> None:
        self.directory = directory / channel_name(pool_name)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid() if pid is None else pid
        self._clock = clock
        self._alive = alive
        self.started_at = clock()
        self.stale_after_s = stale_after_s
        self.reap_after_s = reap_after_s
        self.key = worker_key(self.pid, self.started_at)
        self.path = self.directory / f"worker-{self.key}.json"  # the summary
        self.detail_path = self.directory / f"detail-{self.key}.json"
        self._retired_path = self.directory / RETIRED_FILE
        self._lock_path = self.directory / "reap.lock"
        # One publish at a time: a newer report must never be overwritten by an older one.
        self._publish_lock = threading.Lock()
        self._left = False
        self.last_published: WorkerReport | None = None

    def report(
        self, pool: PoolSnapshot, stats: PoolStats, phantoms: int = 0, orphans: int = 0
    ) -> WorkerReport:
        return WorkerReport(
            SCHEMA_VERSION, self.pid, self.started_at, self._clock(), pool, stats,
            phantoms, orphans,
        )  # fmt: skip

    def publish(self, take: Callable[[], WorkerReport]) -> WorkerReport:
        """Write the report `take` makes: whole for dashboards, as a summary for scrapes."""
        with self._publish_lock:
            report = take()
            if not self._left:
                # The detail first: a reader that finds the summary finds the detail too.
                data = to_plain(report)
                write_atomically(self.detail_path, data)
                write_atomically(self.path, _summary_data(data))
                self.last_published = report
            return report

    def combine(
        self, own: WorkerReport, *, detail: bool = True
    ) -> tuple[PoolSnapshot, PoolStats, GroupInfo]:
        """The group's view: `own` (fresh, this worker's) and every other worker's report (their
        summaries unless `detail`); this worker's counters as last published (`merge_reports`)."""
        others = self._read_reports(detail)
        retired = self._read_retired()
        # Read after the reports: a worker reaped meanwhile is in `retired.reaped` and skipped.
        return merge_reports(
            [own, *others],
            retired,
            now=self._clock(),
            stale_after_s=self.stale_after_s,
            published=self.last_published,
        )

    def reap(self) -> int:
        """Fold the reports of exited workers into the retired totals; returns how many."""
        try:
            lock = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return 0
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0  # another worker is reaping
            return self._reap_locked()
        finally:
            os.close(lock)  # closing releases the lock

    def leave(self) -> None:
        """A clean exit: fold this worker's last report into the retired totals now."""
        with self._publish_lock:
            self._left = True
        lock = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # held by a reaper for milliseconds at most
            self._reap_locked(only=self.path)
        finally:
            os.close(lock)

    # ---- internals ---------------------------------------------------------------------------

    def _reap_locked(self, only: Path | None = None) -> int:
        now = self._clock()
        gone: list[tuple[Path, WorkerReport | None]] = []
        for path in [only] if only is not None else self.directory.glob("worker-*.json"):
            match = _WORKER_FILE.match(path.name)
            if match is None or (only is None and path == self.path):
                continue
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if only is None and self._alive(int(match.group(1))) and age < self.reap_after_s:
                continue
            gone.append((path, self._load_report(path)))
        if not gone:
            return 0
        totals = self._read_retired()
        for _path, report in gone:
            if report is not None:
                totals = retire(totals, report, now)
        # The totals first, then the files: a reader in between skips them by their key.
        write_atomically(self._retired_path, to_dict(totals))
        for path, _report in gone:
            for stale in (path, path.with_name("detail-" + path.name.removeprefix("worker-"))):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        return len(gone)

    def _read_reports(self, detail: bool) -> list[WorkerReport]:
        reports = []
        for path in sorted(self.directory.glob("worker-*.json")):
            if path == self.path or _WORKER_FILE.match(path.name) is None:
                continue
            if detail:
                path = path.with_name("detail-" + path.name.removeprefix("worker-"))
            report = self._load_report(path)
            if report is not None:
                reports.append(report)
        return reports

    def _load_report(self, path: Path) -> WorkerReport | None:
        try:
            data = _read_json(path)
            if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
                return None  # another version's format: its worker shows nothing here
            return from_dict(WorkerReport, data)
        except (OSError, ValueError, DecodeError):
            return None

    def _read_retired(self) -> RetiredTotals:
        try:
            return from_dict(RetiredTotals, _read_json(self._retired_path))
        except FileNotFoundError:
            return RetiredTotals()
        except (OSError, ValueError, DecodeError):
            log.warning("unreadable %s; the group's retired totals restart", self._retired_path)
            return RetiredTotals()


def _summary_data(data: dict[str, Any]) -> dict[str, Any]:
    """The plain data of `summary(report)` made from the report's (encoded once, not twice)."""
    pool = dict(data["pool"])
    for key in _LISTS:
        pool[key] = []
    pool["leaks"] = [{**leak, "site": []} for leak in pool["leaks"]]
    return {**data, "pool": pool}


_LISTS = (
    "connections", "resolved_leaks", "gc_reclaims", "timeouts", "slow_queries",
    "multi_connection_requests", "events", "multi_pool_requests",
)  # fmt: skip


class ProbeLeadership:
    """One prober per group and database: whoever holds the lock file probes and publishes."""

    def __init__(self, directory: Path, database: str) -> None:
        channel = channel_name(database)
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_path = directory / f"probe-{channel}.lock"
        self.sample_path = directory / f"probe-{channel}.json"
        self._fd: int | None = None

    @property
    def leading(self) -> bool:
        return self._fd is not None

    def try_lead(self) -> bool:
        """True when this worker holds (or just took) the lock; never waits."""
        if self._fd is not None:
            return True
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd  # the kernel frees it when this process dies, however it dies
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def publish(self, health: ServerHealthSnapshot) -> None:
        write_atomically(self.sample_path, to_dict(health))

    def read(self) -> ServerHealthSnapshot | None:
        try:
            return from_dict(ServerHealthSnapshot, _read_json(self.sample_path))
        except (OSError, ValueError, DecodeError):
            return None
