"""Connection-health monitor for FastAPI + SQLAlchemy + PostgreSQL."""
