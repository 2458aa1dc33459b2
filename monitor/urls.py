"""Database URL helpers: masking for display and driver normalisation."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url


def mask_url(url: str | URL) -> str:
    """The URL with its password masked and its query string dropped (it may hold secrets too)."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except Exception:
        return "<unparseable database URL>"
    return parsed.set(query={}).render_as_string(hide_password=True)


def sync_psycopg2_url(url: str | URL) -> URL:
    """The same database through psycopg2, whatever driver the app uses (probe, sync tools)."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.set(drivername="postgresql+psycopg2")


def app_url(raw: str) -> URL:
    """DATABASE_URL as the demo app uses it: a bare `postgresql://` means psycopg2 (SQLAlchemy 2.1
    would pick psycopg 3, which is not a dependency)."""
    parsed = make_url(raw.replace("postgres://", "postgresql://", 1))
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed
