"""The ingest use case without a broker: source → validated version, or a rejection."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest

from ingestor.service import ingest
from shared.errors import UnknownDataset
from shared.events import DataArrived, DataIngested, DataRejected
from shared.feature_store import FeatureStore
from shared.settings import BUNDLED_DATASETS, IngestorSettings
from tests.support.data import BROKEN, churn_rows, write_csv

Make = Callable[..., IngestorSettings]


def _run(
    settings: IngestorSettings, uri: str, dataset: str = "churn"
) -> DataIngested | DataRejected:
    store = FeatureStore(settings.common.feature_store_root)
    return ingest(DataArrived(dataset=dataset, source={"kind": "csv", "uri": uri}), settings, store)


def test_the_sample_becomes_a_version_and_its_broken_rows_a_quarantine(make_settings: Make) -> None:
    settings = make_settings()
    result = _run(settings, "churn/churn.csv")
    assert isinstance(result, DataIngested)
    assert (result.version, result.rows, result.quarantined_rows) == (1, 4992, 8)
    store = FeatureStore(settings.common.feature_store_root)
    lines = store.quarantine("churn", 1).to_pylist()
    assert sorted((q["row"], q["column"], q["value"]) for q in lines) == sorted(
        (row, column, value or None) for row, column, value in BROKEN
    )
    assert all(q["reason"] for q in lines)
    assert store.read("churn", 1).num_rows == 4992


def test_the_same_content_again_makes_no_new_version_and_the_same_event(
    make_settings: Make,
) -> None:
    settings = make_settings()
    first = _run(settings, "churn/churn.csv")
    again = _run(settings, f"file://{BUNDLED_DATASETS}/churn/churn.csv")
    assert isinstance(first, DataIngested)
    assert isinstance(again, DataIngested)
    assert (again.version, again.new_version, first.new_version) == (1, False, True)
    assert again.event_id == first.event_id
    assert len(FeatureStore(settings.common.feature_store_root).versions("churn")) == 1


def test_changed_content_makes_the_next_version(make_settings: Make, inbox: Path) -> None:
    settings = make_settings()
    _run(settings, "churn/churn.csv")
    write_csv(inbox / "more.csv", churn_rows(50, seed=3))
    result = _run(settings, str(inbox / "more.csv"))
    assert isinstance(result, DataIngested)
    assert (result.version, result.rows, result.quarantined_rows) == (2, 50, 0)


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (lambda r: {k: v for k, v in r.items() if k != "plan"}, "missing column 'plan'"),
        (lambda r: {**r, "extra": "1"}, "unexpected column 'extra'"),
        (lambda r: {**r, "usage_gb": "lots"}, "usage_gb: expected float"),
    ],
)
def test_schema_drift_rejects_the_whole_batch(
    make_settings: Make,
    inbox: Path,
    change: Callable[[dict[str, str]], dict[str, str]],
    detail: str,
) -> None:
    settings = make_settings()
    write_csv(inbox / "drift.csv", [change(r) for r in churn_rows(20)])
    result = _run(settings, str(inbox / "drift.csv"))
    assert isinstance(result, DataRejected)
    assert result.kind == "schema_drift"
    assert any(detail in d for d in result.details), result.details
    assert FeatureStore(settings.common.feature_store_root).versions("churn") == []


def test_too_many_bad_rows_reject_the_batch_with_the_commonest_reasons(
    make_settings: Make, inbox: Path
) -> None:
    settings = make_settings(max_bad_fraction=0.1)
    rows = churn_rows(100)
    for row in rows[:20]:
        row["plan"] = "gold"
    write_csv(inbox / "bad.csv", rows)
    result = _run(settings, str(inbox / "bad.csv"))
    assert isinstance(result, DataRejected)
    assert (result.kind, result.total_rows, result.bad_rows) == ("too_many_bad_rows", 100, 20)
    assert "plan: Value error, must be one of" in result.details[0]
    assert FeatureStore(settings.common.feature_store_root).versions("churn") == []


@pytest.mark.parametrize(
    ("content", "kind", "words"),
    [
        ("", "source_error", "no header"),
        ("customer_id,tenure_months\n", "schema_drift", "missing column"),
        (None, "empty", "no rows"),
        ("a,b\n1,2,3\n", "source_error", "Expected 2 columns"),
    ],
)
def test_unusable_files_are_rejected_with_a_reason(
    make_settings: Make, inbox: Path, content: str | None, kind: str, words: str
) -> None:
    path = inbox / "odd.csv"
    if content is None:
        write_csv(path, [])
    else:
        path.write_text(content)
    result = _run(make_settings(), str(path))
    assert isinstance(result, DataRejected)
    assert result.kind == kind
    assert words in result.reason + " ".join(result.details)


def test_a_file_outside_the_data_roots_is_rejected(make_settings: Make) -> None:
    result = _run(make_settings(), "/etc/passwd")
    assert isinstance(result, DataRejected)
    assert (result.kind, "outside the data roots" in result.reason) == ("source_error", True)


def test_an_unknown_dataset_is_a_poison_message(make_settings: Make) -> None:
    with pytest.raises(UnknownDataset, match="no dataset spec for 'nope'"):
        _run(make_settings(), "churn/churn.csv", dataset="nope")


def test_small_blocks_keep_every_row_and_its_source_row_number(
    make_settings: Make, inbox: Path
) -> None:
    settings = make_settings(block_size_bytes=64 * 1024)
    rows = churn_rows(6000)
    rows[5123]["tenure_months"] = "-1"
    write_csv(inbox / "big.csv", rows)
    result = _run(settings, str(inbox / "big.csv"))
    assert isinstance(result, DataIngested)
    store = FeatureStore(settings.common.feature_store_root)
    (line,) = store.quarantine("churn", result.version).to_pylist()
    assert (line["row"], line["column"]) == (5124, "tenure_months")
    ids = store.read("churn").column("customer_id").to_pylist()
    assert ids == [r["customer_id"] for i, r in enumerate(rows) if i != 5123]


def test_quarantine_lines_name_the_data_row_not_the_file_line(
    make_settings: Make, inbox: Path
) -> None:
    rows = churn_rows(3)
    rows[1]["autopay"] = "perhaps"
    with (inbox / "q.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    settings = make_settings(max_bad_fraction=0.5)
    result = _run(settings, str(inbox / "q.csv"))
    assert isinstance(result, DataIngested)
    (line,) = FeatureStore(settings.common.feature_store_root).quarantine("churn", 1).to_pylist()
    assert (line["row"], line["value"]) == (2, "perhaps")


def test_quoted_commas_and_newlines_survive_block_boundaries(
    make_settings: Make, inbox: Path
) -> None:
    rows = churn_rows(3000)
    for i, row in enumerate(rows):
        row["customer_id"] = f"C{i},\nX"  # write_csv quotes it
    write_csv(inbox / "quoted.csv", rows)
    settings = make_settings(block_size_bytes=64 * 1024)
    result = _run(settings, str(inbox / "quoted.csv"))
    assert isinstance(result, DataIngested)
    assert result.rows == 3000
    ids = FeatureStore(settings.common.feature_store_root).read("churn").column("customer_id")
    assert ids.to_pylist() == [r["customer_id"] for r in rows]


def test_a_relative_name_dropped_into_the_inbox_is_found_in_the_second_root(
    make_settings: Make, inbox: Path
) -> None:
    settings = make_settings()  # roots: the datasets, then the inbox
    write_csv(inbox / "dropped.csv", churn_rows(50, seed=4))
    result = _run(settings, "dropped.csv")
    assert isinstance(result, DataIngested)
    assert result.rows == 50


def test_a_source_error_is_logged_without_an_empty_details_list(
    make_settings: Make, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()
    with caplog.at_level("WARNING", logger="ingestor.service"):
        result = _run(settings, "nowhere.csv")
    assert isinstance(result, DataRejected)
    assert result.reason.startswith("nowhere.csv: no such file in the data roots (tried ")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "ingestor.service"]
    assert line == f"rejected churn from {result.source}: {result.reason}"
