"""Every setting ttsync reads, from the environment (prefix ``TTSYNC_``) or a ``.env`` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SQLITE_PATH = Path(".local") / "ttsync.sqlite3"


class Settings(BaseSettings):
    """Typed settings. Secrets are ``SecretStr`` so that printing a Settings never shows them."""

    model_config = SettingsConfigDict(env_prefix="TTSYNC_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_SQLITE_PATH}",
        description="TimeTracker database holding the outbox (PostgreSQL in production, SQLite for the demo)",
    )
    state_database_url: str | None = Field(
        default=None, description="Consumer state (processed events, entity map, tokens); defaults to database_url"
    )
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers")
    topic_prefix: str = Field(default="timetracker", description="Topics are <prefix>.<aggregate type>")
    group_id: str = Field(default="ttsync-qbo", description="Consumer group of the QBO consumer")
    source: str = Field(default="timetracker", description="Name of the TimeTracker instance, put in every event")

    qbo_base_url: str = Field(default="http://127.0.0.1:8765", description="QBO API base URL (no /v3)")
    qbo_token_url: str = Field(
        default="http://127.0.0.1:8765/oauth2/v1/tokens/bearer", description="OAuth2 token endpoint"
    )
    qbo_client_id: str = Field(default="ttsync-local", description="OAuth2 client id")
    qbo_client_secret: SecretStr = Field(default=SecretStr("ttsync-local-secret"), description="OAuth2 secret")
    qbo_realm_id: str = Field(default="9130000000000001", description="QBO company (realm) id")
    qbo_refresh_token: SecretStr | None = Field(
        default=None, description="First refresh token; rotated ones are kept encrypted in the state database"
    )
    secret_key: SecretStr | None = Field(
        default=None, description="Fernet key (urlsafe base64, 32 bytes) that encrypts tokens at rest"
    )

    topic_partitions: int = Field(default=3, ge=1, description="Partitions of topics ttsync creates")
    topic_replication_factor: int = Field(default=1, ge=1, description="Replication of topics ttsync creates")
    relay_batch_size: int = Field(default=500, ge=1, le=10_000, description="Outbox rows claimed per batch")
    relay_poll_interval_s: float = Field(default=1.0, gt=0, description="Fallback poll when no NOTIFY arrives")
    relay_buckets: int = Field(default=16, ge=1, le=1024, description="Hash buckets that relays share out")
    outbox_retention_hours: float = Field(default=72.0, ge=0, description="Published rows kept this long")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="/metrics and /healthz port (0 = off)")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto = console on a terminal, JSON otherwise"
    )

    @property
    def effective_state_database_url(self) -> str:
        return self.state_database_url or self.database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
