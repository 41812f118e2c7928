"""Checkout under concurrency: one coupon raced by 50 orders, one order raced by 50 coupons, and 50 redeems of
one order at once, against a real gateway process so the requests are truly in flight together (the lock route
reads the coupon before its script runs: only the scripts' atomicity keeps one coupon to one order)."""

from __future__ import annotations

import asyncio
import collections
import json

import httpx
import pytest
from redis.asyncio import Redis

from gateway.keys import order_field
from gateway.settings import Settings
from tests.checkout.test_checkout_http import (
    LOCK,
    REDEEM,
    SPLIT_1000,
    claim_pack,
    event_types,
    figures,
    lock,
    wallet_keys,
)
from tests.helpers import bearer
from tests.http.support import assert_refusal
from tests.http.test_quote import CART

pytestmark = pytest.mark.slow

RACERS = 50


def refusal_codes(replies: list[httpx.Response]) -> collections.Counter[str]:
    return collections.Counter(r.json()["error"] for r in replies if r.status_code != 200)


async def test_fifty_orders_racing_for_one_coupon_leave_one_lock(
    http: httpx.AsyncClient, raw_redis: Redis, settings: Settings
) -> None:
    activity, (coupon,) = await claim_pack(http, "alice")
    headers = bearer("alice")
    orders = [f"o-{n}" for n in range(RACERS)]
    replies = await asyncio.gather(
        *(
            http.post(LOCK, json={"order_id": order, "coupon_id": coupon, "lines": CART}, headers=headers)
            for order in orders
        )
    )

    winners = [(order, r) for order, r in zip(orders, replies, strict=True) if r.status_code == 200]
    assert len(winners) == 1, [r.text for r in replies if r.status_code == 200]
    losers = [r for r in replies if r.status_code != 200]
    for reply in losers:
        assert_refusal(reply, 409, "coupon_unavailable")
    assert refusal_codes(list(replies)) == {"coupon_unavailable": RACERS - 1}
    ((winner, reply),) = winners
    answer = reply.json()
    assert answer["order_id"] == winner and answer["coupon_id"] == coupon
    assert answer["discount"] == 1000 and answer["split"] == SPLIT_1000

    # Redis holds one lock: the sweeper's index, the coupon's record, one order, one event, one count.
    wallet = wallet_keys(settings, "alice")
    assert await raw_redis.zrange(wallet.locks, 0, -1, withscores=True) == [
        (coupon.encode(), float(answer["locked_until"]))
    ]
    raw = await raw_redis.hget(wallet.coupons, coupon)
    assert raw is not None
    record = json.loads(raw)
    assert (record["status"], record["order"], record["locked_until"]) == (
        "locked",
        winner,
        answer["locked_until"],
    )
    orders_held = await raw_redis.hgetall(wallet.orders)
    assert list(orders_held) == [order_field("alice", winner).encode()]
    assert await event_types(raw_redis, settings, "alice") == ["locked"]
    assert await figures(http, activity) == {"locked": 1, "redeemed": 0, "redeemed_value": 0}
    # Every loser's order is unknown; the winner's view names the lock.
    loser = next(order for order in orders if order != winner)
    assert_refusal(await http.get(f"/v1/checkout/orders/{loser}", headers=headers), 404, "not_found")
    view = await http.get(f"/v1/checkout/orders/{winner}", headers=headers)
    assert view.status_code == 200, view.text
    assert view.json() == {
        "order_id": winner,
        "coupon_id": coupon,
        "status": "locked",
        "discount": 1000,
        "locked_until": answer["locked_until"],
    }


async def test_fifty_coupons_racing_for_one_order_leave_one_lock(
    http: httpx.AsyncClient, raw_redis: Redis, settings: Settings
) -> None:
    """One coupon per order: 50 of the user's coupons locked to the same order at once, one wins."""
    activity, coupons = await claim_pack(http, "alice", count=RACERS)
    headers = bearer("alice")
    replies = await asyncio.gather(
        *(
            http.post(LOCK, json={"order_id": "o-1", "coupon_id": coupon, "lines": CART}, headers=headers)
            for coupon in coupons
        )
    )
    winners = [coupon for coupon, r in zip(coupons, replies, strict=True) if r.status_code == 200]
    assert len(winners) == 1, winners
    for reply in replies:
        if reply.status_code != 200:
            assert_refusal(reply, 409, "coupon_unavailable")
    wallet = wallet_keys(settings, "alice")
    assert await raw_redis.zrange(wallet.locks, 0, -1) == [winners[0].encode()]
    raw = await raw_redis.hget(wallet.orders, order_field("alice", "o-1"))
    assert raw is not None
    order = json.loads(raw)
    assert order["coupon"] == winners[0] and order["status"] == "locked"
    assert await event_types(raw_redis, settings, "alice") == ["locked"]
    assert await figures(http, activity) == {"locked": 1, "redeemed": 0, "redeemed_value": 0}


async def test_fifty_redeems_of_one_order_answer_alike_and_count_once(
    http: httpx.AsyncClient, raw_redis: Redis, settings: Settings
) -> None:
    activity, (coupon,) = await claim_pack(http, "alice")
    await lock(http, "alice", "o-1", coupon)
    headers = bearer("alice")
    replies = await asyncio.gather(
        *(http.post(REDEEM, json={"order_id": "o-1"}, headers=headers) for _ in range(RACERS))
    )
    assert collections.Counter(r.status_code for r in replies) == {200: RACERS}, [r.text for r in replies]
    assert {r.content for r in replies} == {replies[0].content}
    assert replies[0].json() == {"order_id": "o-1", "coupon_id": coupon, "status": "redeemed"}
    assert await figures(http, activity) == {"locked": 0, "redeemed": 1, "redeemed_value": 1000}
    assert await event_types(raw_redis, settings, "alice") == ["locked", "redeemed"]
    wallet = wallet_keys(settings, "alice")
    assert await raw_redis.zcard(wallet.locks) == 0
