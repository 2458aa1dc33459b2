"""SQLAlchemy and ASGI adapters that write into the pure model; they never raise into the app."""
