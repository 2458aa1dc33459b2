"""Formatting for the dashboard: durations, ages, percentages, paths, checkout sites, sparklines.

Pure functions of their arguments (no clock, no I/O): the panel builders decide every string here.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from monitor.state.holders import Holder
from monitor.state.server import Backend
from monitor.state.sites import Frame

NOTHING = "—"
STATUS_LABELS = {"ok": "OK", "warn": "Warning", "fail": "Failing", "unknown": "Unknown"}
_STATUS_RANK = {"ok": 0, "unknown": 1, "warn": 2, "fail": 3}
SPARK_WIDTH = 120
SPARK_HEIGHT = 28


# ---- formatting ------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """Human duration: "0.4 ms", "12 ms", "1.2 s", "2 min 05 s", "1 h 02 min", "3 d 4 h"."""
    if seconds is None or math.isnan(seconds):
        return NOTHING
    if math.isinf(seconds):
        return "∞"
    seconds = max(0.0, seconds)
    if seconds < 0.0001:
        return "< 0.1 ms"
    if seconds < 0.0095:
        return f"{seconds * 1000:.1f}".removesuffix(".0") + " ms"
    if seconds < 0.9995:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    whole = int(seconds + 0.5)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def span(seconds: float) -> str:
    """A configured window, said plainly: "15 min", "1 h 30 min", "45 s"."""
    text = duration(seconds)
    for zero in (" 00 s", " 00 min"):
        text = text.removesuffix(zero)
    return text.removesuffix(".0 s") + " s" if text.endswith(".0 s") else text


def ago(at: float | None, now: float, never: str = "never") -> str:
    """ "3.0 s ago" relative to `now` (both unix times); `never` when there is no instant."""
    if at is None:
        return never
    return f"{duration(now - at)} ago"


def clock_time(at: float) -> str:
    """UTC wall-clock time of a unix instant: the server's and the reader's zones may differ."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(at))


def percent(ratio: float | None) -> str:
    return NOTHING if ratio is None else f"{ratio:.0%}"


def bound_label(bound: float | None, finite_bounds: Sequence[float] = ()) -> str:
    """A histogram bucket bound as an estimate: "≤ 5 ms", or "> 10 s" for the +Inf bucket."""
    if bound is None:
        return NOTHING
    if math.isinf(bound):
        largest = max((b for b in finite_bounds if not math.isinf(b)), default=None)
        return f"> {duration(largest)}" if largest is not None else "unbounded"
    return f"≤ {duration(bound)}"


def short_path(filename: str, cwd: str = "") -> str:
    """A source path as a reader wants it: relative to the working directory or site-packages."""
    if cwd:
        prefix = cwd.rstrip(os.sep) + os.sep
        if filename.startswith(prefix):
            return filename[len(prefix) :]
    for marker in ("site-packages" + os.sep, "dist-packages" + os.sep):
        index = filename.rfind(marker)
        if index >= 0:
            return filename[index + len(marker) :]
    return filename


def quantile(bounds: Sequence[float], cumulative: Sequence[int], q: float) -> float | None:
    """Upper bound of the bucket holding quantile q of cumulative bucket counts (None if empty)."""
    if not cumulative or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    for bound, count in zip(bounds, cumulative, strict=False):
        if count >= rank:
            return bound
    return bounds[-1] if bounds else None


# ---- shared pieces ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteFrame:
    location: str  # "app/routes.py:42"
    function: str
    source: str


@dataclass(frozen=True, slots=True)
class Fact:
    label: str
    value: str


@dataclass(frozen=True, slots=True)
class Sparkline:
    """Inline SVG geometry: `line` for a polyline, `area` for the filled polygon under it."""

    line: str
    area: str
    width: int
    height: int
    title: str


def site_frames(site: Iterable[Frame], cwd: str = "") -> tuple[SiteFrame, ...]:
    return tuple(
        SiteFrame(f"{short_path(f.filename, cwd)}:{f.lineno}", f.function, f.source) for f in site
    )


def site_summary(site: Sequence[SiteFrame]) -> str:
    """The first frame with a real source file: generated code (`<string>`) says nothing."""
    for frame in site:
        if not frame.location.startswith("<"):
            return frame.location
    return site[0].location if site else "site not captured"


def holder_label(holder: Holder | None) -> str:
    if holder is None:
        return NOTHING
    return holder.route if holder.kind == "request" else f"{holder.route} (no request)"


def request_id_label(holder: Holder | None) -> str:
    return (holder.request_id if holder is not None else None) or NOTHING


def worst_status(statuses: Iterable[str]) -> str:
    return max(statuses, key=lambda s: _STATUS_RANK.get(s, 1), default="ok")


def sparkline(
    points: Sequence[tuple[float, float]],
    *,
    window_s: float,
    now: float,
    title: str,
    width: int = SPARK_WIDTH,
    height: int = SPARK_HEIGHT,
) -> Sparkline | None:
    """Points (time, value) placed by age across the window, scaled to the largest value."""
    if len(points) < 2 or window_s <= 0:
        return None
    top = max(value for _, value in points)
    scale = top if top > 0 else 1.0
    pad = 2.0
    coords = []
    for at, value in points:
        x = width * (1.0 - min(max(now - at, 0.0), window_s) / window_s)
        y = height - pad - (max(value, 0.0) / scale) * (height - 2 * pad)
        coords.append(f"{x:.1f},{y:.1f}")
    first_x = coords[0].split(",")[0]
    last_x = coords[-1].split(",")[0]
    line = " ".join(coords)
    area = f"{first_x},{height} {line} {last_x},{height}"
    return Sparkline(line, area, width, height, title)


def pid_text(pid: int | None) -> str:
    return NOTHING if pid is None else str(pid)


def wait_event_text(backend: Backend) -> str:
    if backend.wait_event_type and backend.wait_event:
        return f"{backend.wait_event_type}: {backend.wait_event}"
    return backend.wait_event or backend.wait_event_type or NOTHING
