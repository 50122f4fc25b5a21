"""All configuration, read once from CHARGEGATE_* environment variables."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class GoogleAuthMode(StrEnum):
    SELF_SIGNED_JWT = "self_signed_jwt"
    TOKEN_EXCHANGE = "token_exchange"  # noqa: S105 - a mode name, not a secret


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHARGEGATE_", extra="ignore", frozen=True)

    database_url: str | None = None
    database_pool_size: int = Field(default=20, ge=1, le=200)
    var_dir: Path = Path("var")

    recaptcha_base_url: str = "https://recaptchaenterprise.googleapis.com"
    recaptcha_script_url: str = "https://www.google.com/recaptcha/enterprise.js"
    upstream_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    google_auth: GoogleAuthMode = GoogleAuthMode.SELF_SIGNED_JWT

    encryption_keys: SecretStr | None = None
    allow_insecure_defaults: bool = False
    bootstrap_admin_key: SecretStr | None = None

    # How long policy, credential and API-key state is served from memory before a re-read
    # (and up to half as long again while the re-read runs): 1.5 times it must stay below
    # the 2 s the contract allows for a change to take effect everywhere.
    state_cache_seconds: float = Field(default=1.0, ge=0, le=1.2)
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    log_level: str = "INFO"

    # Resilience settings of API.md (used by the resilience work).
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=10.0, gt=0)
    # Calls to Google in flight at once (the HTTP pool's size too); more wait, within their
    # deadline, for a slot: a slow Google cannot pile up sockets and memory.
    upstream_max_concurrency: int = Field(default=200, ge=1, le=10_000)
    key_rate_limit: float | None = Field(default=None, gt=0)
    # Per replica, in memory; the benchmark drives 200 concurrent calls with one key.
    key_max_concurrent_authorize: int = Field(default=256, ge=1)
    stale_state_seconds: float = Field(default=300.0, ge=0)
    decision_buffer: int = Field(default=10000, ge=0)
    shutdown_grace_seconds: float = Field(default=15.0, gt=0)

    @field_validator("recaptcha_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL, with the async driver chosen for the scheme given."""
        if not self.database_url:
            return f"sqlite+aiosqlite:///{(self.var_dir / 'chargegate.db').as_posix()}"
        url = self.database_url
        for prefix, driver in (
            ("postgresql+asyncpg://", "postgresql+asyncpg://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
            ("sqlite+aiosqlite://", "sqlite+aiosqlite://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(prefix):
                return driver + url[len(prefix) :]
        raise ValueError(
            "CHARGEGATE_DATABASE_URL must start with postgresql://, postgresql+asyncpg://, "
            "sqlite:/// or sqlite+aiosqlite:///"
        )

    @property
    def is_embedded_database(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")
