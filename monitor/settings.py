"""Configuration from the environment (pydantic-settings); nothing is read at import time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from monitor.urls import mask_url

Positive = Annotated[float, Field(gt=0)]


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
    leak_threshold_s: Positive = 10.0
    probe_interval_s: Positive = 5.0
    slow_query_s: Positive = 0.5
    probe_timeout_s: Positive = 2.0
    verdict_window_s: Positive = 900.0  # how far back a rule's verdict looks

    pool_size: Annotated[int, Field(ge=1, le=1000)] = 5
    max_overflow: Annotated[int, Field(ge=0, le=1000)] = 5
    pool_timeout_s: Positive = 10.0
    pool_recycle_s: Positive = 1800.0
    pool_pre_ping: bool = True
    sql_echo: bool = False
    application_name: Annotated[str, Field(min_length=1, max_length=63)] = "pool-monitor-app"

    embedded_data_dir: Path = Path(".data/postgres")
    dashboard_token: str | None = None
    trusted_hosts: str = "127.0.0.1,localhost,::1,testserver"
    demo_hold_ttl_s: Annotated[float, Field(gt=0, le=600)] = 60.0
    demo_background_load: bool = False
    demo_allow_remote: bool = False

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql", "postgres://")):
            raise ValueError(f"DATABASE_URL must be a PostgreSQL URL, got {mask_url(value)}")
        return value

    @property
    def trusted_host_list(self) -> list[str]:
        return [host.strip() for host in self.trusted_hosts.split(",") if host.strip()]

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        # The URL may carry a password: show it masked in every repr and log line.
        for name, value in super().__repr_args__():
            if name == "database_url" and value is not None:
                value = mask_url(value)
            if name == "dashboard_token" and value is not None:
                value = "***"
            yield name, value
