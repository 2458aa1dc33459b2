"""The wheel carries the dashboard's templates and static assets, and the console script."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_ships_templates_static_and_entry_point(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=280,
    )
    (wheel,) = tmp_path.glob("pool_monitor-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "monitor/templates/dashboard.html" in names
    assert "monitor/static/vendor/htmx-2.0.11.min.js" in names
    assert "monitor/pool_monitor.py" in names and "monitor/state/tracker.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pool-monitor = monitor.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
