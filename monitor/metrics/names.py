"""Exposed metric names and label values: a contract with the Grafana dashboard and alert rules.

Names are written as Prometheus shows them (counters with `_total`) so they can be grepped.
"""

from __future__ import annotations

from typing import Final

# ---- pool side: OpenTelemetry db.client.connection.* as its Prometheus exporter renders them ---
CONNECTION_COUNT: Final = "db_client_connection_count"
CONNECTION_MAX: Final = "db_client_connection_max"
CONNECTION_IDLE_MAX: Final = "db_client_connection_idle_max"
PENDING_REQUESTS: Final = "db_client_connection_pending_requests"
TIMEOUTS_TOTAL: Final = "db_client_connection_timeouts_total"
WAIT_TIME_SECONDS: Final = "db_client_connection_wait_time_seconds"
USE_TIME_SECONDS: Final = "db_client_connection_use_time_seconds"
CREATE_TIME_SECONDS: Final = "db_client_connection_create_time_seconds"

# ---- pool side: SQLAlchemy extensions ------------------------------------------------------
POOL_OVERFLOW: Final = "sqlalchemy_pool_overflow"
LEAKED_CONNECTIONS: Final = "sqlalchemy_pool_leaked_connections"
LEAKS_TOTAL: Final = "sqlalchemy_pool_leaks_total"
GC_RECLAIMED_TOTAL: Final = "sqlalchemy_pool_gc_reclaimed_total"
INVALIDATIONS_TOTAL: Final = "sqlalchemy_pool_invalidations_total"
CHECKOUTS_TOTAL: Final = "sqlalchemy_pool_checkouts_total"
SLOW_QUERIES_TOTAL: Final = "sqlalchemy_slow_queries_total"
MULTI_CONNECTION_REQUESTS_TOTAL: Final = "sqlalchemy_pool_multi_connection_requests_total"
ACCOUNTING_DRIFT: Final = "sqlalchemy_pool_accounting_drift"
LONG_HOLDS: Final = "sqlalchemy_pool_long_held_connections"
LONG_HOLDS_TOTAL: Final = "sqlalchemy_pool_long_holds_total"
# By the holder's route template (at most 100 routes per pool, then "(other routes)").
LEAKS_BY_ROUTE_TOTAL: Final = "sqlalchemy_pool_leaks_by_route_total"
TIMEOUTS_BY_ROUTE_TOTAL: Final = "sqlalchemy_pool_timeouts_by_route_total"
LISTENER_ERRORS_TOTAL: Final = "pool_monitor_listener_errors_total"
PHANTOM_CONNECTIONS: Final = "pool_monitor_phantom_connections"
ORPHAN_SESSIONS: Final = "pool_monitor_orphan_sessions"

# ---- server side, what the probe sees (no pool label) ----------------------------------------
# Never `pg_*`: those are postgres_exporter's. Every app instance reports the same server facts,
# so aggregate these with `max by`, never `sum`.
SERVER_UP: Final = "pool_monitor_server_up"
SERVER_SESSIONS: Final = "pool_monitor_server_sessions"
SERVER_MAX_TRANSACTION_SECONDS: Final = "pool_monitor_server_max_transaction_seconds"
SERVER_MAX_CONNECTIONS: Final = "pool_monitor_server_max_connections"
SERVER_SUPERUSER_RESERVED_CONNECTIONS: Final = "pool_monitor_server_superuser_reserved_connections"
SERVER_RESERVED_CONNECTIONS: Final = "pool_monitor_server_reserved_connections"
SERVER_BLOCKED_SESSIONS: Final = "pool_monitor_server_blocked_sessions"
SERVER_CONNECTIONS_USED_RATIO: Final = "pool_monitor_server_connections_used_ratio"

# ---- the probe itself ----------------------------------------------------------------------
PROBE_DURATION_SECONDS: Final = "pool_monitor_probe_duration_seconds"
PROBE_ERRORS_TOTAL: Final = "pool_monitor_probe_errors_total"
PROBE_SKIPPED_TOTAL: Final = "pool_monitor_probe_skipped_total"
PROBE_LAST_SUCCESS_TIMESTAMP_SECONDS: Final = "pool_monitor_probe_last_success_timestamp_seconds"
PROBE_HIDDEN_QUERIES: Final = "pool_monitor_probe_hidden_queries"

# ---- labels --------------------------------------------------------------------------------
# OpenTelemetry attributes db.client.connection.pool.name and db.client.connection.state, with
# the dots turned into underscores as OpenTelemetry's Prometheus exporter writes them.
POOL_NAME: Final = "db_client_connection_pool_name"
STATE: Final = "db_client_connection_state"
SERVER_STATE: Final = "state"  # pg_stat_activity.state on the server-side series
CLASS: Final = "class"
ROUTE: Final = "http_route"  # OpenTelemetry's http.route, as its Prometheus exporter renders it
KIND: Final = "kind"
DATNAME: Final = "datname"
APPLICATION_NAME: Final = "application_name"

STATE_USED: Final = "used"
STATE_IDLE: Final = "idle"
INVALIDATION_HARD: Final = "hard"
INVALIDATION_SOFT: Final = "soft"

# ---- PgBouncer, from its admin console when pgbouncer_url is given (labels database, user) --
PGBOUNCER_UP: Final = "pool_monitor_pgbouncer_up"
PGBOUNCER_CLIENTS: Final = "pool_monitor_pgbouncer_clients"  # state: active, waiting
PGBOUNCER_SERVERS: Final = "pool_monitor_pgbouncer_servers"  # state: active, idle, used, ...
PGBOUNCER_MAX_WAIT_SECONDS: Final = "pool_monitor_pgbouncer_max_wait_seconds"
PGBOUNCER_POOL_INFO: Final = "pool_monitor_pgbouncer_pool_info"  # pool_mode label, value 1
PGBOUNCER_TRANSACTIONS_TOTAL: Final = "pool_monitor_pgbouncer_transactions_total"
PGBOUNCER_QUERIES_TOTAL: Final = "pool_monitor_pgbouncer_queries_total"
PGBOUNCER_WAIT_SECONDS_TOTAL: Final = "pool_monitor_pgbouncer_client_wait_seconds_total"
PGBOUNCER_MAX_CLIENT_CONN: Final = "pool_monitor_pgbouncer_max_client_conn"
PGBOUNCER_PROBE_ERRORS_TOTAL: Final = "pool_monitor_pgbouncer_probe_errors_total"
DATABASE: Final = "database"
USER: Final = "user"
POOL_MODE: Final = "pool_mode"
PGBOUNCER_STATE: Final = "state"  # PgBouncer's own words: active, waiting, idle, used, ...
