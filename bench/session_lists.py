"""Snapshot and dashboard-poll size with many server sessions (the lists are capped at 50).

Starts its own embedded PostgreSQL with a higher max_connections, opens SESSIONS idle sessions
with the app's application_name (orphans, the worst case: each would be a listed row), and
reports the JSON snapshot's and the combined poll's size and the CPU time per poll.

    .venv/bin/python -m bench.session_lists          # BENCH_SESSIONS=400 by default
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from monitor.app import create_app
from monitor.embedded import EmbeddedPostgres
from monitor.settings import Settings

SESSIONS = int(os.environ.get("BENCH_SESSIONS", "400"))
POLLS = 20


def main() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="pm-bench-", dir="/tmp"))
    server = EmbeddedPostgres(data_dir)
    url = server.start()
    try:
        admin = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"ALTER SYSTEM SET max_connections = {SESSIONS + 50}"))
        admin.dispose()
        server.stop("fast")
        server.restart()
        settings = Settings(database_url=url.render_as_string(hide_password=False))
        sessions_engine = create_engine(
            url,
            poolclass=NullPool,
            connect_args={"application_name": settings.application_name},
        )
        held = [sessions_engine.connect() for _ in range(SESSIONS)]
        try:
            with TestClient(create_app(settings)) as client:
                deadline = time.monotonic() + 60
                data: dict[str, object] = {}
                while time.monotonic() < deadline:
                    data = client.get("/monitor/api/snapshot").json()
                    lists = data.get("session_lists", {})
                    if (
                        isinstance(lists, dict)
                        and lists.get("orphans", {}).get("total", 0) >= SESSIONS
                    ):
                        break
                    time.sleep(0.5)
                snapshot = client.get("/monitor/api/snapshot")
                cpu_before = time.process_time()
                sizes = [len(client.get("/monitor/partials").content) for _ in range(POLLS)]
                cpu_ms = (time.process_time() - cpu_before) * 1000 / POLLS
                print(
                    f"{SESSIONS} sessions: snapshot {len(snapshot.content) / 1024:.1f} KiB, "
                    f"poll {max(sizes) / 1024:.1f} KiB, {cpu_ms:.1f} ms CPU per poll "
                    f"(client and server in this process); lists: {data.get('session_lists')}"
                )
        finally:
            for conn in held:
                conn.close()
            sessions_engine.dispose()
    finally:
        server.close()  # stops the server: this process started it
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
