"""Fixtures of the integration layer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis


@pytest.fixture
async def client(redis_db: str) -> AsyncIterator[aioredis.Redis]:
    """An async Redis client on the test's (empty) database, as an outside producer would use."""
    connection = aioredis.Redis.from_url(redis_db)
    yield connection
    await connection.aclose()
