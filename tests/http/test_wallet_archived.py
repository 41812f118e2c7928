"""GET /v1/coupons with a final status (redeemed, expired) also lists what the retention sweep moved out of Redis,
from the ledger, in one order with what Redis holds; paging runs across both (a cursor may be an archived coupon);
without a status, or with a live one, the wallet is Redis's alone; Postgres away is a 503, never a 500."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from gateway.keys import KeySpace
from gateway.scripts.runner import connect
from gateway.settings import Settings
from tests.helpers import bearer, create_activity, create_template
from tests.http.support import assert_refusal
from tests.http.test_wallet import claim_packs


async def archive(settings: Settings, user: str, coupon_id: str, status: str, template_id: str) -> None:
    """A coupon as the ledger holds it once the retention sweep removed it from Redis."""
    conn = await asyncpg.connect(settings.postgres.url)
    try:
        await conn.execute(
            "INSERT INTO coupons (coupon_id, user_id, activity_id, template_id, claim_id, status, version,"
            " valid_from, valid_until, order_id, updated_at, archived_at)"
            " VALUES ($1, $2, 'a-old', $3, 'k-old', $4, 3, 100, 200, $5, 300, 400)",
            coupon_id,
            user,
            template_id,
            status,
            "o-" + coupon_id if status == "redeemed" else None,
        )
    finally:
        await conn.close()


async def redeem_in_redis(settings: Settings, user: str, coupon_id: str) -> None:
    wallet = KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets).wallet(user)
    direct = await connect(settings.redis.url)
    try:
        record = json.loads(await direct.hget(wallet.coupons, coupon_id))
        await direct.hset(
            wallet.coupons, coupon_id, json.dumps({**record, "status": "redeemed", "order": "o-hot"})
        )
    finally:
        await direct.aclose()


async def test_a_final_status_pages_across_redis_and_the_ledger(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    template = await create_template(client)
    activities = [(await create_activity(client, template_id=template["id"]))["id"] for _ in range(2)]
    hot = await claim_packs(client, "alice", activities)  # two coupons, oldest first
    await redeem_in_redis(settings, "alice", hot[0])
    await redeem_in_redis(settings, "alice", hot[1])
    # Archived coupons sorting between and around them (ids sort by creation).
    older, between, newest = "0" + hot[0], hot[0] + "x", hot[1] + "x"
    for coupon_id in (older, between, newest):
        await archive(settings, "alice", coupon_id, "redeemed", template["id"])
    await archive(settings, "alice", hot[1] + "y", "expired", template["id"])
    await archive(settings, "bob", hot[1] + "z", "redeemed", template["id"])  # another user's

    pages, cursor = [], ""
    while True:
        reply = await client.get(f"/v1/coupons?status=redeemed&limit=2{cursor}", headers=bearer("alice"))
        assert reply.status_code == 200, reply.text
        page = reply.json()
        pages.append([item["coupon_id"] for item in page["items"]])
        if "next_cursor" not in page:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert pages == [[newest, hot[1]], [between, hot[0]], [older]]

    first = (await client.get("/v1/coupons?status=redeemed&limit=1", headers=bearer("alice"))).json()
    assert first["items"] == [
        {
            "coupon_id": newest,
            "template_id": template["id"],
            "activity_id": "a-old",
            "status": "redeemed",
            "valid_from": 100,
            "valid_until": 200,
            "order_id": "o-" + newest,
        }
    ]
    expired = (await client.get("/v1/coupons?status=expired", headers=bearer("alice"))).json()
    assert [item["coupon_id"] for item in expired["items"]] == [hot[1] + "y"]
    # Without a status (or with a live one) the wallet is what Redis holds: the hot set.
    everything = (await client.get("/v1/coupons", headers=bearer("alice"))).json()
    assert [item["coupon_id"] for item in everything["items"]] == hot[::-1]
    available = await client.get(f"/v1/coupons?status=available&cursor={between}", headers=bearer("alice"))
    assert_refusal(available, 404, "not_found")  # an archived cursor names nothing in the hot set
    other = await client.get(f"/v1/coupons?status=redeemed&cursor={hot[1]}z", headers=bearer("alice"))
    assert_refusal(other, 404, "not_found")  # bob's archived coupon is no cursor of alice's


class Unreachable:
    """A pool whose every query finds Postgres refusing the connection."""

    async def fetchval(self, *_: object) -> None:
        raise ConnectionRefusedError("refused")

    async def fetch(self, *_: object) -> None:
        raise ConnectionRefusedError("refused")


async def test_the_ledger_away_is_overloaded_not_a_failure(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    template = await create_template(client)
    await claim_packs(client, "alice", [(await create_activity(client, template_id=template["id"]))["id"]])
    client.app.state.services.wallet.pool = Unreachable()  # the ledger refuses every connection
    reply = await client.get("/v1/coupons?status=redeemed", headers=bearer("alice"))
    assert_refusal(reply, 503, "overloaded")
    assert (await client.get("/v1/coupons", headers=bearer("alice"))).status_code == 200  # Redis alone
