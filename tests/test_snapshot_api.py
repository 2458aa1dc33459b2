"""`/monitor/api/snapshot` on the running app: held connections joined to the server by pid."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient


def test_snapshot_joins_held_connection_to_its_backend(client: TestClient) -> None:
    monitor = client.app.state.pool_monitor  # type: ignore[attr-defined]
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        conn.exec_driver_sql("BEGIN")
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        deadline = time.monotonic() + 5
        held: list[dict] = []
        while time.monotonic() < deadline:
            data = client.get("/monitor/api/snapshot").json()
            held = [h for h in data["held"] if h["server"] is not None]
            if held and data["pool"]["leaks"]:
                break
            time.sleep(0.2)
        assert held, "the probe never joined the held connection"
        assert held[0]["connection"]["pid"] == pid
        assert held[0]["server"]["state"] == "idle in transaction"
        assert data["pool"]["leaks"][0]["leak_class"] == "idle_in_transaction"
        assert {rule["rule"] for rule in data["rules"]} >= {"Always close sessions", "Use the pool"}
        conn.exec_driver_sql("ROLLBACK")
    assert monitor.tracker.checked_out == 0
