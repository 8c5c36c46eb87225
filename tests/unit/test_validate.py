"""The vectorised validator must agree with the pydantic row model, row for row."""

from __future__ import annotations

import contextlib
import math
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ingestor.validate import validate_chunk
from shared.datasets import DatasetSpec, parse_spec, row_model

SPEC = parse_spec(
    """
name: mixed
target: label
columns:
  - {name: amount, type: float, ge: -100, lt: 1000}
  - {name: ratio, type: float, nullable: true}
  - {name: count, type: int, ge: 0, le: 50}
  - {name: label, type: int, allowed: [0, 1]}
  - {name: flag, type: bool}
  - {name: seen_at, type: datetime, nullable: true}
  - {name: plan, type: str, allowed: [basic, premium]}
  - {name: note, type: str, min_length: 2, max_length: 5, nullable: true}
"""
)

TRICKY = [
    None,
    "",
    " ",
    "0",
    "1",
    "-1",
    "+1",
    "007",
    "1.0",
    "1.5",
    "-0",
    ".5",
    "5.",
    "1e3",
    "1E-2",
    "1_000",
    " 42 ",
    "inf",
    "-inf",
    "nan",
    "NaN",
    "Infinity",
    "1e400",
    "0x1F",
    "1,5",
    "١٢",
    "99999999999999999999",
    "9223372036854775807",
    "true",
    "False",
    "TRUE",
    "yes",
    "no",
    "on",
    "off",
    "t",
    "f",
    "y",
    "n",
    "2",
    "maybe",
    "basic",
    "premium",
    "Basic",
    "ab",
    "abcdef",
    "é",
    "2024-01-31",
    "2024-01-31T12:00:00",
    "2024-01-31 12:00:00",
    "2024-01-31T12:00:00Z",
    "2024-01-31T12:00:00+02:00",
    "2024-01-31T12:00:00.123456",
    "2024-01-31T12:00:00.1234567",
    "2024-01-31T12:00",
    "2024-01-31T12",
    "2024-02-30",
    "2024-13-01",
    "2024-01-31t12:00:00",
    "1700000000",
    "20240131",
    "2024-01-31T12:00:00+0200",
    "2024-01-31T24:00:00",
    "0000-01-01",
    "-100",
    "-100.0001",
    "999.99",
    "1000",
    "50",
    "51",
]

alphabet = st.sampled_from(list("0123456789+-.eExT:Z _abn"))
cells = st.one_of(
    st.sampled_from(TRICKY),
    st.text(alphabet, max_size=12),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**20), 10**20).map(str),
    st.datetimes(timezones=st.sampled_from([None, UTC])).map(lambda d: d.isoformat()),
)


def _expected(spec: DatasetSpec, rows: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    model = row_model(spec)
    out = []
    for number, raw in enumerate(rows, start=1):
        with contextlib.suppress(ValidationError):
            out.append((number, model.model_validate(raw).model_dump(by_alias=True)))
    return out


def _normal(value: Any) -> Any:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def _check_agreement(spec: DatasetSpec, table: pa.Table, rows: list[dict[str, Any]]) -> None:
    result = validate_chunk(spec, table, first_row=1)
    expected = _expected(spec, rows)
    got = result.accepted.to_pylist()
    assert len(got) == len(expected)
    for (_, want), have in zip(expected, got, strict=True):
        assert {k: _normal(v) for k, v in have.items()} == {k: _normal(v) for k, v in want.items()}
    rejected = set(range(1, len(rows) + 1)) - {n for n, _ in expected}
    assert set(result.quarantine.column("row").to_pylist()) == rejected
    assert result.bad_rows == len(rejected)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries(dict.fromkeys(SPEC.column_names, cells)), max_size=40))
def test_text_cells_are_judged_exactly_as_pydantic_judges_them(rows: list[dict[str, Any]]) -> None:
    table = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in SPEC.column_names})
    _check_agreement(SPEC, table, rows)


typed_values = {
    "amount": st.one_of(st.none(), st.floats(), st.integers(-200, 2000).map(float)),
    "ratio": st.one_of(st.none(), st.floats()),
    "count": st.one_of(st.none(), st.integers(-5, 60)),
    "label": st.one_of(st.none(), st.integers(-1, 2)),
    "flag": st.one_of(st.none(), st.booleans()),
    "seen_at": st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
    "plan": st.one_of(st.none(), st.sampled_from(["basic", "premium", "gold"])),
    "note": st.one_of(st.none(), st.text(max_size=7)),
}
ARROW = {
    "amount": pa.float64(),
    "ratio": pa.float64(),
    "count": pa.int64(),
    "label": pa.int64(),
    "flag": pa.bool_(),
    "seen_at": pa.timestamp("us", tz="UTC"),
    "plan": pa.string(),
    "note": pa.string(),
}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries(typed_values), max_size=30))
def test_typed_columns_from_sql_agree_with_pydantic(rows: list[dict[str, Any]]) -> None:
    table = pa.table({c: pa.array([r[c] for r in rows], ARROW[c]) for c in SPEC.column_names})
    _check_agreement(SPEC, table, table.to_pylist())


