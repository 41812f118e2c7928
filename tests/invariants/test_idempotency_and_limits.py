"""Idempotency and each limit under concurrency, through the HTTP app; then stats and the ledger agree."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.keys import KeySpace
from gateway.scripts.runner import RedisClient
from gateway.settings import Settings
from tests.helpers import ADMIN, bearer, create_activity
from tests.worker.conftest import persist

pytestmark = pytest.mark.slow


def claim_url(activity_id: str) -> str:
    return f"/v1/activities/{activity_id}/claim"


async def test_twenty_concurrent_retries_with_one_key(
    client: AsyncTestClient[Any], redis_client: RedisClient
) -> None:
    activity = await create_activity(client, stock=1, per_user_limit=5)
    aid = activity["id"]
    headers = {**bearer("racer"), "Idempotency-Key": "tap-1"}
    replies = await asyncio.gather(
        *(client.post(claim_url(aid), headers=headers, json={"channel": "live"}) for _ in range(20))
    )
    assert {r.status_code for r in replies} == {201}
    assert len({r.content for r in replies}) == 1  # 20 identical bodies
    keys = KeySpace(8, 4).activity(aid)
    assert await redis_client.hget(keys.config, "taken") == "1"
    assert await redis_client.hget(keys.config, "stock_left") == "0"

    # Sold out now, yet the same key still gets its first answer; another user gets sold_out.
    again = await client.post(claim_url(aid), headers=headers, json={"channel": "live"})
    assert (again.status_code, again.content) == (201, replies[0].content)
    assert (await client.post(claim_url(aid), headers=bearer("other"))).json()["error"] == "sold_out"

    record = keys.idempotency("racer", "tap-1")
    assert await redis_client.ttl(record) >= 24 * 3600

    conflict = await client.post(claim_url(aid), headers=headers, json={"channel": "web"})
    assert (conflict.status_code, conflict.json()["error"]) == (422, "idempotency_conflict")
    no_body = await client.post(claim_url(aid), headers=headers)  # no channel is another body too
    assert no_body.json()["error"] == "idempotency_conflict"


async def test_a_refusal_is_not_stored(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=0, per_user_limit=1)
    aid = activity["id"]
    headers = {**bearer("patient"), "Idempotency-Key": "k"}
    assert (await client.post(claim_url(aid), headers=headers)).json()["error"] == "sold_out"
    restocked = await client.post(f"/v1/admin/activities/{aid}/stock", headers=ADMIN, json={"delta": 1})
    assert restocked.status_code == 200
    assert (await client.post(claim_url(aid), headers=headers)).status_code == 201  # judged afresh


async def test_one_user_at_once_never_passes_its_limit(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=1000, per_user_limit=3)
    headers = bearer("greedy", "greedy-phone")
    replies = await asyncio.gather(
        *(client.post(claim_url(activity["id"]), headers=headers) for _ in range(60))
    )
    statuses = collections.Counter(r.status_code for r in replies)
    assert statuses == {201: 3, 409: 57}
    assert {r.json()["error"] for r in replies if r.status_code == 409} == {"limit_reached"}


async def test_one_device_many_users_never_passes_the_device_limit(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=1000, per_user_limit=2, per_device_limit=4)
    replies = await asyncio.gather(
        *(client.post(claim_url(activity["id"]), headers=bearer(f"farm-{i}", "one-phone")) for i in range(50))
    )
    assert collections.Counter(r.status_code for r in replies) == {201: 4, 409: 46}


async def test_many_users_never_pass_the_stock_and_stats_match_the_ledger(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    activity = await create_activity(client, stock=37, per_user_limit=1)
    aid = activity["id"]
    replies = await asyncio.gather(
        *(client.post(claim_url(aid), headers=bearer(f"crowd-{i}")) for i in range(400))
    )
    granted = sum(r.status_code == 201 for r in replies)
    assert granted == 37
    await persist(settings)
    stats = (await client.get(f"/v1/admin/activities/{aid}/stats", headers=ADMIN)).json()
    assert stats == {
        "stock_left": 0, "claimed": 37, "persisted": 37, "face_value_out": 37 * 500, "lag": 0, "conflicts": 0,
        "locked": 0, "redeemed": 0, "redeemed_value": 0,
    }  # fmt: skip
