"""What the monitor costs code that uses the pool directly: a checkout, a statement, and a test
suite run with `pytest --pool-monitor` (pytest-plugin: wall time on/off, goal <= 1.05).

A bare engine and an instrumented one (leak-site capture on) alternate rounds in one process and
the per-round ratio of their time per cycle is judged:
- checkout: `engine.connect()` + `close()` (what every Session does). Goal <= 1.30. The pool
  alone (`engine.pool.connect()` + `close()`) is printed for scale.
- statement: checkout + `SELECT 1` + checkin. Goal <= 1.05. Two server round trips whose latency
  drifts within a second dominate it, so it alternates many short blocks; a second bare engine
  against the first gives the run's noise floor.
All engines hand out one shared DBAPI connection (never used by two at once): with a backend
each, the figure measured the backends' CPU placement (+-15% between two bare engines here).
Instrument (`--instrument callgrind`, checkout): instructions per cycle under valgrind, which do
not swing with the machine: the figure to compare commits by.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, create_engine, make_url, text

from bench.interval import Verdict, judge, judge_count
from bench.served import callgrind_summary
from monitor.pool_monitor import PoolMonitor

URL = os.environ.get("DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test").replace(
    "postgresql://", "postgresql+psycopg2://", 1
)
CHECKOUT_GOAL = 1.30
STATEMENT_GOAL = 1.05


def engine_cycle(engine: Engine) -> None:
    engine.connect().close()


def pool_cycle(engine: Engine) -> None:
    engine.pool.connect().close()


def select_cycle(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def per_call_us(work: Callable[[Engine], None], engine: Engine, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        work(engine)
    return (time.perf_counter() - started) / calls * 1e6


def alternate(
    work: Callable[[Engine], None], bare: Engine, measured: Engine, block: int, rounds: int
) -> tuple[list[float], float, float]:
    """Per-round ratios measured / bare (the order alternates), and the median us of each."""
    for engine in (bare, measured):  # warm up both pools
        per_call_us(work, engine, max(block, 200))
    ratios, bare_us, measured_us = [], [], []
    for round_index in range(rounds):
        order = (bare, measured) if round_index % 2 == 0 else (measured, bare)
        times = {id(engine): per_call_us(work, engine, block) for engine in order}
        bare_us.append(times[id(bare)])
        measured_us.append(times[id(measured)])
        ratios.append(times[id(measured)] / times[id(bare)])
    return ratios, statistics.median(bare_us), statistics.median(measured_us)


class Engines:
    """A bare engine, a monitored one and a second bare one (the control), on one connection."""

    def __init__(self, capture_sites: bool = True) -> None:
        dialect = create_engine(URL).dialect
        connect_args, connect_kwargs = dialect.create_connect_args(make_url(URL))
        self.shared = dialect.connect(*connect_args, **connect_kwargs)
        bare, watched, control = (
            create_engine(URL, pool_size=1, max_overflow=0, creator=lambda: self.shared)
            for _ in range(3)
        )
        self.bare, self.watched, self.control = bare, watched, control
        self.monitor = PoolMonitor(watched, probe=False, capture_sites=capture_sites)

    def close(self) -> None:
        snapshot = self.monitor.pool_snapshot()
        print(f"checkouts tracked: {snapshot.counters.checkouts}, "
              f"listener errors: {snapshot.counters.listener_errors}")  # fmt: skip
        self.monitor.detach()
        for engine in (self.bare, self.watched, self.control):
            engine.dispose()
        self.shared.close()


def checkout(rounds: int = 21, block: int = 4_000) -> list[Verdict]:
    engines = Engines()
    try:
        ratios, bare_us, on_us = alternate(
            engine_cycle, engines.bare, engines.watched, block, rounds
        )
        pool, pool_bare, pool_on = alternate(
            pool_cycle, engines.bare, engines.watched, block, rounds
        )
    finally:
        engines.close()
    result = judge("checkout", [[r] for r in ratios], CHECKOUT_GOAL, at_least=False, digits=3)
    print(f"engine.connect()+close(): bare {bare_us:.2f} us, monitored {on_us:.2f} us, "
          f"ratio {result.figure} over {rounds} alternating rounds of {block}")  # fmt: skip
    print(f"pool.connect()+close() (for scale): bare {pool_bare:.2f} us, monitored "
          f"{pool_on:.2f} us, ratio {statistics.median(pool):.3f}")  # fmt: skip
    return [result]


def statement(rounds: int = 315) -> list[Verdict]:
    engines = Engines()
    try:
        ratios, bare_us, on_us = alternate(select_cycle, engines.bare, engines.watched, 50, rounds)
        noise, _, _ = alternate(select_cycle, engines.bare, engines.control, 50, rounds)
    finally:
        engines.close()
    result = judge("statement", [[r] for r in ratios], STATEMENT_GOAL, at_least=False, digits=3)
    control = judge("statement control", [[r] for r in noise], STATEMENT_GOAL, at_least=False,
                    digits=3)  # fmt: skip
    print(f"checkout+SELECT 1+checkin: bare {bare_us:.1f} us, monitored {on_us:.1f} us, ratio "
          f"{result.figure}; bare vs bare (noise) {control.figure}; {rounds} blocks of 50")  # fmt: skip
    return [result]


# --- instrument: callgrind ------------------------------------------------------------------

CYCLE_MODES = ("bare", "monitored, site capture off", "monitored")


def cycle_program(mode: str, cycles: int, url: str = URL) -> str:
    """A program running `cycles` checkout cycles on an engine (`mode`: bare or monitored)."""
    monitor = {
        "bare": "",
        "monitored, site capture off": "PoolMonitor(engine, probe=False, capture_sites=False)",
        "monitored": "PoolMonitor(engine, probe=False)",
    }[mode]
    return f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from sqlalchemy import create_engine
from monitor.pool_monitor import PoolMonitor
engine = create_engine({url!r}, pool_size=5)
{monitor}
for _ in range({cycles}):
    engine.connect().close()
"""