def test_integral_floats_are_accepted_as_ints_and_fractions_are_not() -> None:
    rows = [
        {**_good(), "count": 3.0},
        {**_good(), "count": 3.5},
    ]
    table = pa.table(
        {
            c: pa.array([r[c] for r in rows], pa.float64() if c == "count" else ARROW[c])
            for c in SPEC.column_names
        }
    )
    result = validate_chunk(SPEC, table, first_row=1)
    assert result.accepted.column("count").to_pylist() == [3]
    assert result.quarantine.column("row").to_pylist() == [2]


def _good() -> dict[str, Any]:
    return {
        "amount": 1.0,
        "ratio": None,
        "count": 1,
        "label": 0,
        "flag": True,
        "seen_at": None,
        "plan": "basic",
        "note": None,
    }


def test_each_bad_cell_is_one_quarantine_line_with_column_reason_and_value() -> None:
    cells: dict[str, list[str | None]] = {c: ["1"] for c in SPEC.column_names}
    cells.update(amount=["abc"], plan=["gold"], flag=["true"], note=[None], seen_at=[None])
    result = validate_chunk(
        SPEC, pa.table({k: pa.array(v, pa.string()) for k, v in cells.items()}), first_row=41
    )
    lines = sorted(result.quarantine.to_pylist(), key=lambda r: r["column"])
    assert [(r["row"], r["column"], r["value"]) for r in lines] == [
        (41, "amount", "abc"),
        (41, "plan", "gold"),
    ]
    assert "valid number" in lines[0]["reason"]
    assert "must be one of" in lines[1]["reason"]


def test_an_empty_cell_in_a_required_column_says_it_is_missing() -> None:
    cells = {c: pa.array(["1"], pa.string()) for c in SPEC.column_names}
    cells.update(
        plan=pa.array(["basic"]),
        flag=pa.array(["true"]),
        note=pa.array([None], pa.string()),
        count=pa.array([None], pa.string()),
    )
    result = validate_chunk(SPEC, pa.table(cells), first_row=1)
    (line,) = result.quarantine.to_pylist()
    assert (line["column"], line["error_type"]) == ("count", "missing")
    assert "missing value" in line["reason"]


def test_a_column_where_nothing_converts_is_reported_as_the_wrong_type() -> None:
    cells = {c: pa.array(["1", "0"], pa.string()) for c in SPEC.column_names}
    cells.update(
        plan=pa.array(["basic", "basic"]), flag=pa.array(["x", "z"]), amount=pa.array(["a", None])
    )
    result = validate_chunk(SPEC, pa.table(cells), first_row=1)
    # seen_at holds "1" and "0": epoch seconds, which pydantic takes as datetimes.
    assert set(result.wrong_type) == {"flag", "amount"}
    assert "expected bool" in result.wrong_type["flag"]


@pytest.mark.parametrize("rows", [0, 1, 1000])
def test_clean_rows_keep_their_order_and_values(rows: int) -> None:
    cells = {
        "amount": [f"{i / 7:.4f}" for i in range(rows)],
        "ratio": [None if i % 3 else "0.5" for i in range(rows)],
        "count": [str(i % 50) for i in range(rows)],
        "label": [str(i % 2) for i in range(rows)],
        "flag": ["true" if i % 2 else "0" for i in range(rows)],
        "seen_at": ["2024-05-01T00:00:00Z"] * rows,
        "plan": ["premium"] * rows,
        # A rescued row in the middle (spaces are fine for pydantic, not for pyarrow's cast).
        "note": [" ok " if i == rows // 2 else "ok" for i in range(rows)],
    }
    result = validate_chunk(
        SPEC, pa.table({k: pa.array(v, pa.string()) for k, v in cells.items()}), first_row=1
    )
    assert result.accepted.num_rows == rows
    assert result.accepted.column("count").to_pylist() == [i % 50 for i in range(rows)]
    assert result.bad_rows == 0


def test_ints_beyond_int64_are_rejected_by_the_schema_not_by_an_overflow() -> None:
    spec = parse_spec("name: x\ntarget: n\ncolumns: [{name: n, type: int, ge: 0}]")
    table = pa.table({"n": pa.array(["5", "99999999999999999999", "-1"], pa.string())})
    result = validate_chunk(spec, table, first_row=1)
    assert result.accepted.column("n").to_pylist() == [5]
    reasons = {line["row"]: line["reason"] for line in result.quarantine.to_pylist()}
    assert "less than or equal to 9223372036854775807" in reasons[2]
    assert "greater than or equal to 0" in reasons[3]
