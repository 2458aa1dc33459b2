"""Checkout sites point at the app's code in any app: a library is recognised by where it is
installed (a site-packages directory), not by a list of package names."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL

from monitor import PoolMonitor

# An ORM helper of the kind SQLModel or a repository layer provides: the app calls it, and it
# is the one that takes the connection.
LIBRARY_SOURCE = textwrap.dedent(
    """
    from sqlalchemy import text

    def run_in_session(engine, callback):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            return callback()
    """
)


@pytest.fixture
def engine(database_url: URL) -> Iterator[Engine]:
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


@pytest.fixture
def install_module(tmp_path: Path) -> Iterator[Callable[[str, str, str], object]]:
    """Write `name.py` into `directory` (under tmp), put it on sys.path and import it."""
    added: list[str] = []
    modules: list[str] = []

    def install(directory: str, name: str, source: str) -> object:
        where = tmp_path / directory
        where.mkdir(parents=True, exist_ok=True)
        (where / f"{name}.py").write_text(source)
        if str(where) not in sys.path:
            sys.path.insert(0, str(where))
            added.append(str(where))
        importlib.invalidate_caches()
        modules.append(name)
        return importlib.import_module(name)

    yield install
    for path in added:
        sys.path.remove(path)
    for name in modules:
        sys.modules.pop(name, None)


def _site_of_checkout(monitor: PoolMonitor) -> list[str]:
    (held,) = [c for c in monitor.pool_snapshot().connections if c.checked_out]
    return [frame.filename for frame in held.site]


def test_a_library_in_site_packages_is_skipped(
    engine: Engine, install_module: Callable[[str, str, str], object]
) -> None:
    orm: object = install_module("venv/lib/site-packages", "fake_orm_sessions", LIBRARY_SOURCE)
    monitor = PoolMonitor(engine, probe=False)
    try:
        site = orm.run_in_session(engine, lambda: _site_of_checkout(monitor))  # type: ignore[attr-defined]
        assert site and site[0] == __file__, site
    finally:
        monitor.detach()


def test_library_prefixes_add_a_vendored_directory(
    engine: Engine, install_module: Callable[[str, str, str], object], tmp_path: Path
) -> None:
    orm: object = install_module("vendor", "fake_vendored_orm", LIBRARY_SOURCE)
    plain = PoolMonitor(engine, probe=False)
    try:
        # Not installed anywhere Python installs packages: app code by default...
        site = orm.run_in_session(engine, lambda: _site_of_checkout(plain))  # type: ignore[attr-defined]
        assert site[0].endswith("fake_vendored_orm.py")
    finally:
        plain.detach()
    told = PoolMonitor(engine, probe=False, library_prefixes=[str(tmp_path / "vendor")])
    try:
        # ...and a library once named as one.
        site = orm.run_in_session(engine, lambda: _site_of_checkout(told))  # type: ignore[attr-defined]
        assert site[0] == __file__, site
    finally:
        told.detach()


def test_app_prefixes_claim_an_app_installed_into_site_packages(
    engine: Engine, install_module: Callable[[str, str, str], object], tmp_path: Path
) -> None:
    site_dir = tmp_path / "image/lib/site-packages"
    orm: object = install_module(str(site_dir), "fake_orm_for_app", LIBRARY_SOURCE)
    app_source = textwrap.dedent(
        """
        import fake_orm_for_app

        def handler(engine, look):
            return fake_orm_for_app.run_in_session(engine, look)
        """
    )
    app_module: object = install_module(str(site_dir), "fake_installed_app", app_source)
    assert orm is not None
    monitor = PoolMonitor(
        engine, probe=False, app_prefixes=[str(site_dir / "fake_installed_app.py")]
    )
    try:
        site = app_module.handler(engine, lambda: _site_of_checkout(monitor))  # type: ignore[attr-defined]
        assert site[0].endswith("fake_installed_app.py"), site
    finally:
        monitor.detach()


def test_frames_of_the_standard_library_and_the_monitor_are_skipped(engine: Engine) -> None:
    import concurrent.futures

    monitor = PoolMonitor(engine, probe=False)

    def take() -> list[str]:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            return _site_of_checkout(monitor)

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            site = pool.submit(take).result(timeout=30)
        assert site[0] == __file__
        assert not [f for f in site if "concurrent" in f or "/monitor/" in f]
    finally:
        monitor.detach()
