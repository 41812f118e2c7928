"""Fixtures for the script tests (real Valkey in cluster mode; see tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.keys import ActivityKeys, KeySpace
from gateway.scripts.runner import ScriptRunner
from gateway.settings import Settings
from tests.lua.support import NOW, Claimer, activity_config, put_activity

MakeActivity = Callable[..., Awaitable[ActivityKeys]]


@pytest.fixture
def claimer(runner: ScriptRunner, settings: Settings) -> Claimer:
    return Claimer(runner, settings.claim.idempotency_ttl_seconds)


@pytest.fixture
def make_activity(runner: ScriptRunner) -> MakeActivity:
    """``await make_activity("act1", stock=2, ...)``: mirror a config (defaults of activity_config) via the
    put_activity script and return the activity's keys."""

    async def make(
        activity_id: str = "act1", *, allow: Sequence[str] = (), now: int = NOW, **overrides: Any
    ) -> ActivityKeys:
        config = activity_config(now, **overrides)
        reply = await put_activity(runner, activity_id, config, allow=allow, now=now)
        assert reply[0] == "ok", reply
        return KeySpace.activity(activity_id)

    return make


@pytest.fixture
async def plain(settings: Settings, clean: None) -> AsyncIterator[Redis]:
    """A non-cluster connection to the one node, for its INFO and CONFIG answers."""
    client: Redis = Redis.from_url(settings.redis.url, decode_responses=True)
    yield client
    await client.aclose()
