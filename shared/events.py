"""Event contracts: every message that crosses a stream, and the stream it travels on.

Each event is a frozen pydantic model named in the past tense. The envelope (`event_id`,
`schema_version`, `occurred_at`, `correlation_id`) is filled in with defaults so that a producer
with nothing but `redis-cli` only has to write the fields that matter to it.

The wire format (one JSON object per stream entry) is described in `docs/wire-format.md`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

# Derived events get ids computed from what they describe (uuid5 in this namespace), so the same
# fact published twice (after a crash and a redelivery) carries the same id and consumers can
# drop the copy.
EVENT_NAMESPACE = uuid.UUID("5b0c1f3e-9d1a-4c55-9a35-3c0f7a9f2e11")

DatasetName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$"),
    Field(description="Dataset name: lower-case letters, digits, '-' and '_', at most 64."),
]


def derived_event_id(*parts: object) -> uuid.UUID:
    """A stable event id for the event that reports the fact named by `parts`."""
    return uuid.uuid5(EVENT_NAMESPACE, "/".join(str(p) for p in parts))


class Event(BaseModel):
    """The envelope every event carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stream: ClassVar[str]

    event_id: uuid.UUID = Field(
        default_factory=uuid.uuid4,
        description="Unique id of this event; consumers use it to drop duplicates.",
    )
    schema_version: Literal[1] = Field(default=1, description="Version of this event's contract.")
    occurred_at: AwareDatetime = Field(
        default_factory=lambda: datetime.now(UTC),
        description="When the fact happened (ISO 8601 with a time zone).",
    )
    correlation_id: str = Field(
        default="",
        max_length=200,
        description="Id shared by every event of one flow; defaults to the first event's id.",
    )

    @model_validator(mode="after")
    def _default_correlation(self) -> Self:
        if not self.correlation_id:
            # Frozen model: set through object.__setattr__ once, during validation.
            object.__setattr__(self, "correlation_id", str(self.event_id))
        return self


# --- Sources named by data-arrived -------------------------------------------------------------


class CsvSource(BaseModel):
    """A CSV file with a header row, on a path inside one of the ingestor's data roots."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["csv"] = "csv"
    uri: str = Field(
        min_length=1,
        max_length=4096,
        description="Local path or file:// URI of the CSV file.",
    )
    delimiter: str = Field(default=",", min_length=1, max_length=1, description="Field delimiter.")


class SqlSource(BaseModel):
    """A read-only query against a database the ingestor is allowed to reach."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["sql"] = "sql"
    url: str = Field(min_length=1, max_length=2048, description="SQLAlchemy database URL.")
    query: str = Field(
        min_length=1, max_length=20_000, description="One SELECT (or WITH ... SELECT) statement."
    )


class NextLinkPagination(BaseModel):
    """Follow a link to the next page until there is none."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["next_link"] = "next_link"
    next_field: str = Field(
        default="next",
        description="Top-level JSON field holding the next page's URL; a `Link: <...>; "
        'rel="next"` header is used when the field is absent.',
    )


class PageNumberPagination(BaseModel):
    """Ask for page 1, 2, 3... until a page comes back empty."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["page"] = "page"
    param: str = Field(default="page", description="Query parameter carrying the page number.")
    start: int = Field(default=1, ge=0, description="Number of the first page.")


class RestSource(BaseModel):
    """A JSON API returning records, possibly over several pages."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["rest"] = "rest"
    url: str = Field(min_length=1, max_length=4096, description="http(s) URL of the first page.")
    records_field: str | None = Field(
        default=None,
        description="Top-level JSON field holding the list of records; none when the body "
        "itself is the list.",
    )
    pagination: NextLinkPagination | PageNumberPagination | None = Field(
        default=None, discriminator="type", description="How to reach the next page, if any."
    )


class PredictionLogSource(BaseModel):
    """A model's labelled prediction log: the rows it answered in `[since, until)` whose label
    arrived before `until`, each with its logged features and its label as the target, after
    the rows of dataset version `base_version` (docs/feedback.md, retraining on the log)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["prediction_log"] = "prediction_log"
    model: str = Field(min_length=1, max_length=200, description="Registered model name.")
    since: AwareDatetime = Field(description="First answer time taken (inclusive).")
    until: AwareDatetime = Field(
        description="Answers and labels before this only, so the same source always reads "
        "the same rows."
    )
    base_version: int | None = Field(
        default=None,
        ge=1,
        description="The dataset version whose rows come first; none: the labelled log alone.",
    )

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.since >= self.until:
            raise ValueError("since must be before until")
        return self


