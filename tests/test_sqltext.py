"""SQL text hygiene: no literal survives normalize(), fingerprints group by shape."""

from __future__ import annotations

import random

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from monitor import sqltext
from monitor.sqltext import fingerprint, normalize

SECRET = "s3cr3t-Tok3n"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM users WHERE email = 'a@b.c'", "SELECT * FROM users WHERE email = $1"),
        (f"ALTER ROLE app PASSWORD '{SECRET}'", "ALTER ROLE app PASSWORD $1"),
        (f"CREATE USER bob WITH PASSWORD '{SECRET}'", "CREATE USER bob WITH PASSWORD $1"),
        ("SELECT 42, 3.14, 1e10, 0x1F, 1_000", "SELECT $1, $2, $3, $4, $5"),
        ("SELECT * FROM t WHERE id IN (1, 2, 3)", "SELECT * FROM t WHERE id IN ($1 /*, ... */)"),
        ("SELECT * FROM t WHERE id IN ('a','b')", "SELECT * FROM t WHERE id IN ($1 /*, ... */)"),
        ("SELECT * FROM t WHERE id IN (-1, +2)", "SELECT * FROM t WHERE id IN ($1 /*, ... */)"),
        (f"SELECT $${SECRET}$$, $tag${SECRET}$tag$", "SELECT $1, $2"),
        (f"SELECT E'{SECRET}\\'', U&'{SECRET}', B'101', X'FF'", "SELECT $1, $2, $3, $4"),
        ("SELECT '2024-01-01'::date, interval '1 day'", "SELECT $1::date, interval $2"),
        ("SELECT  a,\n\t b   FROM   t", "SELECT a, b FROM t"),
        (f"SELECT 1 /* {SECRET} */ -- {SECRET}\n", "SELECT $1"),
        ("SELECT a FROM t WHERE b = $1 AND c = 7", "SELECT a FROM t WHERE b = $1 AND c = $2"),
        (
            "SELECT * FROM t WHERE id = %(id_1)s AND n = %s",
            "SELECT * FROM t WHERE id = $1 AND n = $2",
        ),
        (
            "SELECT x FROM t WHERE y IN (%(y_1)s, %(y_2)s)",
            "SELECT x FROM t WHERE y IN ($1 /*, ... */)",
        ),
        ('SELECT "Odd  Name" FROM "T"', 'SELECT "Odd  Name" FROM "T"'),
        ("SELECT 'é', ü FROM t", "SELECT $1, ü FROM t"),
        ("", ""),
    ],
)
def test_normalize_replaces_every_literal(sql: str, expected: str) -> None:
    assert normalize(sql) == expected


@pytest.mark.parametrize(
    ("truncated", "expected"),
    [
        (f"UPDATE users SET token = '{SECRET}", "UPDATE users SET token = …"),
        (f"SELECT $${SECRET}", "SELECT …"),
        (f"SELECT $q${SECRET}$q", "SELECT …"),
        (f"SELECT 1 /* {SECRET}", "SELECT $1 …"),
        (f'SELECT "{SECRET}', "SELECT …"),
        (f"SELECT E'{SECRET}\\", "SELECT …"),
        ("SELECT 1.5e", "SELECT …"),  # cut inside a number: the lexer rejects the rest
        (f"INSERT INTO t VALUES ('a', '{SECRET}", "INSERT INTO t VALUES ($1, …"),
    ],
)
def test_truncated_text_is_cut_before_the_unreadable_token(truncated: str, expected: str) -> None:
    result = normalize(truncated)
    assert result == expected
    assert SECRET not in result


def test_text_cut_at_pg_stat_activity_limit_keeps_no_literal() -> None:
    # pg_stat_activity keeps 1023 bytes: cut a long statement at every position.
    statement = "INSERT INTO audit (actor, token, note, amount) VALUES " + ", ".join(
        f"('user{i}', '{SECRET}{i}', $$note {SECRET}$$, {i}.5)" for i in range(30)
    )
    for cut in range(0, len(statement), 7):
        result = normalize(statement[:cut])
        assert SECRET not in result, cut
        assert "user" not in result, cut


@pytest.mark.parametrize(
    "garbage",
    ["garbage !! ??", "\x00\x01\x02", "\ud800 'x'", "'", '"', "$", "$$", "/*", "--", "))((", "<b>"],
)
def test_garbage_never_raises_and_leaks_nothing(garbage: str) -> None:
    result = normalize(garbage)
    assert isinstance(result, str)
    assert "'x'" not in result
    assert len(fingerprint(garbage)) == 16


