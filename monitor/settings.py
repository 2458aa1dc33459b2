"""Configuration from the environment (pydantic-settings); nothing is read at import time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from monitor.urls import mask_url


def seconds(low: float, high: float) -> Any:
    """A duration setting: finite, within [low, high] (inf, nan, 1e300 and 0.001 are refused)."""
    return Field(ge=low, le=high, allow_inf_nan=False)


# The drivers the demo app runs on (sync, psycopg2); anything else is refused by name.
SUPPORTED_SCHEMES = ("postgresql", "postgresql+psycopg2", "postgres")
ASYNC_DRIVERS = ("asyncpg", "psycopg_async", "aiopg", "psycopg")


class Settings(BaseSettings):
    """Every knob of the app and the monitor; env names are `MONITOR_<FIELD>` except `DATABASE_URL`."""

    model_config = SettingsConfigDict(
        env_prefix="MONITOR_",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        # Validation errors would otherwise echo the raw URL, password included.
        hide_input_in_errors=True,
    )

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "database_url")
    )
    enabled: bool = True
    demo_routes: bool = False
    leak_threshold_s: Annotated[float, seconds(0.1, 86_400)] = 10.0
    probe_interval_s: Annotated[float, seconds(0.1, 3_600)] = 5.0
    slow_query_s: Annotated[float, seconds(1e-6, 3_600)] = 0.5
    probe_timeout_s: Annotated[float, seconds(0.1, 300)] = 2.0
    verdict_window_s: Annotated[float, seconds(10, 7 * 86_400)] = (
        900.0  # how far back a rule's verdict looks
    )
    # A live owner holding a connection longer is a suspected leak however busy (default 10x
    # the leak threshold); routes listed as "TEMPLATE=SECONDS,..." declare their own ceiling.
    long_hold_ceiling_s: Annotated[float, seconds(0.1, 7 * 86_400)] | None = None
    long_hold_routes: str = ""
    # The commit rule ignores connections idle in transaction for less (between statements).
    idle_in_transaction_min_s: Annotated[float, seconds(0.001, 86_400)] = 1.0

    pool_size: Annotated[int, Field(ge=1, le=1000)] = 5
    max_overflow: Annotated[int, Field(ge=0, le=1000)] = 5
    pool_timeout_s: Annotated[float, seconds(0.1, 300)] = 10.0
    pool_recycle_s: Annotated[float, seconds(1, 7 * 86_400)] = 1800.0
    pool_pre_ping: bool = True
    sql_echo: bool = False
    application_name: Annotated[str, Field(min_length=1, max_length=63)] = "pool-monitor-app"

    embedded_data_dir: Path = Path(".data/postgres")
    dashboard_token: str | None = None
    pgbouncer_url: str | None = None  # PgBouncer's admin console, e.g. .../pgbouncer
    trusted_hosts: str = "127.0.0.1,localhost,::1,testserver"
    demo_hold_ttl_s: Annotated[float, Field(gt=0, le=600)] = 60.0
    demo_background_load: bool = False
    demo_allow_remote: bool = False
    # Server limits (`pool-monitor serve`): see monitor/server_limits.py and web/body_limit.py.
    max_body_bytes: Annotated[int, Field(ge=1024, le=1024**3)] = 1024 * 1024
    header_timeout_s: Annotated[float, Field(ge=1, le=300)] = 10.0
    keep_alive_s: Annotated[float, Field(ge=1, le=300)] = 5.0
    max_connections: Annotated[int, Field(ge=0, le=65536)] = 0  # 0: from the open-files limit

    @field_validator("database_url")
    @classmethod
    def _supported_driver(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme = value.partition("://")[0].strip().lower()
        if scheme in SUPPORTED_SCHEMES and "://" in value:
            return value
        driver = scheme.partition("+")[2]
        if scheme.startswith("postgresql+") and driver in ASYNC_DRIVERS:
            raise ValueError(
                f"{scheme}:// is an async driver and the demo app is sync; use "
                "postgresql+psycopg2:// (or postgresql://) here. The library itself supports "
                "async engines: PoolMonitor(create_async_engine(...))"
            )
        raise ValueError(
            f"unsupported scheme {scheme[:40]!r}; use postgresql://, postgresql+psycopg2:// "
            "or postgres://"
        )

    @field_validator("long_hold_routes")
    @classmethod
    def _route_ceilings(cls, value: str) -> str:
        parse_route_ceilings(value)  # raises ValueError with the offending entry
        return value

    @property
    def trusted_host_list(self) -> list[str]:
        return [host.strip() for host in self.trusted_hosts.split(",") if host.strip()]

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        # The URL may carry a password: show it masked in every repr and log line.
        for name, value in super().__repr_args__():
            if name in ("database_url", "pgbouncer_url") and value is not None:
                value = mask_url(value)
            if name == "dashboard_token" and value is not None:
                value = "***"
            yield name, value


def parse_route_ceilings(value: str) -> dict[str, float]:
    """`"/reports/{id}=120,/stream=30"` -> {route template: ceiling in seconds}."""
    ceilings: dict[str, float] = {}
    for entry in value.split(","):
        if not entry.strip():
            continue
        route, sep, seconds = entry.strip().rpartition("=")
        try:
            ceiling = float(seconds)
        except ValueError:
            ceiling = 0.0
        if not sep or not route.startswith("/") or not ceiling > 0:
            raise ValueError(
                f"long_hold_routes: expected /route/{{template}}=SECONDS, got {entry!r}"
            )
        ceilings[route] = ceiling
    return ceilings
