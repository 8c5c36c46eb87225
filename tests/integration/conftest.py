"""Fixtures of the integration layer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.settings import BUNDLED_DATASETS, CommonSettings
from tests.support.shelf import ModelShelf, two_pipelines


@pytest.fixture
async def client(redis_db: str) -> AsyncIterator[aioredis.Redis]:
    """An async Redis client on the test's (empty) database, as an outside producer would use."""
    connection = aioredis.Redis.from_url(redis_db)
    yield connection
    await connection.aclose()


@pytest.fixture(scope="session")
def pipelines() -> tuple[Any, Any]:
    """Two fitted churn pipelines (versions 1 and 2 of the serving tests' registry)."""
    return two_pipelines()


@pytest.fixture
def shelf(pipelines: tuple[Any, Any]) -> ModelShelf:
    """An in-memory registry: churn v1 in production, v2 registered."""
    first, second = pipelines
    return ModelShelf(models={1: first, 2: second}, production=1, production_history=[1])


@pytest.fixture
def common(redis_db: str, tmp_path: Path) -> CommonSettings:
    """Settings of a replica and a gateway on the test's Redis database."""
    return CommonSettings(
        redis_url=redis_db,
        feature_store_root=tmp_path / "store",
        datasets_dir=BUNDLED_DATASETS,
        consumer_name="replica-a",
    )
