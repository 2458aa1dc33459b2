"""Runs SQLAlchemy's own test suite without and with a monitor on every engine; compares outcomes.

`python -m tests.sqlalchemy_suite.compare [--backend NAME ...] [--files PATH ...] [-k EXPR]`
(or `make sqla-suite`). The test sources come from the sdist of the installed SQLAlchemy version
(`pip download`), unpacked into .cache/sqlalchemy-suite/; nothing of SQLAlchemy's is committed.
PostgreSQL backends use SQLA_SUITE_PG_URL, else DATABASE_URL, else postgres@127.0.0.1:5432/test.
Exits 1 when any test's outcome differs, or a monitor listener failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

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
    returncode: int


def backends() -> dict[str, str | None]:
    """Backend name -> --dburi (None: SQLAlchemy's default, in-memory sqlite)."""
    pg = make_url(
        os.environ.get("SQLA_SUITE_PG_URL") or os.environ.get("DATABASE_URL") or DEFAULT_PG
    )
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
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            "sqlalchemy",
            f"sqlalchemy=={release}",
            "-d",
            str(CACHE),
        ],
        check=True,
    )
    archive = next(CACHE.glob(f"[sS][qQ][lL][aA]lchemy-{release}.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")
    return tree


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
    command = [
        python,
        "-s",
        "-m",
        "pytest",
        *files,
        "-p",
        "no:cacheprovider",
        "-q",
        "--tb=short",
        "--maxfail=100000",
        f"--junitxml={report}",
    ]
    if dburi is not None:
        command.append(f"--dburi={dburi}")
    if keyword:
        command += ["-k", keyword]
    if monitored:
        command += ["-p", PLUGIN]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DATABASE_URL", None)
    with log.open("w") as output:
        done = subprocess.run(command, cwd=tree, env=env, stdout=output, stderr=subprocess.STDOUT)
    summary = tuple(
        line
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith(("pool-monitor ", "  pool-monitor"))
    )
    return Run(_outcomes(report), summary, done.returncode)


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


def differences(bare: Run, monitored: Run) -> list[str]:
    lines = []
    for test_id in sorted(set(bare.outcomes) | set(monitored.outcomes)):
        before = bare.outcomes.get(test_id, "absent")
        after = monitored.outcomes.get(test_id, "absent")
        if before != after:
            lines.append(f"  {test_id}: {before} without the monitor, {after} with it")
    return lines


def counts(run: Run) -> str:
    tally = Counter(run.outcomes.values())
    return f"{tally['passed']} passed, {tally['failed']} failed, {tally['skipped']} skipped"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", choices=sorted(backends()))
    parser.add_argument("--files", nargs="+", default=list(FILES))
    parser.add_argument("-k", dest="keyword")
    args = parser.parse_args(argv)
    tree = suite_sources()
    regressions = 0
    for name in args.backend or list(backends()):
        dburi = backends()[name]
        runs = [
            run_suite(tree, dburi, args.files, monitored=flag, label=name, keyword=args.keyword)
            for flag in (False, True)
        ]
        bare, monitored = runs
        changed = differences(bare, monitored)
        failures = [line for line in monitored.summary if "listener failures" in line]
        failed_listeners = any(not line.endswith(": 0") for line in failures) or not failures
        regressions += len(changed) + int(failed_listeners) + int(not bare.outcomes)
        print(f"{name}: without the monitor {counts(bare)}")
        print(f"{name}: with the monitor    {counts(monitored)}")
        for line in monitored.summary:
            print(f"{name}: {line}")
        print(f"{name}: {len(changed)} test(s) with a different outcome", *changed, sep="\n")
        sys.stdout.flush()
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
