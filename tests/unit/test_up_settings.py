"""`streamops up`'s settings for the services: what the user exported wins, and the file roots
the user exported come first, before up's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.settings import BUNDLED_DATASETS, IngestorSettings, PredictorSettings
from streamops.stack import FROM_ENVIRONMENT, FROM_UP, MERGED, ROOTS, up_settings


def _port() -> int:
    return 8123


def test_with_nothing_exported_up_chooses_everything_under_its_workdir(tmp_path: Path) -> None:
    chosen = up_settings(tmp_path, {}, BUNDLED_DATASETS, pick_port=_port)
    assert chosen.env["STREAMOPS_FEATURE_STORE_ROOT"] == str(tmp_path / "feature-store")
    assert chosen.inbox == tmp_path / "inbox"
    assert chosen.port == 8123
    for name in ROOTS:
        assert json.loads(chosen.env[name]) == [str(BUNDLED_DATASETS), str(tmp_path / "inbox")]
    assert set(chosen.origin.values()) == {FROM_UP}


def test_exported_locations_and_port_win(tmp_path: Path) -> None:
    environ = {
        "STREAMOPS_FEATURE_STORE_ROOT": str(tmp_path / "my-store"),
        "STREAMOPS_GATEWAY_INBOX": str(tmp_path / "my-inbox"),
        "STREAMOPS_GATEWAY_PORT": "9876",
    }
    chosen = up_settings(tmp_path / "up", environ, BUNDLED_DATASETS, pick_port=_port)
    for name, value in environ.items():
        assert chosen.env[name] == value
        assert chosen.origin[name] == FROM_ENVIRONMENT
    # The user's inbox is a root (the gateway writes uploads there for the ingestor), and so is
    # up's own: the demo writes its files there.
    for name in ROOTS:
        assert json.loads(chosen.env[name]) == [
            str(BUNDLED_DATASETS),
            str(tmp_path / "my-inbox"),
            str(tmp_path / "up" / "inbox"),
        ]


def test_exported_roots_come_first_and_up_adds_its_own_once(tmp_path: Path) -> None:
    mine, other = tmp_path / "mine", tmp_path / "other"
    environ = {
        "STREAMOPS_INGESTOR_DATA_ROOTS": f"{mine},{BUNDLED_DATASETS}",
        "STREAMOPS_PREDICTOR_SCORE_ROOTS": json.dumps([str(other)]),
    }
    chosen = up_settings(tmp_path, environ, BUNDLED_DATASETS, pick_port=_port)
    inbox = str(tmp_path / "inbox")
    assert json.loads(chosen.env["STREAMOPS_INGESTOR_DATA_ROOTS"]) == [
        str(mine),
        str(BUNDLED_DATASETS),
        inbox,
    ]
    assert json.loads(chosen.env["STREAMOPS_PREDICTOR_SCORE_ROOTS"]) == [
        str(other),
        str(BUNDLED_DATASETS),
        inbox,
    ]
    assert chosen.origin["STREAMOPS_INGESTOR_DATA_ROOTS"] == MERGED
    assert chosen.origin["STREAMOPS_FEATURE_STORE_ROOT"] == FROM_UP


def test_a_datasets_dir_of_the_users_own_is_a_root_before_the_sample(tmp_path: Path) -> None:
    chosen = up_settings(tmp_path, {}, tmp_path / "datasets", pick_port=_port)
    roots = json.loads(chosen.env["STREAMOPS_INGESTOR_DATA_ROOTS"])
    assert roots == [str(tmp_path / "datasets"), str(BUNDLED_DATASETS), str(tmp_path / "inbox")]


def test_the_services_read_what_up_sets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {"STREAMOPS_INGESTOR_DATA_ROOTS": str(tmp_path / "mine")}
    chosen = up_settings(tmp_path, environ, BUNDLED_DATASETS, pick_port=_port)
    for name, value in chosen.env.items():
        monkeypatch.setenv(name, value)
    assert IngestorSettings().data_roots == [
        tmp_path / "mine",
        BUNDLED_DATASETS,
        tmp_path / "inbox",
    ]
    assert PredictorSettings().score_roots == [BUNDLED_DATASETS, tmp_path / "inbox"]
    assert IngestorSettings().common.feature_store_root == tmp_path / "feature-store"


def test_an_exported_port_that_is_not_a_number_stops_up_at_once(tmp_path: Path) -> None:
    environ = {"STREAMOPS_GATEWAY_PORT": "eighty"}
    with pytest.raises(ConfigError, match="STREAMOPS_GATEWAY_PORT must be a port number"):
        up_settings(tmp_path, environ, BUNDLED_DATASETS, pick_port=_port)
