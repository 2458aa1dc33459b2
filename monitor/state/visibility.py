"""What the probe's role cannot see: without pg_read_all_stats (or pg_monitor) other roles'
sessions show no state, wait event, transaction age or query, so counts built on them are low."""

from __future__ import annotations

from monitor.state.server import ServerHealthSnapshot

NEEDED_ROLE = "pg_read_all_stats (or pg_monitor, which includes it)"
# Everything computed from a session's state, wait event or transaction start.
INCOMPLETE_WITHOUT_STATS = (
    "server sessions by state",
    "idle-in-transaction sessions",
    "blocked and blocking sessions",
    "longest transaction",
    "query text",
)


def visibility(health: ServerHealthSnapshot) -> dict[str, object]:
    """How complete the server-side counts are, and the role that would complete them."""
    hidden = health.hidden_queries
    return {
        "hidden_sessions": hidden,
        "complete": hidden == 0,
        "incomplete_counts": list(INCOMPLETE_WITHOUT_STATS) if hidden else [],
        "needs": NEEDED_ROLE if hidden else None,
    }


def incomplete_note(health: ServerHealthSnapshot) -> str | None:
    """One sentence for the dashboard, None when the probe sees every session."""
    if not health.hidden_queries:
        return None
    return (
        f"{health.hidden_queries} session(s) of other roles are hidden from the probe's role "
        f"(no state, wait event, transaction age or query): {', '.join(INCOMPLETE_WITHOUT_STATS)} "
        f"count only the sessions it can see. Grant the role {NEEDED_ROLE}."
    )
