"""Vectorised row validation with the row model's semantics.

Checking a million rows one pydantic call at a time runs at about 150k rows/s; whole-column
pyarrow kernels run at millions. So validation has two paths:

- the fast path converts and checks each column with pyarrow, and marks a cell "sure" only
  where pydantic is known to accept it with exactly the converted value: canonical spellings
  (`1.5`, `42`, `true`, `2024-01-31T12:00:00Z`), finite, within the constraints;
- every row with a cell that is not sure goes to the slow path, the row model itself, which
  either accepts it (e.g. ` 42 ` with spaces, `1_000`, `yes`) with pydantic's values, or
  rejects it with pydantic's own error per column.

So a row is accepted if and only if pydantic accepts it; the fast path only decides how cheaply.
tests/unit/test_validate.py checks that agreement on generated inputs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from shared.datasets import ColumnSpec, DatasetSpec, arrow_schema, row_model
from shared.feature_store import QUARANTINE_SCHEMA

ROW = "__row__"


# Spellings that pyarrow converts and pydantic accepts, to the same value. pyarrow accepts more
# than pydantic for some types ("0x1" as an int, "2024-01-01T00" as a datetime), so those types
# are pre-filtered; anything else goes to the slow path.
_INT = r"^-?\d{1,18}$"
_FLOAT = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_BOOL = r"^(?i:true|false|1|0)$"
_NAIVE = r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?$"
_AWARE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})$"


@dataclass
class ChunkResult:
    """What validating one chunk produced."""

    accepted: pa.Table  # arrow_schema(spec) columns, in source order
    quarantine: pa.Table  # QUARANTINE_SCHEMA, one line per failing (row, column)
    bad_rows: int
    # Columns whose every non-null value failed type conversion: a sign of schema drift.
    wrong_type: dict[str, str] = field(default_factory=dict)


@dataclass
class _Column:
    values: pa.Array  # of the column's arrow type; meaningful where `converted`
    converted: pa.Array  # bool, no nulls: the cell converts, as pydantic would convert it
    sure: pa.Array  # bool, no nulls: pydantic accepts the cell, with `values`


def validate_chunk(
    spec: DatasetSpec, chunk: pa.Table, first_row: int, detect_drift: bool = True
) -> ChunkResult:
    """Validate `chunk` (columns named as in the spec, any arrow types) whose first row has
    source row number `first_row`. `detect_drift` also looks for columns of the wrong type."""
    rows = chunk.num_rows
    numbers = pa.array(np.arange(first_row, first_row + rows, dtype=np.int64))
    # pyarrow kernels release the GIL: columns are checked side by side.
    checked = dict(
        zip(
            spec.column_names,
            _pool().map(lambda col: _check_column(col, chunk.column(col.name)), spec.columns),
            strict=True,
        )
    )
    sure = functools.reduce(pc.and_, (col.sure for col in checked.values()))
    schema = arrow_schema(spec)
    converted = pa.table(
        [checked[c.name].values for c in spec.columns] + [numbers],
        names=[*schema.names, ROW],
    )
    fast = converted.filter(sure)
    unsure = pc.indices_nonzero(pc.invert(sure))
    rescued, quarantine, bad = _slow_path(
        spec, chunk.take(unsure), numbers.take(unsure), converted.schema
    )
    accepted = fast
    if rescued.num_rows:
        accepted = pa.concat_tables([fast, rescued]).sort_by(ROW)
    return ChunkResult(
        accepted=accepted.drop_columns([ROW]).cast(schema),
        quarantine=quarantine,
        bad_rows=bad,
        wrong_type=_wrong_types(spec, chunk, checked, quarantine) if detect_drift else {},
    )


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="validate")


def _wrong_types(
    spec: DatasetSpec, chunk: pa.Table, checked: dict[str, _Column], quarantine: pa.Table
) -> dict[str, str]:
    """Columns with values, none of which pydantic accepts: the sign of a changed schema.

    Only columns where the fast path converted nothing are candidates; pydantic has the last
    word (a column of epoch seconds is a fine datetime column for it)."""
    found: dict[str, str] = {}
    for col in spec.columns:
        raw = chunk.column(col.name)
        present = len(raw) - raw.null_count
        if not present or pc.any(checked[col.name].converted).as_py():
            continue
        mask = pc.and_(
            pc.equal(quarantine.column("column"), col.name), pc.is_valid(quarantine.column("value"))
        )
        if pc.sum(mask).as_py() == present:
            sample = next(v for v in raw.to_pylist() if v is not None)
            found[col.name] = f"expected {col.type}, no value is one (e.g. {sample!r})"
    return found


def _check_column(col: ColumnSpec, raw: pa.ChunkedArray | pa.Array) -> _Column:
    arr = raw.combine_chunks() if isinstance(raw, pa.ChunkedArray) else raw
    values, converted = _convert(col, arr)
    sure = converted
    for ok in _constraints(col, values):
        # Kleene: where nothing converted, `ok` is null and `sure` stays False.
        sure = pc.and_kleene(sure, ok)
    if col.nullable and arr.null_count:
        sure = pc.or_kleene(sure, pc.is_null(arr))
    return _Column(values=values, converted=converted, sure=sure)


def _convert(col: ColumnSpec, arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(values, converted): values of the column's type, and where the conversion is sure."""
    target = col.arrow_type
    kind = arr.type
    if pa.types.is_large_string(kind):
        arr, kind = arr.cast(pa.string()), pa.string()
    if pa.types.is_string(kind):
        values = _from_strings(col, arr)
    elif kind.equals(target):
        values = arr
    elif col.type == "float" and (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        values = arr.cast(pa.float64())
    elif col.type == "int" and pa.types.is_integer(kind):
        values = arr.cast(pa.int64(), safe=False)
    elif col.type == "int" and pa.types.is_floating(kind):
        whole = pc.and_(pc.is_finite(arr), pc.equal(arr, pc.floor(arr)))
        inside = pc.and_(pc.less(pc.abs(arr), 2.0**62), whole)
        values = _cast_where(pc.fill_null(inside, False), arr, pa.int64())
    elif col.type == "datetime" and pa.types.is_timestamp(kind):
        values = arr.cast(target) if kind.tz else pc.assume_timezone(arr, "UTC").cast(target)
    else:
        # bool from ints, str from numbers, datetime from epochs: rare, left to pydantic.
        values = pa.nulls(len(arr), target)
    # pydantic refuses inf and nan (allow_inf_nan=False): those cells are not converted.
    valid = pc.is_finite(values) if col.type == "float" else pc.is_valid(values)
    return values, pc.fill_null(valid, False)


def _from_strings(col: ColumnSpec, arr: pa.Array) -> pa.Array:
    if col.type == "str":
        return arr
    if col.type == "float":
        try:
            return arr.cast(pa.float64())  # the usual case: a clean column, one kernel
        except pa.ArrowInvalid:
            return _cast_matching(arr, _FLOAT, pa.float64())
    if col.type == "int":
        return _cast_matching(arr, _INT, pa.int64())
    if col.type == "bool":
        return _cast_matching(arr, _BOOL, pa.bool_())
    aware = _cast_matching(arr, _AWARE, pa.timestamp("us", tz="UTC"))
    rest = pc.and_(pc.is_null(aware), pc.is_valid(arr))
    if not pc.any(rest).as_py():
        return aware  # the usual case: one spelling throughout
    naive = _cast_matching(
        pc.if_else(rest, arr, pa.scalar(None, pa.string())), _NAIVE, pa.timestamp("us")
    )
    return pc.coalesce(aware, pc.assume_timezone(naive, "UTC"))


def _cast_matching(arr: pa.Array, pattern: str, target: pa.DataType) -> pa.Array:
    mask = pc.fill_null(pc.match_substring_regex(arr, pattern), False)
    return _cast_where(mask, arr, target)


def _cast_where(mask: pa.Array, arr: pa.Array, target: pa.DataType) -> pa.Array:
    candidates = pc.if_else(mask, arr, pa.scalar(None, arr.type))
    try:
        return candidates.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # A canonical-looking value pyarrow still refuses (e.g. 2024-02-30): let pydantic
        # judge this column's values in this chunk.
        return pa.nulls(len(arr), target)


def _constraints(col: ColumnSpec, values: pa.Array) -> Iterator[pa.Array]:
    """One boolean array per constraint of the column."""
    bounds = (
        (col.ge, pc.greater_equal),
        (col.gt, pc.greater),
        (col.le, pc.less_equal),
        (col.lt, pc.less),
    )
    for bound, op in bounds:
        if bound is not None:
            yield op(values, _bound_scalar(col, bound))
    if col.min_length is not None:
        yield pc.greater_equal(pc.utf8_length(values), col.min_length)
    if col.max_length is not None:
        yield pc.less_equal(pc.utf8_length(values), col.max_length)
    if col.allowed is not None:
        yield pc.is_in(values, value_set=pa.array(col.allowed, values.type))


def _bound_scalar(col: ColumnSpec, bound: float) -> pa.Scalar:
    # Compare ints with ints: a float bound would round values above 2**53 before comparing.
    if col.type == "int" and float(bound).is_integer():
        return pa.scalar(int(bound), pa.int64())
    return pa.scalar(float(bound), pa.float64())


def _slow_path(
    spec: DatasetSpec, rows: pa.Table, numbers: pa.Array, schema: pa.Schema
) -> tuple[pa.Table, pa.Table, int]:
    """Validate `rows` one by one with the row model: (rescued, quarantine, bad row count)."""
    model = row_model(spec)
    names = list(spec.column_names)
    good: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    bad = 0
    raw_rows = rows.select(names).to_pylist()
    for raw, number in zip(raw_rows, numbers.to_pylist(), strict=True):
        try:
            row = model.model_validate(raw)
        except ValidationError as exc:
            bad += 1
            lines.extend(_quarantine_lines(exc, raw, number))
            continue
        good.append({**row.model_dump(by_alias=True), ROW: number})
    rescued = pa.Table.from_pylist(good, schema=schema)
    quarantine = pa.Table.from_pylist(lines, schema=QUARANTINE_SCHEMA)
    return rescued, quarantine, bad


def _quarantine_lines(
    exc: ValidationError, raw: dict[str, Any], number: int
) -> list[dict[str, Any]]:
    lines = []
    for err in exc.errors(include_url=False):
        column = str(err["loc"][0]) if err["loc"] else None
        value = raw.get(column) if column is not None else None
        missing = column is not None and value is None
        lines.append(
            {
                "row": number,
                "column": column,
                # pydantic says "Input should be a valid number" of an empty cell: say what it is.
                "reason": "missing value (the column is not nullable)" if missing else err["msg"],
                "error_type": "missing" if missing else err["type"],
                "value": None if value is None else str(value),
            }
        )
    return lines
