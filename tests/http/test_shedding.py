"""Backpressure: past the configured lag (events not yet persisted) or Redis memory use, claims are shed with
503 ``overloaded`` and ``Retry-After``; when the worker catches up they are served again. Stats show the lag
and the conflicts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.http.app import create_app
from gateway.scripts.runner import connect
from gateway.services import Services
from gateway.settings import Settings, load_settings
from tests.conftest import settings_env
from tests.helpers import ADMIN, bearer, create_activity
from tests.http.support import assert_refusal, claim_url
from tests.worker.conftest import persist


def app_with(settings: Settings, **extra: str) -> AsyncTestClient[Any]:
    env = settings_env(settings.redis.url, settings.postgres.url, load_check_seconds="30", **extra)
    return AsyncTestClient(app=create_app(load_settings(env)))


@pytest.fixture
async def shedding_at_5(settings: Settings, clean: None) -> AsyncIterator[AsyncTestClient[Any]]:
    async with app_with(settings, shed_lag="5") as client:
        yield client


async def measured(client: AsyncTestClient[Any]) -> dict[str, Any]:
    """The deployment's figures, measured now (the stats route measures, and the verdict follows)."""
    reply = await client.get("/v1/admin/stats", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    figures: dict[str, Any] = reply.json()
    return figures


def services_of(client: AsyncTestClient[Any]) -> Services:
    found: Services = client.app.state.services
    return found


async def test_claims_are_shed_past_the_lag_and_served_again_once_persisted(
    shedding_at_5: AsyncTestClient[Any], settings: Settings
) -> None:
    client = shedding_at_5
    services = services_of(client)
    activity = await create_activity(client, stock=100, per_user_limit=1)
    for i in range(3):  # 1 activity_created + 3 claimed + 3 delivered = 7 events, none persisted
        assert (await client.post(claim_url(activity["id"]), headers=bearer(f"u{i}"))).status_code == 201
    overall = await measured(client)  # the app measures on its own every 30 s here; the stats route now
    assert (overall["lag"], overall["lag_limit"]) == (7, 5)
    assert overall["shedding"] == services.load.shedding == "7 events wait to be persisted (limit 5)"

    shed = await client.post(claim_url(activity["id"]), headers=bearer("u-shed"))
    body = assert_refusal(shed, 503, "overloaded")
    assert shed.headers["Retry-After"] == "2"
    assert body["message"] == "The gateway is shedding load; retry shortly."  # the figures are the stats'
    assert "7 events wait to be persisted" in overall["shedding"]
    stats = (await client.get(f"/v1/admin/activities/{activity['id']}/stats", headers=ADMIN)).json()
    assert (stats["claimed"], stats["persisted"], stats["lag"]) == (
        3,
        0,
        4,
    )  # nothing taken by the shed claim

    assert await persist(settings) == 7
    assert (await measured(client))["shedding"] == services.load.shedding == ""
    assert (await client.post(claim_url(activity["id"]), headers=bearer("u-shed"))).status_code == 201
    stats = (await client.get(f"/v1/admin/activities/{activity['id']}/stats", headers=ADMIN)).json()
    assert (stats["claimed"], stats["persisted"], stats["conflicts"]) == (4, 3, 0)


async def test_claims_are_shed_past_the_memory_limit(settings: Settings, clean: None) -> None:
    async with app_with(settings, shed_memory="0.0001") as client:  # the session Valkey has maxmemory 1gb
        services = services_of(client)
        activity = await create_activity(client, stock=10, per_user_limit=1)
        overall = await measured(client)
        assert overall["shedding"] == services.load.shedding
        assert services.load.shedding.startswith("Redis memory at ")
        reply = await client.post(claim_url(activity["id"]), headers=bearer("u1"))
        assert_refusal(reply, 503, "overloaded")
        assert reply.headers["Retry-After"] == "2"
        overall = (await client.get("/v1/admin/stats", headers=ADMIN)).json()
        assert overall["memory_max"] == 1024**3 and overall["memory_limit"] == 0.0001
        assert 0 < overall["memory_used"] < overall["memory_max"]


async def test_under_the_limits_nothing_is_shed_and_stats_show_conflicts(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    services = services_of(client)
    activity = await create_activity(client, stock=10, per_user_limit=1)
    assert (await client.post(claim_url(activity["id"]), headers=bearer("u1"))).status_code == 201
    assert (await measured(client))["shedding"] == services.load.shedding == ""
    # A seeded ledger conflict: the same unit sold again (what a Redis that lost its history would emit).
    stream = services.keyspace.activity(activity["id"]).events
    plain = await connect(settings.redis.url)
    try:
        [claimed] = [f for _, f in await plain.xrange(stream) if f["type"] == "claimed"]
        await plain.xadd(stream, {**claimed, "id": "evt-again", "claim_id": "claim-again"})
    finally:
        await plain.aclose()
    await persist(settings)
    stats = (await client.get(f"/v1/admin/activities/{activity['id']}/stats", headers=ADMIN)).json()
    assert (stats["claimed"], stats["persisted"], stats["conflicts"], stats["lag"]) == (1, 1, 1, 0)
    overall = (await client.get("/v1/admin/stats", headers=ADMIN)).json()
    assert (overall["conflicts"], overall["dead_letters"], overall["fence"]) == (1, 0, "open")
