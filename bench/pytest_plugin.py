"""What `pytest --pool-monitor` adds to the wall time of a test suite, measured side by side.

Writes a suite of TESTS tests (each opens a Session, runs a statement and a FastAPI request
through TestClient every fifth test, with a function fixture that checks out a connection) and
runs it with pytest alternately without and with `--pool-monitor=report`, ROUNDS times each, in
fresh processes. Prints the median wall time of each and their ratio. Goal: <= 1.05.
Run: `.venv/bin/python bench/pytest_plugin.py` (DATABASE_URL or the local PostgreSQL).
Env: BENCH_ROUNDS (default 5), BENCH_TESTS (default 300), BENCH_SUITE=DIR to time an existing
suite directory instead (e.g. SQLAlchemy's test/engine with its own options in BENCH_ARGS).
"""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

URL = os.environ.get("DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test").replace(
    "postgresql://", "postgresql+psycopg2://", 1
)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
TESTS = int(os.environ.get("BENCH_TESTS", "300"))
GOAL = 1.05

CONFTEST = """
import os

import pytest
from sqlalchemy import create_engine, text

engine = create_engine(os.environ["BENCH_URL"], pool_size=5, max_overflow=5)


@pytest.fixture
def conn():
    with engine.connect() as connection:
        yield connection
"""

TESTS_HEADER = """
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from conftest import engine

app = FastAPI()


@app.get("/items/{item_id}")
def read_item(item_id: int):
    with Session(engine) as session:
        return {"id": session.execute(text("SELECT :id"), {"id": item_id}).scalar_one()}


client = TestClient(app)
"""

TEST_BODY = """

def test_{n}(conn):
    conn.execute(text("SELECT 1"))
    with Session(engine) as session:
        session.execute(text("SELECT {n}"))
"""

REQUEST_TEST = """

def test_request_{n}():
    assert client.get("/items/{n}").json() == {{"id": {n}}}
"""


def write_suite(directory: Path) -> None:
    (directory / "conftest.py").write_text(CONFTEST)
    body = [TESTS_HEADER]
    for n in range(TESTS):
        body.append(REQUEST_TEST.format(n=n) if n % 5 == 0 else TEST_BODY.format(n=n))
    (directory / "test_bench_suite.py").write_text("".join(body))


def run_once(directory: Path, extra: list[str]) -> float:
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    args += shlex.split(os.environ.get("BENCH_ARGS", ""))
    started = time.perf_counter()
    result = subprocess.run(
        args,
        cwd=directory,
        env={**os.environ, "BENCH_URL": URL},
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 1):  # 1: the suite's own failures, the same both ways
        sys.exit(
            f"pytest exited {result.returncode}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="pm-bench-suite-") as tmp:
        directory = Path(os.environ.get("BENCH_SUITE", tmp))
        if "BENCH_SUITE" not in os.environ:
            write_suite(directory)
        print(f"suite: {directory} ({TESTS if 'BENCH_SUITE' not in os.environ else '?'} tests)")
        off: list[float] = []
        on: list[float] = []
        for _ in range(ROUNDS):  # alternate, so drift of the machine hits both
            off.append(run_once(directory, []))
            on.append(run_once(directory, ["--pool-monitor=report"]))
        off_s, on_s = statistics.median(off), statistics.median(on)
        ratio = on_s / off_s
        pairs = sorted(b / a for a, b in zip(off, on, strict=True))
        print(f"wall time, median of {ROUNDS}: off {off_s:.2f} s, on {on_s:.2f} s")
        print(f"ratio on/off: {ratio:.3f} (pairs {pairs[0]:.3f}..{pairs[-1]:.3f}), goal <= {GOAL}")
        print(
            "verdict:",
            "met" if pairs[-1] <= GOAL else "missed" if pairs[0] > GOAL else "not resolved",
        )


if __name__ == "__main__":
    main()
