"""Dataset specs: what a dataset's rows look like, declared in YAML without touching code.

A spec lives at `<datasets_dir>/<name>/spec.yaml` (see docs/datasets.md). From it come:

- `row_model(spec)`: the pydantic model of one row, the authority on what is valid;
- `arrow_schema(spec)`: the Parquet schema of the stored versions.

The ingestor validates whole columns at once but must agree with `row_model` row for row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import pyarrow as pa
import yaml
from pydantic import (
    AfterValidator,
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

ColumnType = Literal["float", "int", "str", "bool", "datetime"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
RESERVED_COLUMNS = frozenset({"version"})

ARROW_TYPES: dict[str, pa.DataType] = {
    "float": pa.float64(),
    "int": pa.int64(),
    "str": pa.string(),
    "bool": pa.bool_(),
    "datetime": pa.timestamp("us", tz="UTC"),
}


class ColumnSpec(BaseModel):
    """One column: its type and the constraints every value must meet."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    type: ColumnType
    description: str = ""
    nullable: bool = Field(default=False, description="Whether a value may be missing.")
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=0)
    allowed: tuple[str | int, ...] | None = Field(
        default=None, min_length=1, description="The only values allowed (str and int columns)."
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_COLUMNS or name.startswith("__"):
            raise ValueError(
                f"column name {name!r} is reserved (the feature store adds "
                "`version` when reading several versions)"
            )
        return name

    @model_validator(mode="after")
    def _constraints_fit_type(self) -> Self:
        numeric = self.type in ("float", "int")
        if not numeric and any(v is not None for v in (self.ge, self.gt, self.le, self.lt)):
            raise ValueError(f"{self.name}: ge/gt/le/lt apply to float and int columns only")
        if self.type != "str" and (self.min_length is not None or self.max_length is not None):
            raise ValueError(f"{self.name}: min_length/max_length apply to str columns only")
        if self.allowed is not None:
            if self.type not in ("str", "int"):
                raise ValueError(f"{self.name}: allowed applies to str and int columns only")
            want = str if self.type == "str" else int
            if not all(type(v) is want for v in self.allowed):
                raise ValueError(f"{self.name}: allowed values must all be {self.type}")
        return self

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.type]


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


class TrainingSpec(BaseModel):
    """How the trainer builds, judges and promotes a model of the dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: Task
    estimator: EstimatorSpec
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

    @model_validator(mode="after")
    def _metrics_fit_task(self) -> Self:
        known = METRICS[self.task]
        for name in (self.metric, *self.gate.minimum, *self.gate.maximum):
            if name not in known:
                raise ValueError(f"metric {name!r} is not one of {sorted(known)} ({self.task})")
        return self

    def fingerprint(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


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
        return self

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


def _one_of(allowed: frozenset[Any], shown: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is not None and value not in allowed:
            raise ValueError(f"must be one of {shown}")
        return value

    return check


def _field_type(col: ColumnSpec) -> Any:
    base: Any
    if col.type == "float":
        base = Annotated[
            float, Field(allow_inf_nan=False, ge=col.ge, gt=col.gt, le=col.le, lt=col.lt)
        ]
    elif col.type == "int":
        # Stored as int64: a larger value is invalid, and says so, rather than overflowing.
        ge = INT64_MIN if col.ge is None else max(col.ge, INT64_MIN)
        le = INT64_MAX if col.le is None else min(col.le, INT64_MAX)
        base = Annotated[int, Field(ge=ge, gt=col.gt, le=le, lt=col.lt)]
    elif col.type == "str":
        base = Annotated[str, Field(min_length=col.min_length, max_length=col.max_length)]
    elif col.type == "bool":
        base = bool
    else:
        base = datetime
    if col.allowed is not None:
        shown = ", ".join(repr(v) for v in col.allowed)
        base = Annotated[base, AfterValidator(_one_of(frozenset(col.allowed), shown))]
    return base | None if col.nullable else base


@cache
def row_model(spec: DatasetSpec) -> type[BaseModel]:
    """The pydantic model of one row. Fields are addressed by their column names (aliases), so
    any column name works, even one that clashes with a pydantic attribute."""
    fields: dict[str, Any] = {
        f"c{i}": (_field_type(col), Field(alias=col.name, description=col.description))
        for i, col in enumerate(spec.columns)
    }
    model: type[BaseModel] = create_model(
        f"{spec.name.replace('-', '_')}_row",
        __config__=ConfigDict(extra="forbid", frozen=True, populate_by_name=False),
        **fields,
    )
    return model


@cache
def feature_row_model(spec: DatasetSpec) -> type[BaseModel]:
    """The pydantic model of one row a model predicts on: the feature columns with the spec's
    types and constraints. Other columns are ignored, so whole records can be sent as they are."""
    fields: dict[str, Any] = {
        f"c{i}": (
            _field_type(col),
            # A nullable feature may be left out: missing is what null means to the model.
            Field(None if col.nullable else ..., alias=col.name, description=col.description),
        )
        for i, col in enumerate(spec.feature_columns)
    }
    model: type[BaseModel] = create_model(
        f"{spec.model_name.replace('-', '_')}_features",
        __config__=ConfigDict(extra="ignore", frozen=True, populate_by_name=False),
        **fields,
    )
    return model
