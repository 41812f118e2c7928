"""Fixtures for the script tests (real Valkey in cluster mode; see tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from gateway.keys import ActivityKeys, KeySpace
from gateway.redis_client import ScriptRunner
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

    async def make(activity_id: str = "act1", *, allow: Sequence[str] = (), now: int = NOW,
                   **overrides: Any) -> ActivityKeys:
        config = activity_config(now, **overrides)
        reply = await put_activity(runner, activity_id, config, allow=allow, now=now)
        assert reply[0] == "ok", reply
        return KeySpace.activity(activity_id)

    return make
