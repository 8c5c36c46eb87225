"""Dataset specs: what a dataset's rows look like, declared in YAML without touching code.

A spec lives at `<datasets_dir>/<name>/spec.yaml` (see docs/datasets.md). From it come:

- `row_model(spec)`: the pydantic model of one row, the authority on what is valid;
- `arrow_schema(spec)`: the Parquet schema of the stored versions.

The ingestor validates whole columns at once but must agree with `row_model` row for row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
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
        return self

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def fingerprint(self) -> str:
        """Hash of everything that decides which rows are valid."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def spec_path(datasets_dir: Path, name: str) -> Path:
    return datasets_dir / name / "spec.yaml"


def load_spec(datasets_dir: Path, name: str) -> DatasetSpec:
    """The spec of dataset `name`; UnknownDataset when there is none."""
    path = spec_path(datasets_dir, name)
    if not path.is_file():
        raise UnknownDataset(f"no dataset spec for {name!r} (looked for {path})")
    return parse_spec(path.read_text(), source=str(path), expected_name=name)


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