AnySource = CsvSource | SqlSource | RestSource | PredictionLogSource
Source = Annotated[AnySource, Field(discriminator="kind")]
# Every version made from a prediction log says so first in its `source` (describe_source).
LOG_SOURCE_PREFIX = "prediction-log:"


def describe_source(source: AnySource) -> str:
    """A short human-readable name for a source, with any password masked."""
    if isinstance(source, CsvSource):
        return source.uri
    if isinstance(source, PredictionLogSource):
        window = f"[{source.since.isoformat()}, {source.until.isoformat()})"
        base = "" if source.base_version is None else f" after v{source.base_version}"
        return f"{LOG_SOURCE_PREFIX}{source.model} {window}{base}"
    if isinstance(source, SqlSource):
        from sqlalchemy.engine import make_url

        try:
            shown = make_url(source.url).render_as_string(hide_password=True)
        except Exception:
            shown = "<unparseable URL>"
        return f"{shown} :: {source.query[:80]}"
    return source.url


# --- Ingest -------------------------------------------------------------------------------------


class DataArrived(Event):
    """New data is available for a dataset; the ingestor validates and stores it."""

    stream: ClassVar[str] = "data-arrived"

    dataset: DatasetName
    source: Source = Field(
        description="Where the rows are: a CSV file, a SQL query, a REST API, or a model's "
        "labelled prediction log."
    )

    @model_validator(mode="before")
    @classmethod
    def _source_shorthand(cls, data: Any) -> Any:
        # `XADD data-arrived * dataset churn source /data/churn.csv` arrives as flat strings:
        # accept a bare path or file:// URI as a CSV source.
        if isinstance(data, dict) and isinstance(data.get("source"), str):
            raw = data["source"]
            if raw.lstrip().startswith("{"):
                import json

                return {**data, "source": json.loads(raw)}
            return {**data, "source": {"kind": "csv", "uri": raw}}
        return data


class DataIngested(Event):
    """A dataset version is durable in the feature store."""

    stream: ClassVar[str] = "data-ingested"

    dataset: DatasetName
    version: int = Field(ge=1, description="Monotonic version number within the dataset.")
    content_hash: str = Field(description="SHA-512/256 of the dataset spec and the source content.")
    rows: int = Field(ge=0, description="Rows accepted into the version.")
    quarantined_rows: int = Field(ge=0, description="Rows rejected and kept in the quarantine.")
    path: str = Field(description="Directory of the version's Parquet files.")
    quarantine_path: str | None = Field(
        default=None, description="Parquet file listing the rejected rows, if any."
    )
    new_version: bool = Field(
        description="False when the same content was already stored: no new version was made."
    )
    source: str = Field(description="Where the data came from (passwords masked).")


RejectionKind = Literal["schema_drift", "too_many_bad_rows", "source_error", "empty"]


class DataRejected(Event):
    """A whole batch was refused; no version was created."""

    stream: ClassVar[str] = "data-rejected"

    dataset: DatasetName
    kind: RejectionKind = Field(description="Why, as a machine-readable category.")
    reason: str = Field(description="Why, for a person.")
    details: tuple[str, ...] = Field(default=(), description="One line per problem found.")
    total_rows: int = Field(default=0, ge=0, description="Rows read before the decision.")
    bad_rows: int = Field(default=0, ge=0, description="Rows that failed validation.")
    source: str = Field(description="Where the data came from (passwords masked).")


# --- Train and promote --------------------------------------------------------------------------


class ModelTrained(Event):
    """A model was trained, registered and judged by the quality gate."""

    stream: ClassVar[str] = "model-trained"

    model_name: str = Field(description="Registered model name.")
    model_version: int = Field(ge=1, description="Registry version number.")
    run_id: str = Field(description="MLflow run id.")
    dataset: DatasetName
    dataset_version: int = Field(ge=1, description="Feature-store version trained on.")
    metrics: dict[str, float] = Field(description="Hold-out metrics.")
    gate_passed: bool = Field(description="Whether the quality gate passed.")
    gate_reasons: tuple[str, ...] = Field(default=(), description="Why the gate decided so.")


PromotionReason = Literal["auto", "manual", "rollback", "external", "guard", "rollout"]


