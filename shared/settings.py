"""Settings read from the environment, one class per service, failing fast on bad values.

Common settings use the prefix `STREAMOPS_`; `REDIS_URL` and `MLFLOW_TRACKING_URI` are read too
because every tool in this space understands them. Lists accept JSON (`["a","b"]`) or commas.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_DATASETS = REPO_ROOT / "datasets"


def default_consumer_name() -> str:
    """Unique per process: a restarted process must not inherit its predecessor's pending list."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class CommonSettings(BaseSettings):
    """What every service needs: where Redis, MLflow and the feature store are."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMOPS_", extra="ignore", frozen=True, populate_by_name=True
    )

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("STREAMOPS_REDIS_URL", "REDIS_URL"),
        pattern=r"^(redis|rediss|unix)://",
    )
    redis_password: SecretStr | None = None
    mlflow_tracking_uri: str = Field(
        default="http://127.0.0.1:5000",
        validation_alias=AliasChoices("STREAMOPS_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
    )
    feature_store_root: Path = Path("var/feature-store")
    datasets_dir: Path = BUNDLED_DATASETS
    consumer_name: str = Field(default_factory=default_consumer_name, min_length=1)
    max_deliveries: int = Field(default=5, ge=1, le=1000)
    # A message not renewed for this long is presumed abandoned and claimed by another consumer.
    # Live workers renew their lease every third of it, however long the work takes.
    lease_ms: int = Field(default=30_000, ge=200, le=3_600_000)
    # How often a consumer looks for abandoned messages.
    claim_interval_ms: int = Field(default=1_000, ge=10, le=60_000)
    # How long "this event was handled" is remembered, for redeliveries.
    done_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @field_validator("feature_store_root", "datasets_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()


class IngestorSettings(BaseSettings):
    """The ingestor: where data may come from and how strict validation is."""

    model_config = SettingsConfigDict(env_prefix="STREAMOPS_INGESTOR_", extra="ignore", frozen=True)

    common: CommonSettings = Field(default_factory=CommonSettings)
    # Events come from outside: only files under these directories may be read.
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [BUNDLED_DATASETS, Path("var/inbox")]
    )
    # SQLAlchemy URLs that may be queried: shell-style patterns matched against the URL with
    # its password removed, e.g. "postgresql://reader@db.internal:5432/*". Empty: no SQL.
    sql_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Hosts ("host" or "host:port") that REST sources may fetch from. Empty: no REST.
    rest_allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_bad_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    block_size_bytes: int = Field(default=4 << 20, ge=64 << 10, le=1 << 30)
    sql_chunk_rows: int = Field(default=50_000, ge=100)
    rest_max_pages: int = Field(default=10_000, ge=1)
    rest_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("data_roots", "sql_allow", "rest_allow_hosts", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("data_roots")
    @classmethod
    def _resolve_roots(cls, value: list[Path]) -> list[Path]:
        return [p.expanduser().resolve() for p in value]


class TrainerSettings(BaseSettings):
    """The trainer: where it trains."""

    model_config = SettingsConfigDict(env_prefix="STREAMOPS_TRAINER_", extra="ignore", frozen=True)

    common: CommonSettings = Field(default_factory=CommonSettings)
    # Fits run in worker processes, so a long fit never blocks the service's event loop.
    workers: int = Field(default=1, ge=1, le=32)
    # How often the registry is checked for alias moves made outside streamops (0: never).
    watch_s: float = Field(default=2.0, ge=0.0, le=3600.0)


class PredictorSettings(BaseSettings):
    """A predictor replica: which models it serves and how it keeps up with the registry."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMOPS_PREDICTOR_", extra="ignore", frozen=True
    )

    common: CommonSettings = Field(default_factory=CommonSettings)
    # Dataset names whose models this replica serves; empty: every dataset with a training spec.
    datasets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # How often the replica compares what it serves with the registry's production aliases.
    converge_s: float = Field(default=10.0, gt=0, le=3600)

    @field_validator("datasets", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)
