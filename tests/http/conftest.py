from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from gateway.services import Services
from gateway.settings import Settings


@pytest.fixture
async def raw_redis(settings: Settings, clean: None) -> AsyncIterator[Redis]:
    """A plain (non-cluster) client on the session's one Valkey node: SCAN, DUMP and direct writes."""
    plain: Redis = Redis.from_url(settings.redis.url)
    yield plain
    await plain.aclose()


@pytest.fixture
def services(client: AsyncTestClient[Any]) -> Services:
    """The running app's services (fence, blocklist copy, script runner)."""
    found: Services = client.app.state.services
    return found
