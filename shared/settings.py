"""Settings read from the environment, one class per service, failing fast on bad values.

Common settings use the prefix `STREAMOPS_`; `REDIS_URL` and `MLFLOW_TRACKING_URI` are read too
because every tool in this space understands them. Lists accept JSON (`["a","b"]`) or commas.
"""

from __future__ import annotations

import os
import socket
import sysconfig
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
# Where a regular (non-editable) install puts the bundled sample: pyproject.toml's
# [tool.setuptools.data-files], relative to the install scheme's data directory.
INSTALLED_DATASETS = Path("share") / "streamops" / "datasets"
# The trainer's default plugins directory, under the datasets directory.
PLUGINS = "plugins"


def bundled_datasets() -> Path:
    """The sample datasets shipped with streamops: the repository's `datasets/` in a source
    checkout (editable installs included), else the copy that `pip install` put under the
    environment's prefix (or the user's, after `pip install --user`)."""
    # pyproject.toml marks a checkout. Testing for a `datasets/` beside the packages would not:
    # in site-packages that is another project (Hugging Face's `datasets`).
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT / "datasets"
    installed = [
        Path(sysconfig.get_path("data", scheme)) / INSTALLED_DATASETS
        for scheme in (sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user"))
    ]
    return next((path for path in installed if path.is_dir()), installed[0])


BUNDLED_DATASETS = bundled_datasets()


def default_datasets_dir() -> Path:
    """`./datasets` when the working directory has one (a project of the user's own, or this
    repository), else the bundled sample: an installed streamops works from any directory."""
    local = Path("datasets")
    return local if local.is_dir() else BUNDLED_DATASETS


def default_consumer_name() -> str:
    """Unique per process: a restarted process must not inherit its predecessor's pending list."""
    return f"{socket.gethostname()}-{os.getpid()}"


def split_list(value: Any) -> Any:
    """A list setting's text as a list: JSON (`["a","b"]`) or comma-separated."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


# The flavors a replica loads by default, and every flavor it knows how to serve: the native
# ones first (they give class probabilities), then MLflow's generic python_function.
DEFAULT_FLAVORS = ("sklearn", "lightgbm", "xgboost", "python_function")
KNOWN_FLAVORS = DEFAULT_FLAVORS

# An object-store location, s3://bucket[/prefix]: a bucket name as S3 allows it, no empty
# segment (docs/storage.md).
S3Uri = Annotated[
    str, StringConstraints(pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^/]+)*/?$")
]


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
    # Redis Cluster seed nodes, "host:port" each (comma-separated or JSON); empty: the one Redis
    # at redis_url. In cluster mode the URL's scheme and credentials still apply (docs/scaling.md).
    redis_cluster_nodes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Before a consumer acks an event, wait until this many replicas of every master (at most
    # as many as it has in sync) hold what its handling wrote: Redis WAIT, at most
    # redis_wait_ms, else the work is done again. 0: ack at once. A failover then cannot lose an
    # acked event's effect (shared/replication.py; figures in docs/scaling.md).
    redis_wait_replicas: int = Field(default=1, ge=0, le=16)
    redis_wait_ms: int = Field(default=1_000, ge=1, le=60_000)
    mlflow_tracking_uri: str = Field(
        default="http://127.0.0.1:5000",
        validation_alias=AliasChoices("STREAMOPS_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
    )
    feature_store_root: Path = Path("var/feature-store")
    # The feature store's dataset versions and batch scores on an S3-compatible object store
    # (`s3://bucket/prefix`), instead of under feature_store_root; the connection comes from
    # the standard AWS variables (docs/storage.md). Prediction logs stay under
    # feature_store_root.
    feature_store_uri: S3Uri | None = None
    datasets_dir: Path = Field(default_factory=default_datasets_dir)
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
    # Where the service serves Prometheus metrics (`/metrics`); none: not served. Each process
    # on one host needs its own (`streamops up` picks free ones).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("feature_store_root", "datasets_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def feature_store_location(self) -> str:
        """Where dataset versions live: the object-store URI if set, else the local root."""
        return (self.feature_store_uri or str(self.feature_store_root)).rstrip("/")

    @field_validator("redis_cluster_nodes", mode="before")
    @classmethod
    def _split_nodes(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("redis_cluster_nodes")
    @classmethod
    def _host_ports(cls, nodes: list[str]) -> list[str]:
        for node in nodes:
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"a cluster node is host:port, not {node!r}")
        return nodes


class IngestorSettings(BaseSettings):
    """The ingestor: where data may come from and how strict validation is."""

    model_config = SettingsConfigDict(env_prefix="STREAMOPS_INGESTOR_", extra="ignore", frozen=True)

    common: CommonSettings = Field(default_factory=CommonSettings)
    # Events come from outside: only files under these directories may be read.
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [default_datasets_dir(), Path("var/inbox")]
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
    # The prediction log's loggers (docs/feedback.md), one per ingestor: a batch of
    # `predictions` entries is written when it holds `log_flush_entries`, or `log_flush_s`
    # after its first entry; date partitions older than `log_retention_days` are removed
    # (0: kept for ever); every `log_merge_s` the small parts of each date partition (log and
    # labels) are merged into few files (0: never; shared/partmerge.py).
    log_compaction: bool = True
    log_flush_entries: int = Field(default=1000, ge=1, le=100_000)
    log_flush_s: float = Field(default=2.0, gt=0, le=3600)
    log_retention_days: int = Field(default=30, ge=0, le=36_500)
    log_merge_s: float = Field(default=600.0, ge=0, le=86_400)
    # Labels (docs/feedback.md), joined to the prediction log by a joiner in each ingestor: a
    # label whose request is not in the log yet is waited for up to `label_grace_s`. Live
    # quality: each version over its last `quality_window_rows` labelled rows and over the
    # rows labelled in the last `quality_window_s`, recomputed every `quality_interval_s`.
    label_join: bool = True
    label_grace_s: float = Field(default=30.0, ge=0, le=86_400)
    quality_window_rows: int = Field(default=1000, ge=10, le=10_000_000)
    quality_window_s: float = Field(default=3600.0, gt=0, le=30 * 86_400)
    quality_interval_s: float = Field(default=10.0, gt=0, le=3600)

    @field_validator("data_roots", "sql_allow", "rest_allow_hosts", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return split_list(value)

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
    # How often the specs' retrain rules (drift, decay, schedule) are checked (0: never).
    retrain_check_s: float = Field(default=30.0, ge=0.0, le=86_400.0)
    # How often the rollout guard judges the versions it watches (0: no guard at all); what
    # it checks is each spec's `rollout` section (docs/rollout.md).
    guard_s: float = Field(default=1.0, ge=0.0, le=3600.0)
    # Where training entry points (`training.entry_point` in a spec) may come from besides the
    # trainer's environment: a directory put first on the import path (docs/training.md).
    plugins_dir: Path | None = None

    @field_validator("plugins_dir")
    @classmethod
    def _plugins_dir_exists(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        value = value.expanduser().resolve()
        if not value.is_dir():
            raise ValueError(f"STREAMOPS_TRAINER_PLUGINS_DIR {value} is not a directory")
        return value

    @property
    def plugins(self) -> Path | None:
        """The plugins directory in effect: `plugins_dir`, else `<datasets dir>/plugins` when
        that exists (the bundled example's code lives there), else none."""
        if self.plugins_dir is not None:
            return self.plugins_dir
        default = self.common.datasets_dir / PLUGINS
        return default if default.is_dir() else None


class PredictorSettings(BaseSettings):
    """A predictor replica: which models it serves and how it keeps up with the registry."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMOPS_PREDICTOR_", extra="ignore", frozen=True
    )

    common: CommonSettings = Field(default_factory=CommonSettings)
    # Registered models this replica serves: names or shell patterns (`churn*`); empty: every
    # registered model that has a `production` alias, whoever registered it.
    models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # MLflow flavors a replica may load (docs/serving.md: trust). A model is loaded through
    # the first of its flavors that is listed here; one with none of them is refused.
    flavors: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_FLAVORS), min_length=1
    )
    # production: a model whose loading unpickles code (cloudpickle, pickle: a custom pyfunc,
    # a model logged with serialization_format="cloudpickle") is refused unless allow_pickle.
    environment: str = Field(default="development", pattern=r"^(development|production)$")
    # Unset: allowed in development, refused in production.
    allow_pickle: bool | None = None
    # How versions are run (docs/serving.md: compiled serving): auto serves a version's
    # verified ONNX graph with onnxruntime (compiling at load a version that has no verdict),
    # native always calls the model's own library; `native_models` forces native for the
    # models it names (names or shell patterns).
    runtime: Literal["auto", "native"] = "auto"
    native_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # How often the replica compares what it serves with the registry's production aliases.
    converge_s: float = Field(default=10.0, gt=0, le=3600)
    # Threads a model may use to predict (OpenMP, BLAS). One: a replica is one core's worth of
    # work, and run more replicas for more cores; several threads per replica on a busy host
    # spin against each other (a 1-row predict went from 1 ms to 50 ms here).
    threads: int = Field(default=1, ge=1, le=256)
    # Predict batches taken per read; batches of one model read together are predicted in one
    # call. Small enough that one replica does not take what another could be doing.
    read_batches: int = Field(default=4, ge=1, le=256)
    # Drift: the live rows (online predictions) each replica compares with the training
    # reference, and how many the window must hold before PSI is exported at all.
    drift_window: int = Field(default=5000, ge=100, le=1_000_000)
    drift_min_rows: int = Field(default=500, ge=1, le=1_000_000)
    # The prediction log (docs/feedback.md): whether answered rows are logged, the share of
    # online requests logged (decided by request id), the models whose feature values are
    # left out of it (names or shell patterns), and the entries the `predictions` stream
    # keeps for the loggers (trimmed approximately beyond that).
    log_predictions: bool = True
    log_sample: float = Field(default=1.0, ge=0.0, le=1.0)
    log_without_features: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_maxlen: int = Field(default=100_000, ge=100, le=100_000_000)
    # Batch-scored rows are logged with the file they came from (`input_uri`, `row`), not a
    # copy of their features: the input is the user's file or an immutable feature-store
    # version, and copying it would double a job's writes (docs/feedback.md). True copies them.
    log_batch_features: bool = False
    # Shadowing (docs/rollout.md): whether this replica loads challengers at all (false: a
    # switch for a fleet short of CPU), and the share of a model's online requests its
    # challenger predicts too when the registry's `streamops.shadow_sample` tag does not say.
    shadow: bool = True
    shadow_sample: float = Field(default=0.1, gt=0.0, le=1.0)
    # Batch scoring: rows per chunk of a file job (chunks are shared by all replicas).
    score_chunk_rows: int = Field(default=100_000, ge=100, le=50_000_000)
    # Batch scoring: the most rows a score-requested event may carry inline.
    max_inline_rows: int = Field(default=10_000, ge=1, le=1_000_000)
    # Batch scoring: events come from outside, so only Parquet files under these directories
    # may be read (and results are written beside them).
    score_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [default_datasets_dir(), Path("var/inbox")]
    )
    # Batch scoring on an object store: Parquet objects under these `s3://` prefixes may be
    # read (results are written beside them); the feature store's URI, when set, is one too.
    score_uris: Annotated[list[S3Uri], NoDecode] = Field(default_factory=list)

    @field_validator(
        "models",
        "flavors",
        "native_models",
        "log_without_features",
        "score_roots",
        "score_uris",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("score_roots")
    @classmethod
    def _resolve_roots(cls, value: list[Path]) -> list[Path]:
        return [p.expanduser().resolve() for p in value]

    @field_validator("score_uris")
    @classmethod
    def _s3_prefixes(cls, value: list[str]) -> list[str]:
        return [uri.rstrip("/") for uri in value]

    @property
    def score_prefixes(self) -> list[str]:
        """The object-store prefixes batch scoring may read and write under."""
        store = self.common.feature_store_uri
        return [*self.score_uris, *([store.rstrip("/")] if store else [])]

    @field_validator("flavors")
    @classmethod
    def _known_flavors(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(KNOWN_FLAVORS))
        if unknown:
            raise ValueError(f"unknown MLflow flavors {unknown}; known: {list(KNOWN_FLAVORS)}")
        return value

    @property
    def pickle_allowed(self) -> bool:
        if self.allow_pickle is not None:
            return self.allow_pickle
        return self.environment == "development"

    def compiles(self, model_name: str) -> bool:
        """Whether this replica may serve `model_name` compiled."""
        from fnmatch import fnmatchcase

        if self.runtime == "native":
            return False
        return not any(fnmatchcase(model_name, p) for p in self.native_models)

    def serves(self, model_name: str) -> bool:
        """Whether `models` lets this replica serve `model_name`."""
        from fnmatch import fnmatchcase

        return not self.models or any(fnmatchcase(model_name, p) for p in self.models)

    def logs_features(self, model_name: str) -> bool:
        """Whether the prediction log keeps `model_name`'s feature values."""
        from fnmatch import fnmatchcase

        return not any(fnmatchcase(model_name, p) for p in self.log_without_features)


class GatewaySettings(BaseSettings):
    """The HTTP gateway: limits, coalescing of predict requests, and who may change things."""

    model_config = SettingsConfigDict(env_prefix="STREAMOPS_GATEWAY_", extra="ignore", frozen=True)

    common: CommonSettings = Field(default_factory=CommonSettings)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Worker processes under gunicorn (`streamops gateway`); each coalesces on its own.
    workers: int = Field(default=1, ge=1, le=64)
    # "production" refuses to start without an API key.
    environment: str = Field(default="development", pattern=r"^(development|production)$")
    # Required (header `X-API-Key` or `Authorization: Bearer ...`) by every mutating endpoint
    # when set.
    api_key: SecretStr | None = None
    # Coalescing: a predict batch leaves when it holds `batch_rows` rows, when `batch_wait_ms`
    # have passed since its first row, or at once when no batch of that model is in flight.
    batch_wait_ms: float = Field(default=2.0, ge=0.0, le=1000.0)
    batch_rows: int = Field(default=256, ge=1, le=100_000)
    # Answers later than this are a 504.
    predict_timeout_s: float = Field(default=5.0, gt=0, le=600)
    max_rows_per_request: int = Field(default=1_000, ge=1, le=100_000)
    max_body_bytes: int = Field(default=1 << 20, ge=1 << 10)
    # Valid predict requests are answered by gateway.fastpath, past FastAPI's machinery; off,
    # every request takes the FastAPI route (the same answers, at about twice the CPU).
    fast_path: bool = True
    max_upload_bytes: int = Field(default=256 << 20, ge=1 << 10)
    # Where uploaded CSV files are kept for the ingestor (must be one of its data roots).
    inbox: Path = Path("var/inbox")

    @field_validator("inbox")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _key_outside_development(self) -> GatewaySettings:
        if self.environment == "production" and self.api_key is None:
            raise ValueError(
                "STREAMOPS_GATEWAY_API_KEY must be set when STREAMOPS_GATEWAY_ENVIRONMENT "
                "is production"
            )
        return self
