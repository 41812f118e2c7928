"""Backpressure: past the configured lag (events not yet persisted) or Redis memory use, claims are shed with
503 ``overloaded`` and ``Retry-After``; when the worker catches up they are served again. Stats show the lag
and the conflicts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.catalog import store
from gateway.catalog.admin import AdminService
from gateway.catalog.campaign import ActivityIn, PackItem, TemplateIn
from gateway.claim import shedding
from gateway.claim.shedding import LoadWatch
from gateway.http.app import create_app
from gateway.keys import KeySpace
from gateway.scripts.runner import connect
from gateway.services import Services
from gateway.settings import Settings, load_settings
from gateway.tokens import UserIdentity
from tests.conftest import settings_env
from tests.helpers import ADMIN, bearer, create_activity
from tests.http.support import assert_refusal, claim_url
from tests.worker.conftest import drain, persist
from tests.worker.test_sink import make_activity
from worker.consumer import Consumer, start_consumer


async def past_activity(worker: Consumer) -> str:
    """An activity whose window is already over when it is made (a quiet stream)."""
    admin = AdminService(worker.pool, worker.runner, KeySpace(8, 4))
    now = int(time.time())
    template = await admin.create_template(
        TemplateIn(name="t", kind="cash", amount_off=100, valid_days=3), "alice", now
    )
    body = ActivityIn(
        name="a",
        pack=[PackItem(template.id, 1)],
        starts_at=now - 600,
        ends_at=now - 10,
        stock=10,
        per_user_limit=1,
    )
    return (await admin.create_activity(body, "alice", now)).id


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


async def test_live_streams_are_measured_every_round_quiet_ones_at_their_turn_retired_ones_never(
    settings: Settings, clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background measure: a live stream each round; a quiet one every QUIET_MEASURE_SECONDS, its last lag
    counting meanwhile (then each round while it has a lag); a retired one never, nor its lag."""
    worker = await start_consumer(settings)  # its clients, pool and claim service; it persists when told
    load = LoadWatch(settings.shed, KeySpace(8, 4))
    polls, control, pool = worker.redis.polls, worker.client, worker.pool
    try:
        live = await make_activity(worker)
        quiet = await past_activity(worker)
        gone = await make_activity(worker)
        ids = {"live": live, "quiet": quiet, "gone": gone}
        streams = {name: KeySpace.activity(a).events for name, a in ids.items()}
        await drain(worker)
        await store.retire_stream(pool, streams["gone"], int(time.time()))
        measured: list[set[str]] = []
        lags_of = shedding.stream_lags

        async def spied(polls: Any, names: list[str]) -> list[shedding.StreamLag]:
            measured.append(set(names))
            return await lags_of(polls, names)

        monkeypatch.setattr(shedding, "stream_lags", spied)
        assert (await load.measure(polls, control, pool, every=True)).lag == 0

        for activity_id in (live, quiet, gone):  # a grant skips the window: the quiet one takes it too
            identity = UserIdentity("g1", "")
            await worker.claims.claim(
                activity_id, identity, now=int(time.time()), mode="grant", operator="ops"
            )
        await load.measure(polls, control, pool)  # a round: the live stream, not the quiet one
        assert streams["live"] in measured[-1] and streams["quiet"] not in measured[-1]
        assert (load.lags[streams["live"]], load.lags[streams["quiet"]]) == (1, 0)  # the quiet's last measure

        load._quiet_at -= shedding.QUIET_MEASURE_SECONDS  # its turn
        await load.measure(polls, control, pool)
        assert load.lags[streams["quiet"]] == 1
        await load.measure(polls, control, pool)
        assert streams["quiet"] in measured[-1]  # measured each round while it has a lag

        await drain(worker)
        assert (await load.measure(polls, control, pool)).lag == 0  # gone's grant never counted
        assert not any(streams["gone"] in names for names in measured)
        assert streams["gone"] not in load.lags and streams["gone"] not in await load.streams(pool)
    finally:
        await worker.redis.close()
        await worker.pool.close()
