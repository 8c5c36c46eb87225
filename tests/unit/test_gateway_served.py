"""What the gateway makes of heartbeats (gateway.fleet) and of the datasets dir (gateway.specs),
without Redis or an app: which schema wins a swap, what a malformed beat leaves, and that
specs are parsed again only when their files change."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import gateway.specs
from gateway.fleet import Beat, Warned, newest_schemas, parse_beat
from gateway.specs import SpecSchemas
from shared.datasets import served_specs
from shared.schema import Column, ModelSchema
from shared.settings import BUNDLED_DATASETS
from tests.support.toy import TOY_SPEC


def schema(name: str, *columns: str) -> ModelSchema:
    cols = tuple(Column(name=c, type="float") for c in columns)
    return ModelSchema(model_name=name, source="signature", columns=cols)


def test_the_replica_with_the_highest_version_gives_the_schema() -> None:
    old, new = schema("m", "a"), schema("m", "a", "b")
    beats = {
        "r1": Beat({"m": 2}, {"m": old}),
        "r2": Beat({"m": 3}, {"m": new}),
        "r3": Beat({"m": 1}, {"m": old}),
        "r4": Beat({"m": 5}, {}),  # an old replica: a version, no schema
    }
    assert newest_schemas(beats) == {"m": new}


def test_a_beat_keeps_what_is_well_formed_and_says_the_rest_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = schema("good", "a").model_dump(mode="json")
    payload: dict[str, Any] = {
        "models": {"good": 1, "bad": 2, "other": 3, "nan": "x", "none": None},
        "schemas": {
            "good": good,
            "bad": {"model_name": "bad", "columns": []},
            "other": good,  # filed under the wrong name
            "unserved": schema("unserved", "a").model_dump(mode="json"),
        },
    }
    warn = Warned()
    first = parse_beat("r", payload, warn)
    again = parse_beat("r", payload, warn)
    assert first == again == Beat({"good": 1, "bad": 2, "other": 3}, {"good": schema("good", "a")})
    assert len(caplog.records) == 3  # nan's version, bad's schema, other's name: once each
    assert parse_beat("r", ["not", "an", "object"], warn) == Beat({}, {})
    assert parse_beat("r", {"models": {"m": 1}}, warn) == Beat({"m": 1}, {})
    assert parse_beat("r", {"models": {"m": 1}, "schemas": 7}, warn) == Beat({"m": 1}, {})


def test_specs_are_parsed_again_only_when_their_files_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = tmp_path / "datasets"
    shutil.copytree(BUNDLED_DATASETS / "churn", datasets / "churn")
    parsed: list[list[str]] = []

    def counting(directory: Path, names: list[str]) -> Any:
        parsed.append(list(names))
        return served_specs(directory, names)

    monkeypatch.setattr(gateway.specs, "served_specs", counting)
    specs = SpecSchemas(datasets)
    assert set(specs()) == {"churn"}
    assert set(specs()) == {"churn"}
    assert parsed == [["churn"]]  # the second call only looked at the files

    (datasets / "toy").mkdir()
    (datasets / "toy" / "spec.yaml").write_text(TOY_SPEC)
    assert set(specs()) == {"churn", "toy"}
    assert specs()["toy"].names == ("a", "b", "flag")

    (datasets / "toy" / "spec.yaml").write_text("not: [a spec")  # broken: skipped, not fatal
    stat = (datasets / "churn" / "spec.yaml").stat()
    os.utime(datasets / "churn" / "spec.yaml", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert set(specs()) == {"churn"}
    shutil.rmtree(datasets / "toy")
    assert set(specs()) == {"churn"}
