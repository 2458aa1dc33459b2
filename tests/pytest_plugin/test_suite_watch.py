"""The watch behind the plugin, driven by hand: what it leaves alone and what it keeps open."""

from __future__ import annotations

import gc

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.pool import NullPool

from monitor.instrumentation import pools_seen
from monitor.instrumentation.attachments import plumbing
from monitor.pool_monitor import PoolMonitor
from monitor.suite_watch import HELD_AFTER_TEST, Owner, SuiteWatch


def test_a_watch_installed_over_another_gives_its_hook_back() -> None:
    before = DefaultDialect.__dict__.get("engine_created")
    inner = SuiteWatch()
    inner.install()
    assert DefaultDialect.__dict__.get("engine_created") is not before
    inner.uninstall()
    assert DefaultDialect.__dict__.get("engine_created") is before


def test_the_monitors_own_engines_are_left_alone(watch: SuiteWatch, database_url: URL) -> None:
    app_engine = create_engine(database_url, pool_size=1, max_overflow=0)
    probe_engine = create_engine(database_url, poolclass=NullPool)
    try:
        assert len(watch.snapshots()) == 2
        plumbing(probe_engine)
        assert len(watch.snapshots()) == 1
        monitor = PoolMonitor(probe_engine, probe=False)  # not followed either
        assert len(watch.snapshots()) == 1
        monitor.detach()
        with probe_engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            assert watch.test_ended(Owner("test", "t::plumbing", "function", "")) == []
    finally:
        app_engine.dispose()
        probe_engine.dispose()


def test_a_watched_pool_counts_as_if_the_watch_were_not_there(
    watch: SuiteWatch, database_url: URL, pools_counted: bool
) -> None:
    # The app's "One engine per app" counts live pools that connected since its monitor came.
    engine = create_engine(database_url)
    try:
        assert engine.pool not in pools_seen._pools  # never connected: not a pool in use
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert (engine.pool in pools_seen._pools) is pools_counted
        assert pools_seen._installed is pools_counted
        monitor = PoolMonitor(engine, probe=False)  # the app's own: its pool counts
        assert engine.pool in pools_seen._pools
        monitor.detach()
    finally:
        engine.dispose()


def test_a_probe_goes_with_the_last_engine_of_its_url(watch: SuiteWatch, database_url: URL) -> None:
    first = create_engine(database_url.update_query_dict({"options": "-csearch_path=a"}))
    conn = first.connect()
    (finding,) = watch.test_ended(Owner("test", "t::first", "function", ""))
    assert finding.kind == HELD_AFTER_TEST and finding.leak_class is not None
    assert len(watch._probes) == 1
    conn.close()
    first.dispose()
    del first, conn
    gc.collect()  # SQLAlchemy's own reference cycles keep a dropped engine until then

    second = create_engine(database_url.update_query_dict({"options": "-csearch_path=b"}))
    try:
        with second.connect():
            watch.test_ended(Owner("test", "t::second", "function", ""))
            # One probe, the second engine's: the first one's connection is closed.
            assert [probe.engine.url.query["options"] for probe in watch._probes.values()] == [
                "-csearch_path=b"
            ]
    finally:
        second.dispose()
