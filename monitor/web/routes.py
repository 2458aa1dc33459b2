"""Monitor HTTP routes; they only read snapshots."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(prefix="/monitor", tags=["monitor"])


@router.get("/api/snapshot")
def snapshot(request: Request) -> Any:
    """The whole monitor snapshot as JSON: pool, held connections joined to the server, rules."""
    monitor = getattr(request.app.state, "pool_monitor", None)
    if monitor is None:
        return JSONResponse({"detail": "monitor not started"}, status_code=503)
    return monitor.snapshot()