class GuardBreach(BaseModel):
    """One check a watched version failed (docs/rollout.md): the figure against its
    threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    check: Literal["errors", "latency", "prediction_shift", "live_quality"] = Field(
        description="errors: share of rows failed; latency: p99 predict ms; prediction_shift: "
        "PSI of its predictions against the old version's; live_quality: a gate metric on "
        "its labelled rows."
    )
    value: float = Field(description="The new version's figure.")
    threshold: float = Field(description="The bound it crossed.")
    detail: str = Field(default="", description="What was compared, in words.")


class ModelPromoted(Event):
    """An alias (normally `production`) now points at a new model version."""

    stream: ClassVar[str] = "model-promoted"

    model_name: str = Field(description="Registered model name.")
    version: int = Field(ge=1, description="Version that now holds the alias.")
    previous_version: int | None = Field(default=None, description="Version that held it before.")
    alias: str = Field(
        default="production", description="Alias that moved: production, challenger or canary."
    )
    reason: PromotionReason = Field(
        description="auto, manual, rollback, external, guard (the rollout guard restored "
        "the version before, or withdrew a canary: `breaches` says why) or rollout (a canary "
        "that went through its steps)."
    )
    withdrawn: bool = Field(
        default=False,
        description="True: the alias was taken off `version` (a canary ended), not put on it.",
    )
    breaches: tuple[GuardBreach, ...] = Field(
        default=(),
        description="Reason guard: the checks the version taken out of service failed.",
    )


class ModelLoaded(Event):
    """A predictor replica put a model version in service, or refused it (the version it
    served before keeps serving)."""

    stream: ClassVar[str] = "model-loads"

    replica: str = Field(description="Consumer name of the replica.")
    model_name: str = Field(description="Registered model name.")
    version: int = Field(ge=1, description="Version loaded or refused.")
    serving: int | None = Field(description="Version the replica serves after this.")
    loaded: bool = Field(description="True: loaded (in service, or staged for a prefetch).")
    reason: str = Field(default="", description="Why it was refused.")
    seconds: float = Field(ge=0, description="Time spent loading, checking and warming up.")
    trigger: Literal["start", "promotion", "converge", "prefetch", "shadow", "canary"] = Field(
        description="What made the replica load it (prefetch: a version just trained, loaded "
        "ahead of its promotion and not in service yet; shadow: the model's challenger, which "
        "predicts a sample of the requests after production answered them; canary: the "
        "version the gateways route a share of the requests to)."
    )
    runtime: str = Field(
        default="",
        pattern="^(onnx|native|)$",
        description="What runs the version loaded: onnx (its verified compiled graph, through "
        "onnxruntime) or native (the model's own library); empty when refused.",
    )
    compiled: str = Field(
        default="",
        description="The compile verdict: `verified`, or `refused: <reason>` (served natively).",
    )


# --- Online prediction ------------------------------------------------------------------------


class PredictionRequested(Event):
    """Rows to predict now: concurrent HTTP requests coalesced by one gateway process into one
    batch, shared by the predictor replicas (group `predictor`) and answered on `reply_to`."""

    stream: ClassVar[str] = "predict-requests"

    model_name: str = Field(min_length=1, max_length=200, description="Registered model name.")
    reply_to: str = Field(
        min_length=1, max_length=200, description="Pub/Sub channel the answer is published on."
    )
    deadline: float = Field(
        description="Unix time (seconds) after which nobody waits for the answer any more."
    )
    columns: dict[str, list[Any]] = Field(
        description="The rows, column by column: every list has the same length."
    )
    requests: list[tuple[Annotated[str, StringConstraints(max_length=200)], int]] = Field(
        default_factory=list,
        description="The HTTP requests coalesced into the batch, in row order: (request id, "
        "rows). Empty: the batch is one request, whose id is the event id.",
    )
    target: int | None = Field(
        default=None,
        ge=1,
        description="The version to answer with: the model's canary, for requests the gateway "
        "routed to it. None: production. A replica that holds no such canary (it ended a "
        "moment ago) answers with production, and the answer says which version it is.",
    )

    @model_validator(mode="after")
    def _rectangular(self) -> Self:
        lengths = {len(values) for values in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns differ in length: {sorted(lengths)}")
        if self.requests and sum(rows for _, rows in self.requests) != self.rows:
            raise ValueError("the requests' rows do not add up to the batch's rows")
        return self

    @property
    def rows(self) -> int:
        return next((len(v) for v in self.columns.values()), 0)


PredictFailure = Literal["no_model", "invalid", "failed"]


class BatchPredicted(BaseModel):
    """The answer to a PredictionRequested, one per batch, on its `reply_to` channel (not a
    stream: nobody needs it after the gateway has it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: uuid.UUID = Field(description="event_id of the PredictionRequested answered.")
    model_name: str = Field(description="Registered model name.")
    model_version: int | None = Field(default=None, description="Version that predicted.")
    predictions: list[Any] = Field(default_factory=list, description="One per row, in order.")
    probabilities: list[list[float]] | None = Field(
        default=None, description="Class probabilities per row (classifiers), in `classes` order."
    )
    classes: list[Any] | None = Field(default=None, description="Class labels (classifiers).")
    replica: str = Field(default="", description="Consumer name of the replica that answered.")
    failure: PredictFailure | None = Field(default=None, description="Why there is no answer.")
    error: str | None = Field(default=None, description="What went wrong, for people.")


class Lineage(BaseModel):
    """Where a model version comes from: its MLflow run and the feature-store version it was
    trained on (empty for a version registered outside streamops)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str = Field(default="", description="MLflow run that logged the version.")
    dataset: str = Field(default="", description="Dataset it was trained on.")
    dataset_version: int | None = Field(default=None, description="That dataset's version.")
    content_hash: str = Field(default="", description="Content hash of that dataset version.")


class PredictionsLogged(Event):
    """Rows a replica answered online, for the prediction log: one entry per answered batch,
    compacted into Parquet by the loggers (group `prediction-log`, in the ingestor)."""

    stream: ClassVar[str] = "predictions"

    model_name: str = Field(min_length=1, max_length=200, description="Registered model name.")
    model_version: int = Field(ge=1, description="Version that answered.")
    replica: str = Field(default="", description="Consumer name of the replica that answered.")
    latency_ms: float = Field(ge=0, description="Time the replica took to predict the batch.")
    requests: list[tuple[Annotated[str, StringConstraints(max_length=200)], int]] = Field(
        min_length=1, description="The requests answered, in row order: (request id, rows)."
    )
    features: dict[str, list[Any]] | None = Field(
        description="The rows as received, column by column; null when the model's features "
        "are not kept (STREAMOPS_PREDICTOR_LOG_WITHOUT_FEATURES)."
    )
    predictions: list[Any] = Field(description="One per row, in order.")
    probabilities: list[list[float]] | None = Field(
        default=None, description="Class probabilities per row (classifiers), in `classes` order."
    )
    classes: list[Any] | None = Field(default=None, description="Class labels (classifiers).")
    lineage: Lineage = Field(default_factory=Lineage, description="Where the version comes from.")
    shadow: bool = Field(
        default=False,
        description="A challenger's answers to production's requests, never sent to a client "
        "(docs/rollout.md); logged without features (production's records of the same "
        "requests have them).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        rows = len(self.predictions)
        if sum(count for _, count in self.requests) != rows:
            raise ValueError("the requests' rows do not add up to the predictions")
        lengths = {len(values) for values in (self.features or {}).values()}
        if lengths - {rows} or (self.probabilities is not None and len(self.probabilities) != rows):
            raise ValueError("features, predictions and probabilities differ in length")
        return self


class PredictionsFailed(Event):
    """Rows a model version failed to predict online (answered 502): what the rollout guard
    counts as the version's errors. Rows refused as invalid are the client's, not counted."""

    stream: ClassVar[str] = "predict-failures"

    model_name: str = Field(min_length=1, max_length=200, description="Registered model name.")
    model_version: int = Field(ge=1, description="Version that failed.")
    replica: str = Field(default="", description="Consumer name of the replica.")
    rows: int = Field(ge=1, description="Rows of the batches that failed.")
    error: str = Field(default="", max_length=2000, description="The first failure's message.")


LabelValue = str | bool | int | float


class Label(BaseModel):
    """The truth about one answered row, known later."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str = Field(
        min_length=1, max_length=200, description="The request's id (X-Request-Id, or job id)."
    )
    row: int = Field(default=0, ge=0, description="The row within the request (0 for one row).")
    label: LabelValue = Field(description="The true class, or the true value (regression).")


