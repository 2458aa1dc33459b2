"""The benchmarks still run against the current code (tiny rounds; figures are not checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.conftest import url_string

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("script", "expected"), [("scrape.py", "median full scrape"), ("checkout.py", "(b)")]
)
def test_benchmark_runs(script: str, expected: str, database_url: URL) -> None:
    env = {**os.environ, "BENCH_ROUNDS": "3", "DATABASE_URL": url_string(database_url)}
    result = subprocess.run(
        [sys.executable, str(BENCH / script)], env=env, capture_output=True, text=True, timeout=220
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout
