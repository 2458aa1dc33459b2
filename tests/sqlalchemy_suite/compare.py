"""Runs SQLAlchemy's own test suite without and with a monitor on every engine; compares outcomes.

`python -m tests.sqlalchemy_suite.compare [--backend NAME ...] [--files PATH ...] [-k EXPR]`
(or `make sqla-suite`). The test sources come from the sdist of the installed SQLAlchemy version
(`pip download`), unpacked into .cache/sqlalchemy-suite/; nothing of SQLAlchemy's is committed.
PostgreSQL backends use the server of SQLA_SUITE_PG_URL, else DATABASE_URL, else
postgres@127.0.0.1:5432; each run gets a database of its own (with the schemas SQLAlchemy's suite
expects), dropped afterwards. A test whose outcome differs runs again alone, both ways, to tell a
flaky test from a change. Exits 1 when an outcome differs again or a monitor listener failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import uuid
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "sqlalchemy-suite"
PLUGIN = "tests.sqlalchemy_suite.plugin"
FILES = (
    "test/engine/test_pool.py",
    "test/engine/test_reconnect.py",
    "test/engine/test_execute.py",
    "test/engine/test_transaction.py",
    "test/ext/asyncio/",
)
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class Run:
    """One pytest run's outcome per test id, and the plugin's summary lines (monitored runs)."""

    outcomes: dict[str, str]
    summary: tuple[str, ...]


def backends() -> dict[str, str | None]:
    """Backend name -> --dburi (None: SQLAlchemy's default, in-memory sqlite)."""
    raw = os.environ.get("SQLA_SUITE_PG_URL") or os.environ.get("DATABASE_URL") or DEFAULT_PG
    pg = make_url(raw)
    return {
        "sqlite": None,
        "psycopg2": pg.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False),
        "asyncpg": pg.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False),
    }


def suite_sources(python: str = sys.executable) -> Path:
    """The unpacked sdist of the installed SQLAlchemy (downloaded once into the cache)."""
    release = version("sqlalchemy")
    tree = CACHE / f"sqlalchemy-{release}"
    if (tree / "test" / "conftest.py").is_file():
        return tree
    CACHE.mkdir(parents=True, exist_ok=True)
    # --no-binary for SQLAlchemy alone: its build dependencies (Cython) still come as wheels.
    download = ["download", "--quiet", "--no-deps", "--no-binary", "sqlalchemy"]
    subprocess.run(
        [python, "-m", "pip", *download, f"sqlalchemy=={release}", "-d", str(CACHE)], check=True
    )
    archive = next(CACHE.glob(f"[sS][qQ][lL][aA]lchemy-{release}.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")
    return tree


@contextmanager
def own_database(dburi: str | None) -> Iterator[str | None]:
    """A fresh PostgreSQL database for one run (the same start for both), dropped after it."""
    if dburi is None:
        yield None
        return
    url = make_url(dburi)
    name = f"sqla_suite_{uuid.uuid4().hex[:10]}"
    sync_url = url.set(drivername="postgresql+psycopg2")
    admin = create_engine(sync_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        schemas = create_engine(sync_url.set(database=name))
        with schemas.begin() as conn:
            for schema in ("test_schema", "test_schema_2"):
                conn.execute(text(f"CREATE SCHEMA {schema}"))
        schemas.dispose()
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run_suite(
    tree: Path,
    dburi: str | None,
    files: list[str],
    *,
    monitored: bool,
    label: str,
    keyword: str | None = None,
    python: str = sys.executable,
) -> Run:
    report = CACHE / f"{label}-{'monitored' if monitored else 'bare'}.xml"
    log = report.with_suffix(".log")
    # -s: no user site, so SQLAlchemy's conftest runs the installed package, not the sdist's lib/
    command = [python, "-s", "-m", "pytest", *files, "-p", "no:cacheprovider", "-q"]
    command += ["--tb=short", "--maxfail=100000", f"--junitxml={report}"]
    if keyword:
        command += ["-k", keyword]
    if monitored:
        command += ["-p", PLUGIN]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DATABASE_URL", None)
    report.unlink(missing_ok=True)
    with own_database(dburi) as database, log.open("w") as output:
        if database is not None:
            command.append(f"--dburi={database}")
        subprocess.run(command, cwd=tree, env=env, stdout=output, stderr=subprocess.STDOUT)
    return Run(_outcomes(report), _plugin_summary(log.read_text(errors="replace")))


def _plugin_summary(output: str) -> tuple[str, ...]:
    """The plugin's lines: what it attached to, and its listener failures (indented below)."""
    summary: list[str] = []
    for line in output.splitlines():
        if line.startswith("pool-monitor ") or (summary and line.startswith("  ")):
            summary.append(line)
        elif summary:
            break
    return tuple(summary)


def _outcomes(report: Path) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    if not report.is_file():
        return outcomes
    for case in ElementTree.parse(report).iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        outcomes[test_id] = outcome
    return outcomes


def differing(bare: Run, monitored: Run) -> list[str]:
    every = set(bare.outcomes) | set(monitored.outcomes)
    return sorted(t for t in every if bare.outcomes.get(t) != monitored.outcomes.get(t))


def node_id(tree: Path, test_id: str) -> str:
    """`test.engine.test_pool.QueuePoolTest::x` -> `test/engine/test_pool.py::QueuePoolTest::x`."""
    dotted, name = test_id.split("::", 1)
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = Path(*parts[:cut]).with_suffix(".py")
        if (tree / module).is_file():
            return "::".join([str(module), *parts[cut:], name])
    return test_id


def confirm(tree: Path, dburi: str | None, label: str, test_ids: list[str]) -> list[str]:
    """Runs the differing tests again alone, both ways: those whose outcomes differ again."""
    if not test_ids:
        return []
    nodes = [node_id(tree, test_id) for test_id in test_ids]
    bare, monitored = (
        run_suite(tree, dburi, nodes, monitored=flag, label=f"{label}-again")
        for flag in (False, True)
    )
    return [test_id for test_id in differing(bare, monitored) if test_id in test_ids]


def counts(run: Run) -> str:
    tally = Counter(run.outcomes.values())
    return f"{tally['passed']} passed, {tally['failed']} failed, {tally['skipped']} skipped"


def compare(tree: Path, name: str, files: list[str], keyword: str | None) -> int:
    """Prints one backend's comparison; returns how many problems it found."""
    dburi = backends()[name]
    bare, monitored = (
        run_suite(tree, dburi, files, monitored=flag, label=name, keyword=keyword)
        for flag in (False, True)
    )
    changed = differing(bare, monitored)
    confirmed = confirm(tree, dburi, name, changed)
    listener_lines = [line for line in monitored.summary if "listener failures" in line]
    listeners_failed = not listener_lines or not listener_lines[0].endswith(": 0")
    print(f"{name}: without the monitor {counts(bare)}")
    print(f"{name}: with the monitor    {counts(monitored)}")
    for line in monitored.summary:
        print(f"{name}: {line}")
    print(f"{name}: {len(changed)} test(s) with a different outcome, {len(confirmed)} again alone")
    for test_id in changed:
        before = bare.outcomes.get(test_id, "absent")
        after = monitored.outcomes.get(test_id, "absent")
        verdict = "differs again alone" if test_id in confirmed else "same alone: flaky"
        print(f"  {test_id}: {before} without the monitor, {after} with it ({verdict})")
    sys.stdout.flush()
    return len(confirmed) + int(listeners_failed) + int(not bare.outcomes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", action="append", choices=sorted(backends()))
    parser.add_argument("--files", nargs="+", default=list(FILES))
    parser.add_argument("-k", dest="keyword")
    args = parser.parse_args(argv)
    tree = suite_sources()
    problems = sum(
        compare(tree, name, args.files, args.keyword) for name in args.backend or list(backends())
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
