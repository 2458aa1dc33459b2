"""JSON error responses: clients get a clear message, never a traceback or a 500 for a down database."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from monitor.demo.crud import Conflict, NotFound

log = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(sa_exc.TimeoutError, _pool_timeout)
    app.add_exception_handler(sa_exc.OperationalError, _database_unavailable)
    app.add_exception_handler(sa_exc.InterfaceError, _database_unavailable)
    app.add_exception_handler(sa_exc.PendingRollbackError, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's default 422 echoes the rejected input, which may be a secret: keep where and why."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [
        {"loc": e.get("loc", ()), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _conflict(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


async def _pool_timeout(request: Request, exc: Exception) -> JSONResponse:
    log.warning("no database connection free for %s %s", request.method, request.url.path)
    return JSONResponse(
        {"detail": "database busy: no connection became free in time, retry later"},
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The exception text can include the server's message; the log keeps the class only.
    log.warning(
        "database unavailable for %s %s: %s", request.method, request.url.path, type(exc).__name__
    )
    return JSONResponse({"detail": "database unavailable, retry later"}, status_code=503)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)
