"""One engine and one session factory per app, and the session-per-request dependency."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.demo.models import Base
from monitor.privileges import missing_privilege
from monitor.settings import Settings
from monitor.socket_deadline import SocketDeadline
from monitor.urls import hide_dsn_in_pool_logs

log = logging.getLogger(__name__)


def make_engine(settings: Settings, url: URL) -> Engine:
    """The app's only engine: pool sizing, recycle and pre-ping from settings, parameters hidden."""
    # The URL's query parameters go to the driver directly: kept out of engine.url, they cannot
    # show in repr(engine) or in error messages (SQLAlchemy masks only the password).
    libpq_params = {
        key: value if isinstance(value, str) else value[-1] for key, value in url.query.items()
    }
    engine = create_engine(
        url.set(query={}),
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout_s,
        pool_recycle=int(settings.pool_recycle_s),
        pool_pre_ping=settings.pool_pre_ping,
        pool_logging_name="app",
        echo=settings.sql_echo,
        # Logged statements never carry parameter values (they may be secrets).
        hide_parameters=True,
        connect_args={
            **libpq_params,
            "application_name": settings.application_name,
            "connect_timeout": max(1, round(settings.pool_timeout_s)),
        },
    )
    hide_dsn_in_pool_logs(engine)
    if settings.pool_pre_ping:
        bound_pre_ping(engine, min(settings.pool_timeout_s, 5.0))
    return engine


def bound_pre_ping(engine: Engine, timeout_s: float) -> None:
    """Give the pre-ping a client-side deadline.

    A server that stops answering (a hung host, a half-open network path) makes the ping wait
    for ever: statement_timeout is the server's to enforce. When the deadline passes, the ping's
    socket is shut down, the ping fails, and SQLAlchemy replaces the connection as it does for
    any failed ping (and a new connection is bounded by connect_timeout).
    """
    dialect: Any = engine.dialect
    do_ping = dialect.do_ping

    def _do_ping(dbapi_connection: Any) -> bool:
        deadline = SocketDeadline(timeout_s)
        deadline.attach(dbapi_connection)
        try:
            result: bool = do_ping(dbapi_connection)
        finally:
            deadline.close()
        if deadline.fired:
            log.warning("pre-ping got no answer in %.1f s: the connection is replaced", timeout_s)
        return result

    dialect.do_ping = _do_ping


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Commits are explicit (no autocommit) and flushes happen when we ask for them."""
    return sessionmaker(bind=engine, autoflush=False, expire_on_commit=False)


class SchemaGate:
    """Creates the demo tables once the database is reachable (it may be down at startup)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._ready = threading.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def ensure(self, *, quiet: bool = False) -> None:
        if self._ready.is_set():
            return
        with self._lock:
            if self._ready.is_set():
                return
            try:
                Base.metadata.create_all(self._engine)
            except Exception as exc:
                if not quiet:
                    raise
                privilege = missing_privilege(exc)
                if privilege is not None:
                    log.warning(
                        "permission denied creating the demo tables at startup: the app's role "
                        "needs %s (%s); will retry",
                        privilege,
                        _first_line(exc),
                    )
                else:
                    log.warning(
                        "database not reachable at startup (%s); will retry", type(exc).__name__
                    )
                return
            self._ready.set()


def _first_line(exc: Exception) -> str:
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return (lines[0] if lines else type(original).__name__)[:200]


def get_session(request: Request) -> Iterator[Session]:
    """One session per request: rolled back on error, always closed."""
    request.app.state.schema.ensure()
    factory: sessionmaker[Session] = request.app.state.session_factory
    session = factory()
    try:
        yield session
    except Exception:
        _end(session, session.rollback)
        raise
    finally:
        _end(session, session.close)


def _end(session: Session, end: Callable[[], None]) -> None:
    """Roll back or close; if the connection died meanwhile, drop it instead of raising.

    Closing can run after the response has started: an error there would cut the client's
    connection without an answer, and the original error (if any) must win anyway.
    """
    try:
        end()
    except SQLAlchemyError as exc:
        log.warning("session cleanup failed (%s); invalidating its connection", type(exc).__name__)
        try:
            session.invalidate()
        except SQLAlchemyError:
            log.warning("invalidating the session's connection failed as well")


SessionDep = Annotated[Session, Depends(get_session)]