def test_random_bytes_never_raise() -> None:
    rng = random.Random(7)
    alphabet = "SELECT'\"$;()/*-, é\\\n\t0123456789abc%"
    for _ in range(500):
        sql = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert isinstance(normalize(sql), str)
        assert len(fingerprint(sql)) == 16


def test_nul_does_not_hide_the_rest_of_the_text() -> None:
    assert normalize(f"SELECT a\x00, '{SECRET}' FROM t") == "SELECT a , $1 FROM t"


def test_fingerprint_groups_by_shape() -> None:
    a = fingerprint("SELECT * FROM t WHERE id = 1 AND name IN ('a', 'b')")
    b = fingerprint("select *  from t where id = 99 and name in ('c')")
    c = fingerprint("SELECT * FROM t WHERE id = %(id_1)s AND name IN (%(n_1)s, %(n_2)s, %(n_3)s)")
    other = fingerprint("SELECT * FROM u WHERE id = 1")
    assert a == b == c
    assert other != a
    assert len(a) == 16
    assert all(ch in "0123456789abcdef" for ch in a)


def test_fingerprint_of_unparseable_text_is_stable_and_literal_blind() -> None:
    first = fingerprint(f"UPDATE t SET token = 'abc' WHERE id = 5 AND x = '{SECRET}")
    second = fingerprint("UPDATE t SET token = 'zzz' WHERE id = 6 AND x = 'other")
    assert first == second
    assert first != fingerprint("UPDATE t SET token = 'abc' WHERE name = 5 AND x = 'y")


def test_long_text_is_cut_and_still_safe() -> None:
    statement = "INSERT INTO t VALUES " + ", ".join(f"({i}, '{SECRET}')" for i in range(5_000))
    result = normalize(statement)
    key = fingerprint(statement)
    assert result.endswith("…")
    assert len(result) <= sqltext.MAX_SCAN_CHARS
    assert SECRET not in result
    assert len(key) == 16


def test_repeated_calls_are_cache_hits() -> None:
    sqltext.cache_clear()
    statement = "SELECT " + ", ".join(f"c{i}" for i in range(100)) + " FROM t WHERE a = 'x'"
    for _ in range(2_000):
        normalize(statement)
        fingerprint(statement)
    info = sqltext._normalize_cached.cache_info()
    assert info.hits >= 1_999
    assert info.maxsize == sqltext.CACHE_SIZE


# ---- standard_conforming_strings=off: a backslash may escape the closing quote ------------------

SCS_OFF_CASES = [
    # The example: read with standard strings, "password hunter2" would be SQL words.
    (
        "UPDATE notes SET body = 'customer\\'s new password hunter2' WHERE id = 7",
        "UPDATE notes SET body = $1 …",
    ),
    ("SELECT 'a', 'b\\\\c', 'hunter2'", "SELECT $1, $2 …"),
    ("SELECT N'x\\' hunter2 '", "SELECT N$1 …"),  # N'' as written: N then the string
    # E'' strings and dollar quoting read the same whatever the setting: nothing is cut.
    ("SELECT E'x\\'hunter2', 1", "SELECT $1, $2"),
    ("SELECT $$x\\' hunter2$$, 1", "SELECT $1, $2"),
    ("SELECT 'no backslash', 1", "SELECT $1, $2"),
]


@pytest.mark.parametrize(("sql", "expected"), SCS_OFF_CASES)
def test_a_backslash_in_a_plain_string_shows_the_shape_only(sql: str, expected: str) -> None:
    assert normalize(sql) == expected
    assert "hunter2" not in normalize(sql)


def test_nothing_leaks_from_a_session_without_standard_strings(database_url: URL) -> None:
    """The text as pg_stat_activity shows it, from a session with the setting off."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as writer, engine.connect() as reader:
            writer.exec_driver_sql("SET standard_conforming_strings = off")
            writer.exec_driver_sql("SET escape_string_warning = off")
            pid = writer.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            writer.exec_driver_sql(
                "SELECT 'customer\\'s ... password hunter2' AS note, pg_sleep(0)"
            )
            query = reader.execute(
                text("SELECT query FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).scalar_one()
    finally:
        engine.dispose()
    assert "hunter2" in query  # the server kept the text as sent
    shown = normalize(query)
    assert "hunter2" not in shown and "password" not in shown
    assert shown == "SELECT $1 …"
