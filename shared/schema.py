"""What a served model takes: its input columns, from a dataset spec or from its MLflow signature.

A model streamops trained has a dataset spec, whose feature columns (with their constraints)
are its input. A model registered elsewhere (a notebook's `mlflow.lightgbm.log_model`, a custom
`mlflow.pyfunc` model) has no spec: its input is its MLflow signature's columns. Both become a
`ModelSchema`, and everything downstream (the gateway's request body and OpenAPI document, the
predictor's input frame, batch scoring's column check) reads only that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal, Self

import pyarrow as pa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator

ColumnType = Literal["float", "int", "str", "bool", "datetime"]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

ARROW_TYPES: dict[str, pa.DataType] = {
    "float": pa.float64(),
    "int": pa.int64(),
    "str": pa.string(),
    "bool": pa.bool_(),
    "datetime": pa.timestamp("us", tz="UTC"),
}

# MLflow signature column types (mlflow.types.DataType names) → ours, and the NumPy type the
# model's own schema enforcement wants (it refuses int64 for an `integer` column).
SIGNATURE_TYPES: dict[str, tuple[ColumnType, str | None]] = {
    "boolean": ("bool", None),
    "integer": ("int", "int32"),
    "long": ("int", "int64"),
    "float": ("float", "float32"),
    "double": ("float", "float64"),
    "string": ("str", None),
    "datetime": ("datetime", None),
}


class Column(BaseModel):
    """One input column: its type and the constraints every value must meet."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=256)
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
    dtype: str | None = Field(
        default=None,
        pattern=r"^(int32|int64|float32|float64)$",
        description="NumPy type the model wants this column in (signature columns).",
    )

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


class ModelSchema(BaseModel):
    """The input of one registered model, as the gateway validates it and the predictor feeds it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = Field(min_length=1, max_length=200)
    source: Literal["spec", "signature"] = Field(
        description="spec: the dataset spec's feature columns; signature: the MLflow signature's."
    )
    columns: tuple[Column, ...] = Field(min_length=1)
    # A spec's models were fitted on booleans as 0/1 floats (shared.datasets.feature_frame).
    bools_as_float: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def fingerprint(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class UnservableSignature(ValueError):
    """The model's signature cannot be turned into request columns (the reason says why)."""


def from_signature(model_name: str, signature: Any) -> ModelSchema:
    """The schema of a model registered without a dataset spec, from its MLflow
    `ModelSignature`; UnservableSignature when it has none or it is not a column signature."""
    if signature is None or signature.inputs is None:
        raise UnservableSignature(
            "the model has no signature: log it with `signature=infer_signature(X, y)` (or an "
            "input_example) so streamops knows its input columns"
        )
    inputs = signature.inputs
    if not inputs.is_tensor_spec() and inputs.has_input_names():
        return ModelSchema(
            model_name=model_name,
            source="signature",
            columns=tuple(_signature_column(spec) for spec in inputs.inputs),
        )
    if inputs.is_tensor_spec():
        raise UnservableSignature(
            "the signature is a tensor signature; streamops serves column signatures (log the "
            "model with a pandas DataFrame as its input example)"
        )
    raise UnservableSignature("the signature's input columns have no names")


def _signature_column(spec: Any) -> Column:
    kind = getattr(spec.type, "name", str(spec.type))
    if kind not in SIGNATURE_TYPES:
        raise UnservableSignature(
            f"input column {spec.name!r} has type {kind!r}; streamops serves "
            f"{sorted(SIGNATURE_TYPES)}"
        )
    ours, dtype = SIGNATURE_TYPES[kind]
    return Column(name=spec.name, type=ours, nullable=not spec.required, dtype=dtype)


def input_frame(schema: ModelSchema, frame: Any) -> Any:
    """The model's input: the schema's columns of `frame` (a pandas DataFrame) in order, an
    optional column that is absent as missing values, booleans as 0/1 floats for spec models
    and each column in the NumPy type the signature asks for."""
    out = frame.reindex(columns=list(schema.names)) if _missing(schema, frame) else frame
    out = out[list(schema.names)].copy()
    for col in schema.columns:
        if col.type == "bool" and schema.bools_as_float:
            out[col.name] = out[col.name].astype("float64")
        elif col.dtype is not None and not (col.nullable and out[col.name].isna().any()):
            out[col.name] = out[col.name].astype(col.dtype)
    return out


def input_columns(schema: ModelSchema, columns: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """The schema's columns of an online batch as plain lists, for a compiled model (which is
    fed from them directly): an optional column that is absent as missing values, a required
    one absent a KeyError, as `input_frame` says."""
    absent = [c for c in schema.columns if c.name not in columns]
    required = [c.name for c in absent if not c.nullable]
    if required:
        raise KeyError(f"missing input columns: {required}")
    rows = len(next(iter(columns.values()), ()))
    return {c.name: columns[c.name] if c.name in columns else [None] * rows for c in schema.columns}


def _missing(schema: ModelSchema, frame: Any) -> bool:
    present = set(frame.columns)
    absent = [c for c in schema.columns if c.name not in present]
    required = [c.name for c in absent if not c.nullable]
    if required:
        raise KeyError(f"missing input columns: {required}")
    return bool(absent)


def field_type(col: Column) -> Any:
    """The pydantic type of one value of `col`, with its constraints."""
    base: Any
    if col.type == "float":
        base = Annotated[
            float, Field(allow_inf_nan=False, ge=col.ge, gt=col.gt, le=col.le, lt=col.lt)
        ]
    elif col.type == "int":
        # Stored as int64: a larger value is invalid, and says so, rather than overflowing.
        ge = INT64_MIN if col.ge is None else max(col.ge, INT64_MIN)
        le = INT64_MAX if col.le is None else min(col.le, INT64_MAX)
        if col.dtype == "int32":
            ge, le = max(ge, -(2**31)), min(le, 2**31 - 1)
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


def _one_of(allowed: frozenset[Any], shown: str) -> Any:
    def check(value: Any) -> Any:
        if value is not None and value not in allowed:
            raise ValueError(f"must be one of {shown}")
        return value

    return check


def python_name(text: str) -> str:
    """`text` as a Python (and OpenAPI component) name: other characters become `_`."""
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in text)
    return out if out[:1].isalpha() or out[:1] == "_" else f"_{out}"


@cache
def row_model(schema: ModelSchema) -> type[BaseModel]:
    """The pydantic model of one row a model predicts on: the schema's columns with their types
    and constraints. Fields are addressed by their column names (aliases), so any name works;
    other columns are ignored, so whole records can be sent as they are."""
    fields: dict[str, Any] = {
        f"c{i}": (
            field_type(col),
            # A nullable input may be left out: missing is what null means to the model.
            Field(None if col.nullable else ..., alias=col.name, description=col.description),
        )
        for i, col in enumerate(schema.columns)
    }
    model: type[BaseModel] = create_model(
        f"{python_name(schema.model_name)}_features",
        __config__=ConfigDict(extra="ignore", frozen=True, populate_by_name=False),
        **fields,
    )
    return model