def cycle_instructions(mode: str, cycles: int, workdir: Path) -> int:
    out = workdir / "callgrind.out"
    script = workdir / "cycle.py"
    script.write_text(cycle_program(mode, cycles))
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, script],
        check=True,
        capture_output=True,
        # A fixed hash seed keeps dict layouts, and so the counts, the same from run to run.
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    return callgrind_summary(out)


def checkout_instructions(few: int = 1_000, many: int = 6_000) -> list[Verdict]:
    """Instructions per checkout cycle: (many - few) cycles, so start-up and imports cancel."""
    per_cycle: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for mode in CYCLE_MODES:
            low = cycle_instructions(mode, few, Path(workdir))
            high = cycle_instructions(mode, many, Path(workdir))
            per_cycle[mode] = (high - low) / (many - few)
    print(f"{'engine.connect() + close()':30} {'instructions':>13} {'ratio':>7}")
    for mode in CYCLE_MODES:
        ratio = per_cycle[mode] / per_cycle["bare"]
        print(f"{mode:30} {per_cycle[mode]:13,.0f} {ratio:7.3f}")
    ratio = per_cycle["monitored"] / per_cycle["bare"]
    # A fixed hash seed: the same code counts the same within a few instructions per cycle.
    return [judge_count("checkout instructions", ratio, CHECKOUT_GOAL, spread=0.005)]


# ---- the pytest plugin: what `pytest --pool-monitor` adds to a suite's wall time --------

PLUGIN_GOAL = 1.05

SUITE_CONFTEST = """
import os

import pytest
from sqlalchemy import create_engine, text

engine = create_engine(os.environ["BENCH_URL"], pool_size=5, max_overflow=5)


@pytest.fixture
def conn():
    with engine.connect() as connection:
        yield connection
"""

SUITE_HEADER = """
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

SUITE_TEST = """

def test_{n}(conn):
    conn.execute(text("SELECT 1"))
    with Session(engine) as session:
        session.execute(text("SELECT {n}"))
"""

SUITE_REQUEST_TEST = """

def test_request_{n}():
    assert client.get("/items/{n}").json() == {{"id": {n}}}
"""


def write_suite(directory: Path, tests: int) -> None:
    (directory / "conftest.py").write_text(SUITE_CONFTEST)
    body = [SUITE_HEADER]
    for n in range(tests):
        body.append(SUITE_REQUEST_TEST.format(n=n) if n % 5 == 0 else SUITE_TEST.format(n=n))
    (directory / "test_bench_suite.py").write_text("".join(body))


def run_suite_once(directory: Path, extra: list[str]) -> float:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    return _timed(command, directory, {**os.environ, "BENCH_URL": URL})


def pytest_plugin(rounds: int = 5, tests: int = 300) -> list[Verdict]:
    """Wall time of a generated suite (a Session and a statement per test, a FastAPI request
    every fifth) without and with `--pool-monitor`, alternating in fresh processes."""
    with tempfile.TemporaryDirectory(prefix="pm-bench-suite-") as tmp:
        directory = Path(tmp)
        write_suite(directory, tests)
        ratios = []
        for _ in range(rounds):  # alternate, so drift of the machine hits both
            off = run_suite_once(directory, [])
            on = run_suite_once(directory, ["--pool-monitor=report"])
            ratios.append(on / off)
            print(f"suite of {tests} tests: off {off:.2f} s, on {on:.2f} s, ratio {on / off:.3f}")
    return [
        judge(
            f"pytest --pool-monitor ({tests} tests)",
            [[ratio] for ratio in ratios],
            PLUGIN_GOAL,
            at_least=False,
            digits=3,
            unit="x",
        )
    ]


SQLALCHEMY_ENGINE_TESTS = (
    "test/engine/test_execute.py",
    "test/engine/test_transaction.py",
    "test/engine/test_reconnect.py",
    "test/engine/test_pool.py",
)
SQLALCHEMY_QUICK = ("test/engine/test_transaction.py",)


def pytest_plugin_on_sqlalchemy(rounds: int, files: tuple[str, ...]) -> list[Verdict]:
    """Wall time of SQLAlchemy's own engine tests (psycopg2, a fresh database on the configured
    server; sources from the installed release's sdist) without and with `--pool-monitor`."""
    from tests.sqlalchemy_suite.compare import own_database, suite_sources

    tree = suite_sources()
    dburi = make_url(URL).set(drivername="postgresql+psycopg2")
    ratios = []
    with own_database(dburi.render_as_string(hide_password=False)) as database:
        # -s: no user site, so SQLAlchemy's conftest runs the installed package, not the sdist's.
        command = [sys.executable, "-s", "-m", "pytest", *files, "-p", "no:cacheprovider", "-q"]
        command.append(f"--dburi={database}")
        env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
        for _ in range(rounds):
            off = _timed(command, tree, env)
            on = _timed([*command, "--pool-monitor=report"], tree, env)
            ratios.append(on / off)
            print(f"SQLAlchemy engine tests: off {off:.2f} s, on {on:.2f} s, ratio {on / off:.3f}")
    name = f"pytest --pool-monitor (SQLAlchemy's {len(files)} engine test file(s))"
    return [judge(name, [[r] for r in ratios], PLUGIN_GOAL, at_least=False, digits=3, unit="x")]


def _timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 1):  # 1: the suite's own failures, the same both ways
        sys.exit(
            f"pytest exited {result.returncode}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return elapsed
