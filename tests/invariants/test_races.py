"""The two races of the acceptance: no oversell, no user or device past its limit, and the wallet and the
ledger holding exactly the granted coupons afterwards. Against a real gateway process, so the 1,200 claims are
truly in flight together (the in-process test client serves one request at a time)."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import httpx
import pytest

from gateway.keys import KeySpace
from gateway.scripts.runner import RedisClient
from gateway.settings import Settings
from tests.helpers import bearer, create_activity, create_template
from tests.worker.conftest import drain
from worker.consumer import start_consumer

pytestmark = pytest.mark.slow

USERS, DEVICES, CLAIMS_EACH = 300, 100, 4


async def crowd_claims(http: httpx.AsyncClient, activity_id: str) -> list[tuple[str, str, Any]]:
    """300 users on 100 devices, each user sending 4 claims at once; (user, device, reply) for each."""
    calls = []
    for i in range(USERS):
        user, device = f"user-{i}", f"device-{i % DEVICES}"
        headers = bearer(user, device)
        calls += [(user, device, headers)] * CLAIMS_EACH
    replies = await asyncio.gather(
        *(http.post(f"/v1/activities/{activity_id}/claim", headers=h) for _, _, h in calls)
    )
    return [(u, d, r) for (u, d, _), r in zip(calls, replies, strict=True)]


async def check_race(
    http: httpx.AsyncClient,
    redis_client: RedisClient,
    settings: Settings,
    activity_id: str,
    *,
    expect_granted: int,
) -> collections.Counter[str]:
    results = await crowd_claims(http, activity_id)
    statuses = collections.Counter(r.status_code for _, _, r in results)
    assert set(statuses) <= {201, 409}, statuses  # granted, sold out or limit reached: nothing else
    granted = [(u, d, r.json()) for u, d, r in results if r.status_code == 201]
    assert len(granted) == expect_granted
    per_user = collections.Counter(u for u, _, _ in granted)
    per_device = collections.Counter(d for _, d, _ in granted)
    assert max(per_user.values()) <= 2
    assert max(per_device.values()) <= 3
    refusals = collections.Counter(r.json()["error"] for _, _, r in results if r.status_code == 409)
    assert set(refusals) <= {"sold_out", "limit_reached"}

    keyspace = KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets)
    act = keyspace.activity(activity_id)
    assert int(await redis_client.hget(act.config, "taken")) == expect_granted
    counts = await redis_client.hgetall(act.user_counts)
    assert {u: int(n) for u, n in counts.items()} == dict(per_user)
    device_counts = await redis_client.hgetall(act.device_counts)
    assert {d: int(n) for d, n in device_counts.items()} == dict(per_device)

    coupons_by_user: dict[str, set[str]] = collections.defaultdict(set)
    for user, _, answer in granted:
        coupons_by_user[user] |= {c["coupon_id"] for c in answer["coupons"]}
    for user, expected in coupons_by_user.items():
        wallet = keyspace.wallet(user)
        assert set(await redis_client.zrange(wallet.user_index(user), 0, -1)) == expected
        assert all(await redis_client.hmget(wallet.coupons, sorted(expected)))

    consumer = await start_consumer(settings)
    try:
        await drain(consumer)
        claims = await consumer.pool.fetch(
            "SELECT claim_id, user_id FROM claims WHERE activity_id = $1", activity_id
        )
        coupons = await consumer.pool.fetch(
            "SELECT coupon_id, user_id FROM coupons WHERE activity_id = $1", activity_id
        )
    finally:
        await consumer.redis.close()
        await consumer.pool.close()
    assert sorted((r["claim_id"], r["user_id"]) for r in claims) == sorted(
        (a["claim_id"], u) for u, _, a in granted
    )
    assert sorted((r["coupon_id"], r["user_id"]) for r in coupons) == sorted(
        (c, u) for u, cs in coupons_by_user.items() for c in cs
    )
    return per_device


async def test_stock_binds(http: httpx.AsyncClient, redis_client: RedisClient, settings: Settings) -> None:
    template = await create_template(http)
    activity = await create_activity(
        http, template_id=template["id"], stock=100, per_user_limit=2, per_device_limit=3
    )
    await check_race(http, redis_client, settings, activity["id"], expect_granted=100)
    keys = KeySpace(8, 4).activity(activity["id"])
    assert await redis_client.hget(keys.config, "stock_left") == "0"


async def test_limits_bind(http: httpx.AsyncClient, redis_client: RedisClient, settings: Settings) -> None:
    activity = await create_activity(http, stock=100_000, per_user_limit=2, per_device_limit=3)
    per_device = await check_race(http, redis_client, settings, activity["id"], expect_granted=300)
    assert set(per_device.values()) == {3}
    assert len(per_device) == DEVICES
