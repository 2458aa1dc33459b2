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
    app.add_exception_handler(sa_exc.DBAPIError, _database_error)
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


# SQLSTATE classes that say the server, not the statement, is the problem: connection exception,
# insufficient resources, operator intervention (shutdown, crash), system error.
_UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "58"})


def is_database_unavailable(exc: sa_exc.DBAPIError) -> bool:
    """A failure of the database or the link to it (retry later), not of the statement (a bug).

    A connection lost mid-statement does not always surface as OperationalError: psycopg2 can
    raise a bare DatabaseError with no SQLSTATE when the server vanishes between two messages.
    """
    if exc.connection_invalidated or isinstance(
        exc, sa_exc.OperationalError | sa_exc.InterfaceError
    ):
        return True
    sqlstate = getattr(exc.orig, "pgcode", None)
    if isinstance(sqlstate, str):
        return sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    # No verdict from the server: the client lost it, unless the driver refused the statement.
    return not isinstance(exc, sa_exc.ProgrammingError | sa_exc.DataError | sa_exc.IntegrityError)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, sa_exc.DBAPIError) and is_database_unavailable(exc):
        return await _database_unavailable(request, exc)
    return await _unexpected(request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)
