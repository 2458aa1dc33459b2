"""Which database errors mean 'unavailable, retry later' (503) and which are bugs (500)."""

from __future__ import annotations

import psycopg2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from monitor.errors import install_error_handlers, is_database_unavailable


def _error_of(database_url: URL, sql: str) -> sa_exc.DBAPIError:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn, pytest.raises(sa_exc.DBAPIError) as raised:
            conn.execute(text(sql))
        return raised.value
    finally:
        engine.dispose()


def test_statement_errors_reported_by_the_server_are_not_unavailability(
    database_url: URL,
) -> None:
    assert not is_database_unavailable(_error_of(database_url, "SELECT * FROM no_such_table"))
    assert not is_database_unavailable(_error_of(database_url, "SELECT 1/0"))


def test_operator_intervention_is_unavailability(database_url: URL) -> None:
    # SQLSTATE 57014: the statement was cancelled by the server's statement_timeout
    error = _error_of(database_url, "SET statement_timeout = '10ms'; SELECT pg_sleep(1)")
    assert error.orig.pgcode == "57014"
    assert is_database_unavailable(error)


def test_a_connection_lost_without_sqlstate_is_unavailability() -> None:
    # What psycopg2 raises when the server vanishes between two protocol messages.
    lost = psycopg2.DatabaseError("error with status PGRES_TUPLES_OK and no message from the libpq")
    assert is_database_unavailable(sa_exc.DatabaseError("INSERT ...", {}, lost))
    refused = psycopg2.ProgrammingError("can't adapt type 'object'")
    assert not is_database_unavailable(sa_exc.ProgrammingError("INSERT ...", {}, refused))


def test_handlers_answer_503_for_a_lost_server_and_500_for_a_bug() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/lost")
    def lost() -> None:
        raise sa_exc.DatabaseError("INSERT", {}, psycopg2.DatabaseError("no message from libpq"))

    @app.get("/bug")
    def bug() -> None:
        raise sa_exc.ProgrammingError("SELECT", {}, psycopg2.ProgrammingError("syntax"))

    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/lost").json() == {"detail": "database unavailable, retry later"}
    assert client.get("/lost").status_code == 503
    response = client.get("/bug")
    assert response.status_code == 500 and response.json() == {"detail": "internal error"}
