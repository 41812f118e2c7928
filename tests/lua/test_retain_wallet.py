"""retain_orders and retain_coupons against real Redis: finished orders and final coupons past the cutoff leave
Redis (a coupon never before an order that names it), each removal recorded; what is not due, or still live,
stays; every key checked."""

from __future__ import annotations

import json
from typing import Any

from gateway.keys import order_field
from gateway.scripts.calls.checkout import RetainCouponsKeys, RetainOrdersKeys
from gateway.scripts.runner import RedisClient, ScriptRunner
from tests.lua.support import NOW, changed, snapshot
from tests.lua.test_checkout_scripts import (
    COUPON,
    COUPON_2,
    FIELD,
    ORDER,
    ORDER_2,
    USER,
    VALID_UNTIL,
    WALLET,
    appended,
    deliver_coupon,
    lock,
    ok,
    redeem,
    refund,
    release,
    value_of,
)

RETENTION = 30 * 86_400


async def retain(runner: ScriptRunner, *, now: int, limit: int = 100, event_id: str = "e-r") -> list[Any]:
    """What one sweep pass does in a bucket, by the two scripts: ``["ok", orders, coupons, more]``."""
    cutoff = now - RETENTION
    orders = await runner.run("retain_orders", RetainOrdersKeys.of(WALLET), [now, event_id, cutoff, limit])
    snap = await runner.control.zrangebyscore(WALLET.finished, "-inf", cutoff, start=0, num=limit)
    coupons = ["ok", 0]
    if snap:
        keys = RetainCouponsKeys.of(WALLET, USER)
        coupons = await runner.run(
            "retain_coupons", keys, [now, f"{event_id}c", cutoff, USER, json.dumps(snap)]
        )
    more = int(orders[2] or len(snap) == limit)
    return ["ok", orders[1], coupons[1], more]


async def made_final(client: RedisClient, coupon_id: str, at: int) -> None:
    """What the expiry sweep does once a coupon can no longer change."""
    await client.zadd(WALLET.finished, {coupon_id: at})


async def test_a_released_order_leaves_after_the_retention_and_its_coupon_stays(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner, now=NOW))
    await ok(release(runner, now=NOW + 60))

    not_yet = await snapshot(redis_client)
    assert await retain(runner, now=NOW + 60 + RETENTION - 1) == ["ok", 0, 0, 0]
    assert await snapshot(redis_client) == not_yet

    before = await snapshot(redis_client)
    assert await retain(runner, now=NOW + 60 + RETENTION) == ["ok", 1, 0, 0]
    after = await snapshot(redis_client)
    assert changed(before, after) == {WALLET.orders, WALLET.finished_orders, WALLET.seq, WALLET.events}
    assert value_of(after, WALLET.orders) is None  # the only order: the hash is gone
    assert value_of(after, WALLET.finished_orders) is None
    assert COUPON in value_of(after, WALLET.coupons)  # the coupon lives on (available)
    assert value_of(after, WALLET.seq) == str(int(value_of(before, WALLET.seq)) + 1)
    [archived] = appended(before, after)
    assert archived.pop("seq") == value_of(after, WALLET.seq)
    assert archived == {
        "type": "order_archived",
        "v": "2",
        "id": "e-r.1",
        "at": str(NOW + 60 + RETENTION),
        "user": USER,
        "order": ORDER,
        "status": "released",
        "order_version": "2",
    }


async def test_a_final_coupon_leaves_the_hash_and_its_owners_index(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner)
    await deliver_coupon(runner, COUPON_2)
    await made_final(redis_client, COUPON, VALID_UNTIL)
    at = VALID_UNTIL + RETENTION
    before = await snapshot(redis_client)

    assert await retain(runner, now=at) == ["ok", 0, 1, 0]

    after = await snapshot(redis_client)
    index = WALLET.user_index(USER)
    assert changed(before, after) == {WALLET.coupons, WALLET.finished, index, WALLET.seq, WALLET.events}
    assert list(value_of(after, WALLET.coupons)) == [COUPON_2]
    assert [member for member, _ in value_of(after, index)] == [COUPON_2]
    assert value_of(after, WALLET.finished) is None
    [archived] = appended(before, after)
    del archived["seq"]
    assert archived == {
        "type": "coupon_archived",
        "v": "2",
        "id": "e-rc.1",
        "at": str(at),
        "user": USER,
        "activity": "act1",
        "coupon": COUPON,
        "status": "available",
        "version": "1",
    }


