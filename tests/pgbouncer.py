"""A real PgBouncer for tests: its own process on a free port, in front of the server under test."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2
from sqlalchemy.engine import URL

from tests.servers import free_port, wait_for


class PgBouncer:
    """One PgBouncer process (not daemonized) with trust auth and an admin console for `user`."""

    def __init__(
        self, upstream: URL, *, pool_mode: str, default_pool_size: int = 5, executable: str
    ) -> None:
        self.upstream = upstream
        self.pool_mode = pool_mode
        self.port = free_port()
        self.user = upstream.username or "postgres"
        self.database = upstream.database or "postgres"
        self._dir = Path(tempfile.mkdtemp(prefix="pm-bouncer-"))
        host = upstream.query.get("host")
        server_host = host if isinstance(host, str) else (upstream.host or "127.0.0.1")
        server_port = upstream.port or 5432
        userlist = self._dir / "userlist.txt"
        userlist.write_text(f'"{self.user}" ""\n')
        self.config = self._dir / "pgbouncer.ini"
        self.config.write_text(
            "[databases]\n"
            f"* = host={server_host} port={server_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {userlist}\n"
            f"admin_users = {self.user}\n"
            f"stats_users = {self.user}\n"
            f"pool_mode = {pool_mode}\n"
            f"default_pool_size = {default_pool_size}\n"
            "max_client_conn = 200\n"
            # Sessions the monitor itself opens stay short; a test never waits on these.
            "server_idle_timeout = 60\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        os.chmod(self._dir, 0o755)
        for path in (userlist, self.config):
            os.chmod(path, 0o644)
        command = [executable, str(self.config)]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            command = ["runuser", "-u", _run_as(server_host), "--", *command]
        self._log = self._dir / "pgbouncer.log"
        with self._log.open("wb") as log:  # a file, not a pipe: a full pipe would stall it
            self._process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=log, cwd=self._dir
            )
        if not wait_for(lambda: self._process.poll() is not None or self._answers(), 10) or (
            self._process.poll() is not None
        ):
            stderr = self._log.read_text(errors="replace")
            self.close()
            raise AssertionError(f"PgBouncer did not start on port {self.port}: {stderr[-500:]}")

    def url(self, driver: str = "postgresql+psycopg2") -> URL:
        """The server under test through this PgBouncer."""
        return URL.create(
            driver, username=self.user, host="127.0.0.1", port=self.port, database=self.database
        )

    @property
    def admin_url(self) -> str:
        """The admin console (`pgbouncer` database) as a libpq URL."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/pgbouncer"

    def admin(self, command: str) -> list[dict[str, object]]:
        """Run one admin-console command (`SHOW POOLS`, ...) and return its rows."""
        connection = psycopg2.connect(self.admin_url, connect_timeout=5)
        connection.autocommit = True  # the console accepts no BEGIN
        try:
            with connection.cursor() as cursor:
                cursor.execute(command)
                names = [column.name for column in cursor.description or ()]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            connection.close()

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _answers(self) -> bool:
        with contextlib.suppress(psycopg2.Error):
            self.admin("SHOW VERSION")
            return True
        return False


def _run_as(server_host: str) -> str:
    """The postgres user, or the owner of a private socket directory (the embedded server's)."""
    if server_host.startswith("/"):
        return pwd.getpwuid(os.stat(server_host).st_uid).pw_name
    return "postgres"
