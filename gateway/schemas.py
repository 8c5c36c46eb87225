"""HTTP bodies. The predict request of each model is generated from its input schema
(`predict_request`: the dataset spec's feature columns, or the MLflow signature's), so the
OpenAPI document shows the real column names, types and limits. `errors` declares an
operation's error answers, so generated clients know them too."""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
    model_validator,
)

from shared.events import FeatureStoreInput, ParquetInput, Source
from shared.schema import ModelSchema, row_model


@cache
def predict_request(schema: ModelSchema, max_rows: int) -> type[BaseModel]:
    row = row_model(schema)
    model: type[BaseModel] = create_model(
        f"{row.__name__}_predict_request",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"Rows to predict with model {schema.model_name!r}.",
        rows=(
            list[row],  # type: ignore[valid-type]
            Field(
                min_length=1,
                description=f"One or more rows (at most {max_rows}); columns that are not "
                "inputs of the model are ignored.",
            ),
        ),
    )
    return model


# What a model answers per row depends on the model: documented exactly, kept as `Any` at run
# time (validating every prediction of every answer again would cost for nothing).
_ONE_PREDICTION = {
    "anyOf": [
        {"type": ["number", "string", "boolean", "null"], "title": "Value"},
        {"type": "array", "title": "Values (a model with a 2-D output)"},
        {
            "type": "object",
            "additionalProperties": True,
            "title": "Column → value (a model answering several named columns)",
        },
    ]
}
Predictions = Annotated[list[Any], WithJsonSchema({"type": "array", "items": _ONE_PREDICTION})]


class PredictResponse(BaseModel):
    model_name: str = Field(description="Registered model name.")
    model_version: int = Field(description="Version that predicted (also in `X-Model-Version`).")
    request_id: str = Field(description="Id of this request (also in `X-Request-Id`).")
    predictions: Predictions = Field(
        description="One prediction per row, in order: a value, a list of values (a model "
        "with a 2-D output) or an object of column → value (a model answering several named "
        "columns)."
    )
    classes: list[Any] | None = Field(default=None, description="Class labels (classifiers).")
    probabilities: list[list[float]] | None = Field(
        default=None, description="Per row, the probability of each class in `classes` order."
    )


class IngestRequest(BaseModel):
    """Name a source for the ingestor (to upload a file, send it as `text/csv` instead)."""

    model_config = ConfigDict(extra="forbid")

    source: Source


class Accepted(BaseModel):
    event_id: str = Field(description="Id of the event published.")
    correlation_id: str = Field(description="Id that follows the work through every stream.")
    stream: str = Field(description="Stream the event was published on.")


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="Version to put in production.")


class ShadowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="Version to shadow production (the challenger).")
    sample: float = Field(
        default=0.1, gt=0, le=1, description="Share of the online requests it predicts too."
    )


class CanaryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="Version to answer a share of the requests.")
    percent: float = Field(
        default=10, gt=0, le=100, description="Percent of the online requests routed to it."
    )


class Promoted(BaseModel):
    model_name: str
    version: int = Field(description="Version that now holds the alias.")
    previous_version: int | None
    reason: str
    alias: str = Field(default="production", description="The alias moved.")
    event_id: str = Field(description="Id of the model-promoted event published.")


class VersionInfo(BaseModel):
    version: int
    run_id: str
    aliases: list[str]
    metrics: dict[str, float]
    tags: dict[str, str]


class ModelInfo(BaseModel):
    model_name: str
    aliases: dict[str, int] = Field(description="Alias → version.")
    versions: list[VersionInfo]
    serving: dict[str, int] = Field(description="Predictor replica → version it serves now.")
    input: ModelSchema | None = Field(
        default=None,
        description="The columns its predict route takes (from its dataset spec or its MLflow "
        "signature); null when it is not served here.",
    )


class ScoreRequest(BaseModel):
    """A batch job: rows inline (answered on the `scored` stream and here), or a Parquet file
    or feature-store version (results written to a Parquet file)."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(min_length=1, max_length=200)
    job_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Client-chosen id (submitting the same id twice runs the job once); "
        "generated when absent.",
    )
    rows: list[dict[str, Any]] | None = Field(default=None, min_length=1)
    input: ParquetInput | FeatureStoreInput | None = Field(default=None, discriminator="kind")

    @model_validator(mode="after")
    def _one_input(self) -> Self:
        if (self.rows is None) == (self.input is None):
            raise ValueError("give exactly one of `rows` and `input`")
        return self


class ScoreAccepted(BaseModel):
    job_id: str
    status_url: str
    event_id: str


class ErrorBody(BaseModel):
    """Every error answer but request validation's 422 (FastAPI's own shape)."""

    error: str = Field(description="Name of the error (shared.errors), e.g. `ModelNotFound`.")
    detail: str = Field(description="What went wrong, for a person to read.")


class Readiness(BaseModel):
    ready: bool = Field(description="Redis answers and at least one predictor serves a model.")
    redis: bool = Field(description="Redis answered a PING.")
    predictors: dict[str, dict[str, int]] = Field(
        description="Replica → model → version, for the replicas that serve a model."
    )


# Predict's 422 is FastAPI's validation error, or InvalidRows when the model itself refuses rows
# the validation let through; the HTTPValidationError schema is FastAPI's own component.
_VALIDATION_OR_ERROR = {
    "anyOf": [
        {"$ref": "#/components/schemas/HTTPValidationError"},
        {"$ref": "#/components/schemas/ErrorBody"},
    ]
}
_KEY = "The API key is missing or wrong (only when one is configured)"
# FastAPI's answer to a JSON body it cannot even decode (not UTF-8, say); malformed JSON is 422.
_UNREADABLE = "The body cannot be decoded (BadRequest)"


def errors(
    described: dict[int, str], *, keyed: bool = False, json_body: bool = False
) -> dict[int | str, Any]:
    """The `responses=` of an operation: each status it can answer with its description and the
    error body; `keyed` adds 401 for the operations behind the API key, `json_body` the 400 of
    a body FastAPI parses. A 422 given here means validation errors or a named error, in
    either shape."""
    answers = dict(described)
    if keyed:
        answers[401] = _KEY
    if json_body:
        answers[400] = _UNREADABLE
    out: dict[int | str, Any] = {}
    for status, description in sorted(answers.items()):
        if status == 422:
            content = {"application/json": {"schema": _VALIDATION_OR_ERROR}}
            out[status] = {"description": description, "content": content}
        else:
            out[status] = {"description": description, "model": ErrorBody}
    return out
