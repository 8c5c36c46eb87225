"""Dataset specs: what a dataset's rows look like, declared in YAML without touching code.

A spec lives at `<datasets_dir>/<name>/spec.yaml` (see docs/datasets.md). From it come:

- `row_model(spec)`: the pydantic model of one row, the authority on what is valid;
- `arrow_schema(spec)`: the Parquet schema of the stored versions.

The ingestor validates whole columns at once but must agree with `row_model` row for row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal, Self

import pyarrow as pa
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from shared.errors import ConfigError, UnknownDataset
from shared.events import DatasetName
from shared.schema import (
    Column,
    ModelSchema,
    field_type,
)
from shared.schema import row_model as schema_row_model

RESERVED_COLUMNS = frozenset({"version"})


class ColumnSpec(Column):
    """One column of a dataset: its type and the constraints every value must meet."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_COLUMNS or name.startswith("__"):
            raise ValueError(
                f"column name {name!r} is reserved (the feature store adds "
                "`version` when reading several versions)"
            )
        return name

    @field_validator("dtype")
    @classmethod
    def _no_dtype(cls, dtype: str | None) -> str | None:
        if dtype is not None:
            raise ValueError("dtype is for signature columns; a spec column has a type")
        return dtype


Task = Literal["classification", "regression"]
METRICS: dict[str, dict[str, bool]] = {
    # metric -> higher is better
    "classification": {"accuracy": True, "f1": True, "roc_auc": True, "log_loss": False},
    "regression": {"rmse": False, "mae": False, "r2": True},
}


class EstimatorSpec(BaseModel):
    """A scikit-learn estimator by name (see trainer/estimators.py) and its parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="e.g. HistGradientBoostingClassifier")
    params: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments.")

    def __hash__(self) -> int:  # params is a dict: hash the canonical JSON
        return hash((self.name, json.dumps(self.params, sort_keys=True, default=str)))


class GateSpec(BaseModel):
    """What a new model must achieve on the hold-out rows to be promoted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    minimum: dict[str, float] = Field(default_factory=dict, description="metric >= value")
    maximum: dict[str, float] = Field(default_factory=dict, description="metric <= value")
    champion_margin: float = Field(
        default=0.0,
        ge=0.0,
        description="How much worse than the production model, on the decisive metric and the "
        "same hold-out rows, the new model may be.",
    )

    def __hash__(self) -> int:
        return hash(json.dumps(self.model_dump(), sort_keys=True))


class RetrainSpec(BaseModel):
    """When the trainer retrains a model with no new data having arrived (docs/feedback.md):
    on drift, on decay, on a schedule; never twice within the cooldown."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drift_psi: float | None = Field(
        default=None,
        gt=0,
        description="Retrain when a feature's PSI, over the rows production answered in the "
        "last `drift_minutes` (the prediction log), is above this (0.25: a real shift).",
    )
    drift_minutes: float = Field(default=15.0, gt=0, le=7 * 24 * 60)
    drift_min_rows: int = Field(
        default=500, ge=10, description="Fewer logged rows in the window: no verdict."
    )
    decay: bool = Field(
        default=False,
        description="Retrain when production's live quality on its last `decay_rows` labelled "
        "rows is outside the gate's bounds.",
    )
    decay_rows: int = Field(default=200, ge=10, le=1_000_000)
    schedule_minutes: float | None = Field(
        default=None, gt=0, description="Retrain this often whatever the figures say."
    )
    cooldown_minutes: float = Field(
        default=60.0, ge=0, description="After a retrain request, none for this long."
    )
    data: Literal["newest_version", "prediction_log"] = Field(
        default="newest_version",
        description="What a retrain trains on: the dataset's newest version, or a new version "
        "made by the ingestor from the newest version not itself made from the log, followed "
        "by the model's labelled prediction log of the last `log_days` days.",
    )
    log_days: float = Field(default=7.0, gt=0, le=366, description="The log window, in days.")


class ShadowGateSpec(BaseModel):
    """Shadow evidence before a promotion (docs/rollout.md): a version that passes the hold-out
    gate becomes the challenger, not production; the guard promotes it once it has shadowed
    `min_rows` rows and is no worse than production by more than `margin` (on live quality
    when both have `min_labelled_rows` labelled rows since, else on agreement: the share of
    rows given production's label, at least 1 - margin). Otherwise it stays a challenger."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample: float = Field(default=0.25, gt=0, le=1, description="Share of requests shadowed.")
    min_rows: int = Field(default=500, ge=10, description="Shadowed rows before a verdict.")
    margin: float = Field(default=0.05, ge=0, le=1, description="How much worse is tolerated.")
    max_minutes: float = Field(
        default=60.0,
        gt=0,
        le=7 * 24 * 60,
        description="Watched this long at most; without evidence enough it stays a challenger.",
    )


class RolloutSpec(BaseModel):
    """How a new version of the model takes traffic (docs/rollout.md): the guard that watches
    it after a promotion and during a canary, and the canary's automatic steps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    guard: bool = Field(
        default=True, description="Watch every promotion and canary, and undo a bad one."
    )
    watch_minutes: float = Field(
        default=10.0, gt=0, le=24 * 60, description="How long a new version is watched."
    )
    baseline_minutes: float = Field(
        default=10.0,
        gt=0,
        le=24 * 60,
        description="A promotion's new version is compared with what the old one answered in "
        "the last this many minutes before it (a canary: with production over the same time).",
    )
    min_rows: int = Field(
        default=200,
        ge=10,
        description="Rows the new version (and the one it is compared with) must have answered "
        "before the guard judges errors, latency or the prediction shift.",
    )
    breach_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="How long a check must keep failing before the guard acts (0: at once).",
    )
    max_error_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Share of the new version's rows that failed (502) above which it breaches.",
    )
    max_p99_ratio: float = Field(
        default=3.0,
        ge=1,
        description="The new version's p99 predict latency breaches above this many times the "
        "old one's (and above p99_floor_ms).",
    )
    p99_floor_ms: float = Field(
        default=50.0, gt=0, description="A p99 under this never breaches, whatever the ratio."
    )
    max_prediction_psi: float = Field(
        default=0.25,
        gt=0,
        description="PSI of the new version's predictions against the old one's (labels, or "
        "deciles of values) above which it breaches: 0.25 is the conventional real shift.",
    )
    min_labelled_rows: int = Field(
        default=100,
        ge=10,
        description="Labelled rows of the new version before its live quality is held against "
        "the gate's bounds.",
    )
    shadow_first: ShadowGateSpec | None = Field(
        default=None,
        description="Ask for shadow evidence before an automatic promotion (none: the hold-out "
        "gate decides alone).",
    )
    steps: tuple[float, ...] = Field(
        default=(),
        description="Percents a canary goes through, one every `step_minutes` while the guard "
        "holds; reaching 100 promotes it. Empty: a canary stays where it was set.",
    )
    step_minutes: float = Field(default=10.0, gt=0, le=24 * 60)

    @model_validator(mode="after")
    def _steps_climb(self) -> Self:
        steps = list(self.steps)
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError(f"rollout.steps must climb within (0, 100]: {steps}")
        return self


# `package.module:function`: a function of a module importable by the trainer (docs/training.md).
ENTRY_POINT = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


class TrainingSpec(BaseModel):
    """How the trainer builds, judges and promotes a model of the dataset: a built-in
    estimator, or the user's own training function (`entry_point`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: Task
    estimator: EstimatorSpec | None = Field(
        default=None, description="A built-in estimator (trainer/estimators.py)."
    )
    entry_point: str | None = Field(
        default=None,
        pattern=ENTRY_POINT,
        description="`package.module:function` that returns a fitted model, instead of an "
        "estimator; imported from the trainer's environment or its plugins directory.",
    )
    entry_params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the entry point."
    )
    model_name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
        description="Registered model name; the dataset's name by default.",
    )
    exclude: tuple[str, ...] = Field(default=(), description="Columns that are not features.")
    train_on: Literal["latest", "all"] = "latest"
    split: Literal["random", "time"] = Field(
        default="random", description="time: the newest rows (by the timestamp) are held out."
    )
    holdout_fraction: float = Field(default=0.2, ge=0.05, le=0.5)
    seed: int = 42
    metric: str = Field(description="The metric that decides (gate and champion comparison).")
    gate: GateSpec = Field(default_factory=GateSpec)
    promotion: Literal["auto", "manual"] = "auto"
    retrain: RetrainSpec | None = Field(
        default=None, description="Retraining on drift, decay or a schedule (none: only on data)."
    )

    @model_validator(mode="after")
    def _estimator_or_entry_point(self) -> Self:
        if (self.estimator is None) == (self.entry_point is None):
            raise ValueError(
                "training needs exactly one of `estimator` (a built-in estimator by name) and "
                '`entry_point` ("package.module:function", your own training code)'
            )
        if self.entry_params and self.entry_point is None:
            raise ValueError(
                "training.entry_params are for an entry_point; an estimator has params"
            )
        return self

    @model_validator(mode="after")
    def _metrics_fit_task(self) -> Self:
        known = METRICS[self.task]
        for name in (self.metric, *self.gate.minimum, *self.gate.maximum):
            if name not in known:
                raise ValueError(f"metric {name!r} is not one of {sorted(known)} ({self.task})")
        return self

    def fingerprint(self) -> str:
        """Hash of how models are trained. The keys a spec leaves unset are left out, so the
        fingerprints (and training keys) of estimator specs stay what they were before entry
        points existed, and an entry point or its parameters changing changes it."""
        dumped = self.model_dump(mode="json")
        for key in ("estimator", "entry_point", "entry_params"):
            if not dumped[key]:
                del dumped[key]
        # When to retrain says nothing about how: the same model, the same key.
        del dumped["retrain"]
        canonical = json.dumps(dumped, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def __hash__(self) -> int:  # entry_params is a dict: hash the canonical JSON
        return hash(self.fingerprint())


class LabelsSpec(BaseModel):
    """A dataset of ground truth for a model's answers: each version's rows are published as
    labels (`labels-arrived`), keyed by a request id column; the spec's target is the label
    (docs/feedback.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1, max_length=200, description="Registered model labelled.")
    request_id: str = Field(default="request_id", description="The request id column.")
    row: str | None = Field(
        default=None, description="The row-within-request column (none: every row is 0)."
    )


class DatasetSpec(BaseModel):
    """A dataset: its columns, the target to predict and an optional timestamp column."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: DatasetName
    description: str = ""
    target: str
    timestamp: str | None = None
    max_bad_fraction: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Overrides the ingestor's setting."
    )
    columns: tuple[ColumnSpec, ...] = Field(min_length=1)
    training: TrainingSpec | None = Field(default=None, description="How to train a model.")
    labels: LabelsSpec | None = Field(
        default=None, description="Ground truth for a model's answers, instead of training data."
    )
    rollout: RolloutSpec | None = Field(
        default=None,
        description="How new versions of the model take traffic (none: the defaults).",
    )

    @model_validator(mode="after")
    def _references_exist(self) -> Self:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("column names must be unique")
        if self.target not in names:
            raise ValueError(f"target {self.target!r} is not a column")
        if self.timestamp is not None:
            if self.timestamp not in names:
                raise ValueError(f"timestamp {self.timestamp!r} is not a column")
            if self.column(self.timestamp).type != "datetime":
                raise ValueError(f"timestamp {self.timestamp!r} must be a datetime column")
        if self.training is not None:
            unknown = [c for c in self.training.exclude if c not in names]
            if unknown:
                raise ValueError(f"training.exclude names unknown columns: {unknown}")
            if self.training.split == "time" and self.timestamp is None:
                raise ValueError("training.split 'time' needs a timestamp column")
        self._log_can_fill_every_column()
        self._sections_fit(names)
        return self

    def _sections_fit(self, names: list[str]) -> None:
        """`labels` and `rollout` go with what they are about."""
        if self.rollout is not None and self.training is None:
            raise ValueError("`rollout` is about the model a spec trains: it needs `training`")
        if self.labels is not None:
            if self.training is not None:
                raise ValueError("a labels dataset trains nothing: no `training` section")
            for key in (self.labels.request_id, self.labels.row):
                if key is not None and key not in names:
                    raise ValueError(f"labels names column {key!r}, which the spec lacks")

    def _log_can_fill_every_column(self) -> None:
        """A spec that retrains on its prediction log: the log gives the features, the label
        gives the target and the answer time the timestamp; any other column has no value in
        a logged row, so it must be nullable (docs/feedback.md)."""
        retrain = self.training.retrain if self.training is not None else None
        if retrain is None or retrain.data != "prediction_log":
            return
        filled = {self.target, self.timestamp, *(c.name for c in self.feature_columns)}
        unfilled = [c.name for c in self.columns if c.name not in filled and not c.nullable]
        if unfilled:
            raise ValueError(
                f"retrain.data prediction_log: the log has no value for {unfilled} "
                "(not a feature, the target or the timestamp): make them nullable"
            )

    @property
    def model_name(self) -> str:
        if self.training is not None and self.training.model_name:
            return self.training.model_name
        return self.name

    @property
    def feature_columns(self) -> tuple[ColumnSpec, ...]:
        """What a model sees: every column but the target, the timestamp, datetimes and the
        training spec's exclusions."""
        skip = {self.target, self.timestamp, *(self.training.exclude if self.training else ())}
        return tuple(c for c in self.columns if c.name not in skip and c.type != "datetime")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def fingerprint(self) -> str:
        """Hash of everything that decides which rows are valid (not descriptions, not the
        training spec: changing how models are trained does not change the data)."""
        decisive = self.model_dump(mode="json", include={"columns", "max_bad_fraction"})
        for col in decisive["columns"]:
            col.pop("description", None)
        canonical = json.dumps(decisive, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def feature_frame(spec: DatasetSpec, frame: Any) -> Any:
    """The model's input: the feature columns of `frame` (a pandas DataFrame), booleans as 0/1
    floats. Training and serving both call this, so they cannot disagree."""
    names = [c.name for c in spec.feature_columns]
    out = frame[names].copy()
    for col in spec.feature_columns:
        if col.type == "bool":
            out[col.name] = out[col.name].astype("float64")
    return out


def spec_path(datasets_dir: Path, name: str) -> Path:
    return datasets_dir / name / "spec.yaml"


def load_spec(datasets_dir: Path, name: str) -> DatasetSpec:
    """The spec of dataset `name`; UnknownDataset when there is none."""
    path = spec_path(datasets_dir, name)
    if not path.is_file():
        raise UnknownDataset(f"no dataset spec for {name!r} (looked for {path})")
    return parse_spec(path.read_text(), source=str(path), expected_name=name)


def served_specs(datasets_dir: Path, names: Sequence[str] | None = None) -> dict[str, DatasetSpec]:
    """The specs with a training section (the datasets that have a model to serve), by
    registered model name: those of `names`, or of every dataset in `datasets_dir`."""
    if names is None:
        names = sorted(p.parent.name for p in datasets_dir.glob("*/spec.yaml"))
    specs = (load_spec(datasets_dir, name) for name in names)
    return {spec.model_name: spec for spec in specs if spec.training is not None}


def parse_spec(text: str, source: str = "<spec>", expected_name: str | None = None) -> DatasetSpec:
    try:
        raw = yaml.safe_load(text)
        spec = DatasetSpec.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"invalid dataset spec {source}: {exc}") from exc
    if expected_name is not None and spec.name != expected_name:
        raise ConfigError(f"{source} declares dataset {spec.name!r}, expected {expected_name!r}")
    return spec


def arrow_schema(spec: DatasetSpec) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in spec.columns])


@cache
def row_model(spec: DatasetSpec) -> type[BaseModel]:
    """The pydantic model of one row. Fields are addressed by their column names (aliases), so
    any column name works, even one that clashes with a pydantic attribute."""
    fields: dict[str, Any] = {
        f"c{i}": (field_type(col), Field(alias=col.name, description=col.description))
        for i, col in enumerate(spec.columns)
    }
    model: type[BaseModel] = create_model(
        f"{spec.name.replace('-', '_')}_row",
        __config__=ConfigDict(extra="forbid", frozen=True, populate_by_name=False),
        **fields,
    )
    return model


def spec_schema(spec: DatasetSpec) -> ModelSchema:
    """What the model of `spec` takes: its feature columns, with the spec's constraints."""
    return ModelSchema(
        model_name=spec.model_name,
        source="spec",
        columns=spec.feature_columns,
        bools_as_float=True,
    )


def feature_row_model(spec: DatasetSpec) -> type[BaseModel]:
    """The pydantic model of one row a model predicts on (shared.schema.row_model of the
    spec's schema): other columns are ignored, so whole records can be sent as they are."""
    return schema_row_model(spec_schema(spec))