class LabelsArrived(Event):
    """Ground truth for rows a model answered: joined to the prediction log by the label
    joiners (group `label-join`, in the ingestor), for live quality."""

    stream: ClassVar[str] = "labels-arrived"

    model_name: str = Field(min_length=1, max_length=200, description="Registered model name.")
    labels: list[Label] = Field(
        min_length=1, max_length=10_000, description="The labels, at most 10,000 per event."
    )


RetrainReason = Literal["drift", "decay", "schedule"]


class RetrainRequested(Event):
    """A model is to be retrained though no new data arrived: its spec's `retrain` rules saw
    drift, decay, or its schedule come round (the trainer's retrain watcher)."""

    stream: ClassVar[str] = "retrain-requested"

    model_name: str = Field(min_length=1, max_length=200, description="Registered model name.")
    dataset: DatasetName
    version: int | None = Field(
        default=None, ge=1, description="The production version judged (none: no production)."
    )
    reason: RetrainReason = Field(description="drift, decay or schedule.")
    evidence: dict[str, float] = Field(
        default_factory=dict,
        description="The figures against the rule: PSI per drifted feature, or the live "
        "metrics and labelled rows, or the minutes since the last request.",
    )


# --- Batch scoring ------------------------------------------------------------------------------


class ParquetInput(BaseModel):
    """A Parquet file to score."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["parquet"] = "parquet"
    uri: str = Field(
        description=(
            "Local path or file:// URI of the Parquet file, or an s3:// URI under an allowed "
            "prefix (the feature store's, or STREAMOPS_PREDICTOR_SCORE_URIS)."
        )
    )


class FeatureStoreInput(BaseModel):
    """A feature-store version to score."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["feature_store"] = "feature_store"
    dataset: DatasetName
    version: int | None = Field(default=None, ge=1, description="Version; latest when absent.")


