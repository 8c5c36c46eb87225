"""Named exceptions shared by every service. Only the gateway turns them into HTTP errors."""

from __future__ import annotations


class StreamopsError(Exception):
    """Base of every error streamops raises on purpose."""


class ConfigError(StreamopsError):
    """Settings or a dataset spec are wrong; the service refuses to start or to use them."""


class EntryPointFailed(ConfigError):
    """A training entry point could not be imported, raised, or returned no usable model: that
    training fails with the reason (like a bad spec), the trainer keeps running."""


class MissingExtra(ConfigError):
    """A spec names a built-in estimator whose optional package is not installed."""


class PermanentError(StreamopsError):
    """Retrying the same message cannot succeed: it goes to the dead-letter stream at once."""


class InvalidEvent(PermanentError):
    """A stream message is not a valid event (not JSON, missing or malformed fields)."""


class UnknownDataset(PermanentError):
    """An event names a dataset that has no spec."""


class InvalidTrainingSpec(PermanentError):
    """The dataset's training section cannot be used (unknown estimator, bad parameters)."""


class SourceRejected(StreamopsError):
    """A data source is not allowed, does not exist or cannot be read as declared."""


class SourceUnavailable(StreamopsError):
    """A data source could not be reached now (network, database down); worth retrying."""


class BatchRejected(StreamopsError):
    """A whole batch of rows is refused: schema drift, or too many bad rows."""

    def __init__(
        self,
        kind: str,
        reason: str,
        details: tuple[str, ...] = (),
        total_rows: int = 0,
        bad_rows: int = 0,
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.details = details
        self.total_rows = total_rows
        self.bad_rows = bad_rows


class VersionNotFound(StreamopsError):
    """A feature-store dataset or version does not exist."""


class ModelNotFound(StreamopsError):
    """A registered model or model version does not exist."""


class NothingToRollBack(StreamopsError):
    """There is no earlier production version to go back to."""


class InvalidShadow(StreamopsError):
    """A challenger that cannot shadow: production's own version, or a sample out of (0, 1]."""


class InvalidCanary(StreamopsError):
    """A canary that cannot be: production's own version, or a percent out of (0, 100]."""


class NoModelInService(StreamopsError):
    """A predictor has no model loaded under that name (yet)."""


class ModelLoadFailed(StreamopsError):
    """A model version could not be loaded, checked or warmed up; the old one keeps serving."""


class ModelRefused(ModelLoadFailed):
    """A model version that can never be served as it is (a flavor or a pickle the trust
    policy forbids, no usable signature, columns that do not match): not retried until it is
    promoted again."""


class ScoreInputRejected(StreamopsError):
    """A scoring job is refused: its input, its model or its size (the reason says which)."""


class NoPredictor(StreamopsError):
    """No predictor replica is alive to answer."""


class PredictorTimeout(StreamopsError):
    """No predictor answered before the deadline."""


class PredictionFailed(StreamopsError):
    """A predictor took the rows but failed to predict them (its model raised)."""


class StreamsUnavailable(StreamopsError):
    """Redis, which carries the streams and the job states, cannot be reached now."""


class InvalidRows(StreamopsError):
    """Rows a model cannot predict on (wrong columns or values the validation let through)."""


class PayloadTooLarge(StreamopsError):
    """A request body or a batch is larger than the configured limit."""


class Unauthorized(StreamopsError):
    """A mutating request without the configured API key."""


class JobNotFound(StreamopsError):
    """No scoring job has that id (or it has not been planned yet, or it expired)."""


class ChunkRefused(PermanentError):
    """A score-chunks entry names files outside the predictor's roots: dead-lettered at once."""


class ReplicationLagging(StreamopsError):
    """Fewer replicas than `redis_wait_replicas` confirmed a write in time: not acked, retried."""


class CommitContended(StreamopsError):
    """A feature-store version could not claim a number: other writers kept taking the next one
    first. Transient; the ingest is retried like any other failure."""