async def test_a_coupon_waits_for_the_paid_order_that_names_it(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    """Redeemed, then refunded after its validity (returned false): the order finished later than the coupon;
    the coupon stays until the order has left, so a call on the order never finds it missing."""
    await deliver_coupon(runner)
    await ok(lock(runner, now=NOW))
    await ok(redeem(runner, now=NOW + 60))
    refunded_at = VALID_UNTIL + 1000
    await ok(refund(runner, now=refunded_at))
    await made_final(redis_client, COUPON, VALID_UNTIL)

    at = VALID_UNTIL + RETENTION  # the coupon is due, its order not yet
    assert await retain(runner, now=at) == ["ok", 0, 0, 0]
    snap = await snapshot(redis_client)
    assert COUPON in value_of(snap, WALLET.coupons)
    assert value_of(snap, WALLET.finished) == [(COUPON, float(refunded_at))]  # put off to its order's time

    assert await retain(runner, now=refunded_at + RETENTION, event_id="e-r2") == ["ok", 1, 1, 0]
    snap = await snapshot(redis_client)
    assert value_of(snap, WALLET.coupons) is None and value_of(snap, WALLET.orders) is None
    assert value_of(snap, WALLET.user_index(USER)) is None
    assert [e["type"] for _, e in value_of(snap, WALLET.events)["entries"][-2:]] == [
        "order_archived",
        "coupon_archived",
    ]


async def test_a_redeemed_order_finishes_when_its_coupons_validity_ends(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner, now=NOW))
    await ok(redeem(runner, now=NOW + 60))

    assert await retain(runner, now=NOW + 60 + RETENTION) == ["ok", 0, 0, 0]  # a refund could still return it
    assert await retain(runner, now=VALID_UNTIL + RETENTION) == ["ok", 1, 0, 0]


async def test_an_order_locked_again_is_live_and_stays(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    await deliver_coupon(runner)
    await ok(lock(runner, now=NOW))
    await ok(release(runner, now=NOW + 60))
    await ok(lock(runner, now=NOW + 120))
    snap = await snapshot(redis_client)
    assert value_of(snap, WALLET.finished_orders) is None  # the lock took it out

    assert await retain(runner, now=NOW + 120 + RETENTION) == ["ok", 0, 0, 0]
    assert FIELD in value_of(await snapshot(redis_client), WALLET.orders)


async def test_a_locked_order_met_in_the_index_is_dropped_from_it_not_removed(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    """Defensive: an index entry of an order that is live (never written so by the scripts) only leaves the index."""
    await deliver_coupon(runner)
    await ok(lock(runner, now=NOW))
    await redis_client.zadd(WALLET.finished_orders, {FIELD: NOW})
    before = await snapshot(redis_client)

    assert await retain(runner, now=NOW + RETENTION) == ["ok", 0, 0, 0]

    after = await snapshot(redis_client)
    assert changed(before, after) == {WALLET.finished_orders}


async def test_calls_on_an_order_whose_coupon_left_answer_without_failing(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    """An order that expired with its lock after the coupon's validity ended (the lock outlived it), and the coupon
    left first: a release replays, a redeem is refused, nothing fails."""
    await deliver_coupon(runner, valid_until=NOW + 300)
    await ok(lock(runner, now=NOW))
    await redis_client.hdel(WALLET.coupons, COUPON)

    assert (await release(runner, now=NOW + 1000))[0] == "replay"
    assert await redeem(runner, now=NOW + 1000) == ["coupon_unavailable"]


async def test_the_limit_bounds_each_index_and_says_more_may_be_due(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    for coupon in (COUPON, COUPON_2):
        await deliver_coupon(runner, coupon)
        await made_final(redis_client, coupon, VALID_UNTIL)
    await ok(lock(runner, ORDER_2, COUPON_2, now=NOW))  # never mind: the coupon is in final by hand
    await ok(release(runner, ORDER_2, now=NOW + 1))
    at = VALID_UNTIL + RETENTION

    assert await retain(runner, now=at, limit=1) == ["ok", 1, 1, 1]
    assert await retain(runner, now=at, limit=1, event_id="e-r2") == ["ok", 0, 1, 1]
    assert await retain(runner, now=at, limit=1, event_id="e-r3") == ["ok", 0, 0, 0]
    assert value_of(await snapshot(redis_client), WALLET.orders) is None
    assert order_field(USER, ORDER_2) not in (
        value_of(await snapshot(redis_client), WALLET.finished_orders) or []
    )