class ScoreRequested(Event):
    """Score rows with a model: inline rows, or a reference to a file or dataset version."""

    stream: ClassVar[str] = "score-requested"

    job_id: str = Field(min_length=1, max_length=200, description="Client-chosen job id.")
    model_name: str = Field(description="Registered model name; its production version scores.")
    rows: tuple[dict[str, Any], ...] | None = Field(
        default=None, description="Rows to score inline (bounded)."
    )
    input: ParquetInput | FeatureStoreInput | None = Field(
        default=None, discriminator="kind", description="Where the rows are, when not inline."
    )

    @model_validator(mode="after")
    def _one_input(self) -> Self:
        if (self.rows is None) == (self.input is None):
            raise ValueError("give exactly one of `rows` and `input`")
        return self


class Scored(Event):
    """Results of a scoring job (inline predictions, or where they were written)."""

    stream: ClassVar[str] = "scored"

    job_id: str = Field(description="The job this answers.")
    model_name: str = Field(description="Registered model name.")
    model_version: int = Field(ge=1, description="Version that produced the predictions.")
    rows: int = Field(ge=0, description="Number of rows scored.")
    predictions: tuple[Any, ...] | None = Field(
        default=None, description="One prediction per input row, in input order (inline jobs)."
    )
    output_uri: str | None = Field(default=None, description="Parquet file with the results.")


class ScoreChunkRequested(Event):
    """One chunk of a file scoring job: rows [start, stop) of the input, scored by whichever
    predictor replica (group `predictor`) reads it first, with the version pinned at planning."""

    stream: ClassVar[str] = "score-chunks"

    job_id: str = Field(min_length=1, max_length=200, description="The job this chunk is part of.")
    model_name: str = Field(min_length=1, description="Registered model name.")
    model_version: int = Field(ge=1, description="Version pinned for the whole job.")
    chunk: int = Field(ge=0, description="Index of this chunk, 0 for the first rows.")
    chunks: int = Field(ge=1, description="Number of chunks in the job.")
    start: int = Field(ge=0, description="First input row of the chunk (0-based).")
    stop: int = Field(ge=0, description="One past the last input row of the chunk.")
    input_path: str = Field(min_length=1, description="Resolved local path of the input Parquet.")
    output_path: str = Field(min_length=1, description="Where the assembled results go.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.stop < self.start or self.chunk >= self.chunks:
            raise ValueError("need start <= stop and chunk < chunks")
        return self


class ScoreRejected(Event):
    """A scoring job was refused (input missing or outside the roots, missing feature columns,
    unknown model, no model in service, too many inline rows)."""

    stream: ClassVar[str] = "score-rejected"

    job_id: str = Field(description="The job refused.")
    model_name: str = Field(description="Registered model name the job asked for.")
    reason: str = Field(description="Why, for people.")


ALL_EVENTS: tuple[type[Event], ...] = (
    DataArrived,
    DataIngested,
    DataRejected,
    ModelTrained,
    ModelPromoted,
    ModelLoaded,
    PredictionRequested,
    PredictionsLogged,
    LabelsArrived,
    RetrainRequested,
    ScoreRequested,
    Scored,
    ScoreChunkRequested,
    ScoreRejected,
)
STREAMS: dict[str, type[Event]] = {e.stream: e for e in ALL_EVENTS}
