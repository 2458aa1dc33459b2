"""Say which privilege a role lacks when PostgreSQL refuses it, instead of "unreachable"."""

from __future__ import annotations

import re

INSUFFICIENT_PRIVILEGE = "42501"
# What full session details need: other roles' state, wait events, transaction ages, queries.
STATS_ROLE = "pg_read_all_stats (or pg_monitor, which includes it)"

_NEEDS = (
    (
        re.compile(r"permission denied for database|CONNECT privilege", re.I),
        "CONNECT on the database",
    ),
    (re.compile(r"permission denied for schema", re.I), "USAGE and CREATE on the schema"),
    (re.compile(r"permission denied for (table|relation|sequence)", re.I), "access to the table"),
    (re.compile(r"must be (superuser|a member)|pg_read_all_stats|pg_monitor", re.I), STATS_ROLE),
)


_NO_SCHEMA = re.compile(r"no schema has been selected to create in", re.I)


def missing_privilege(exc: BaseException) -> str | None:
    """The privilege a refused operation needed, or None when `exc` is no permission error."""
    original = getattr(exc, "orig", None) or exc
    code = getattr(original, "pgcode", None)
    text = str(original)
    if _NO_SCHEMA.search(text):
        # Without USAGE on a schema, search_path skips it: nothing left to create tables in.
        return "USAGE and CREATE on the schema in its search_path"
    if code != INSUFFICIENT_PRIVILEGE and "permission denied" not in text.lower():
        return None
    for pattern, privilege in _NEEDS:
        if pattern.search(text):
            return privilege
    return "a privilege the server names in its message"
