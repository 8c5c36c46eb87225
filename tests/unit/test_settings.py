"""Settings come from the environment and refuse bad values at start."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared import settings as settings_module
from shared.broker import redis_url
from shared.datasets import parse_spec
from shared.errors import ConfigError
from shared.settings import CommonSettings, GatewaySettings, IngestorSettings, PredictorSettings


def test_environment_variables_set_the_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://db:6380/2")
    monkeypatch.setenv("STREAMOPS_INGESTOR_DATA_ROOTS", f"{tmp_path}/a, {tmp_path}/b")
    monkeypatch.setenv("STREAMOPS_INGESTOR_REST_ALLOW_HOSTS", '["api.example.com"]')
    monkeypatch.setenv("STREAMOPS_MAX_DELIVERIES", "3")
    settings = IngestorSettings()
    assert settings.common.redis_url == "redis://db:6380/2"
    assert settings.common.max_deliveries == 3
    assert settings.data_roots == [tmp_path / "a", tmp_path / "b"]
    assert settings.rest_allow_hosts == ["api.example.com"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STREAMOPS_REDIS_URL", "http://not-redis"),
        ("STREAMOPS_MAX_DELIVERIES", "0"),
        ("STREAMOPS_LEASE_MS", "soon"),
        ("STREAMOPS_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_common_values_fail_at_once(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        CommonSettings()


def test_a_bad_bad_row_fraction_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMOPS_INGESTOR_MAX_BAD_FRACTION", "1.5")
    with pytest.raises(ValidationError):
        IngestorSettings()


def test_a_separate_password_goes_into_the_url() -> None:
    settings = CommonSettings(redis_url="redis://cache:6379/0", redis_password="p@ss")
    assert redis_url(settings) == "redis://:p%40ss@cache:6379/0"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("name: x\ntarget: y\ncolumns: [{name: a, type: int}]", "target 'y' is not a column"),
        (
            "name: x\ntarget: a\ncolumns: [{name: a, type: str, ge: 1}]",
            "float and int columns only",
        ),
        ("name: x\ntarget: a\ncolumns: [{name: a, type: int, allowed: [a]}]", "must all be int"),
        ("name: x\ntarget: a\ntimestamp: a\ncolumns: [{name: a, type: int}]", "datetime column"),
        ("name: x\ntarget: a\ncolumns: [{name: a, type: decimal}]", "type"),
        ("name: x\ntarget: a\ncolumns: [{name: a, type: int}, {name: a, type: int}]", "unique"),
        ("{not yaml", "invalid dataset spec"),
        (
            "name: x\ntarget: a\ncolumns: [{name: a, type: int}, {name: version, type: int}]",
            "reserved",
        ),
    ],
)
def test_bad_dataset_specs_are_refused_with_the_reason(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_spec(text)


def test_the_gateway_refuses_production_without_an_api_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMOPS_GATEWAY_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="STREAMOPS_GATEWAY_API_KEY"):
        GatewaySettings()
    monkeypatch.setenv("STREAMOPS_GATEWAY_API_KEY", "s3cret")
    settings = GatewaySettings()
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_serving_limits_fail_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMOPS_GATEWAY_BATCH_ROWS", "0")
    with pytest.raises(ValidationError, match="batch_rows"):
        GatewaySettings()
    monkeypatch.setenv("STREAMOPS_PREDICTOR_THREADS", "0")
    with pytest.raises(ValidationError, match="threads"):
        PredictorSettings()


def test_the_datasets_dir_is_the_working_directorys_datasets_when_there_is_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "datasets").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STREAMOPS_DATASETS_DIR", raising=False)
    assert CommonSettings().datasets_dir == tmp_path / "datasets"
    assert IngestorSettings().data_roots == [tmp_path / "datasets", tmp_path / "var" / "inbox"]
    assert PredictorSettings().score_roots == IngestorSettings().data_roots


def test_from_any_other_directory_it_is_the_bundled_sample(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STREAMOPS_DATASETS_DIR", raising=False)
    assert CommonSettings().datasets_dir == settings_module.BUNDLED_DATASETS
    assert (settings_module.BUNDLED_DATASETS / "churn" / "spec.yaml").is_file()


def test_installed_the_sample_is_the_data_files_copy_under_the_prefix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An installed package: shared/ sits in site-packages, with no pyproject.toml above it,
    # maybe beside another project's datasets/ package (Hugging Face's).
    site = tmp_path / "site-packages"
    (site / "datasets").mkdir(parents=True)
    prefix = tmp_path / "prefix"
    (prefix / "share" / "streamops" / "datasets" / "churn").mkdir(parents=True)
    monkeypatch.setattr(settings_module, "REPO_ROOT", site)
    monkeypatch.setattr(sysconfig, "get_path", lambda name, scheme: str(prefix))
    assert settings_module.bundled_datasets() == prefix / "share" / "streamops" / "datasets"


def test_the_repository_checkout_uses_its_own_datasets() -> None:
    assert settings_module.bundled_datasets() == settings_module.REPO_ROOT / "datasets"


def test_an_object_store_is_named_by_an_s3_uri_and_its_prefix_may_be_scored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMOPS_FEATURE_STORE_URI", "s3://my-bucket/features/")
    monkeypatch.setenv("STREAMOPS_PREDICTOR_SCORE_URIS", "s3://inbox-bucket/in/")
    settings = PredictorSettings()
    assert settings.common.feature_store_location == "s3://my-bucket/features"
    assert settings.score_prefixes == ["s3://inbox-bucket/in", "s3://my-bucket/features"]
    monkeypatch.delenv("STREAMOPS_FEATURE_STORE_URI")
    common = CommonSettings()
    assert common.feature_store_location == str(common.feature_store_root)  # the local root


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STREAMOPS_FEATURE_STORE_URI", "/data/features"),
        ("STREAMOPS_FEATURE_STORE_URI", "s3://"),
        ("STREAMOPS_FEATURE_STORE_URI", "s3://Bad_Bucket/x"),
        ("STREAMOPS_FEATURE_STORE_URI", "gs://bucket/x"),
        ("STREAMOPS_PREDICTOR_SCORE_URIS", "/data/in"),
        ("STREAMOPS_PREDICTOR_SCORE_URIS", "s3://"),
        ("STREAMOPS_PREDICTOR_SCORE_URIS", "s3://inbox/in,s3://Bad_Bucket/x"),
    ],
)
def test_a_bad_object_store_uri_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        PredictorSettings()
