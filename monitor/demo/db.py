"""One engine and one session factory per app, and the session-per-request dependency."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from monitor.demo.models import Base
from monitor.settings import Settings

log = logging.getLogger(__name__)


def make_engine(settings: Settings, url: URL) -> Engine:
    """The app's only engine: pool sizing, recycle and pre-ping from settings, parameters hidden."""
    return create_engine(
        url,
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
            "application_name": settings.application_name,
            "connect_timeout": max(1, round(settings.pool_timeout_s)),
        },
    )


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
                log.warning(
                    "database not reachable at startup (%s); will retry", type(exc).__name__
                )
                return
            self._ready.set()


def get_session(request: Request) -> Iterator[Session]:
    """One session per request: rolled back on error, always closed."""
    request.app.state.schema.ensure()
    factory: sessionmaker[Session] = request.app.state.session_factory
    session = factory()
    try:
        yield session
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
