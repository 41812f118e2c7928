"""The wallet's retention sweep through the worker: finished orders and final coupons leave Redis once the retention
has passed, and the ledger records when (``archived_at``), each once, whatever the sweep repeats."""

from __future__ import annotations

import time

from gateway.checkout.retention import Retained, WalletRetention
from tests.worker.conftest import drain
from tests.worker.test_checkout_sink import DAY, LINES, USER, open_shop
from worker.consumer import Consumer

RETENTION = 30 * DAY


async def test_a_finished_order_and_a_final_coupon_leave_redis_and_the_ledger_says_when(
    consumer: Consumer,
) -> None:
    t0 = int(time.time()) - 1000
    shop = await open_shop(consumer, t0=t0)
    await shop.checkout.lock(USER, "o1", shop.first, LINES, now=t0 + 10)
    await shop.checkout.release(USER, "o1", now=t0 + 20)  # finished at t0 + 20; the coupon lives on
    await shop.checkout.lock(USER, "o2", shop.first, LINES, now=t0 + 30)
    await shop.checkout.redeem(USER, "o2", now=t0 + 40)  # finished when the coupon's validity ends
    valid_until = int((await shop.record(shop.wallet.coupons, shop.first))["valid_until"])
    # What the expiry sweep does at the coupon's validity's end: it can no longer change.
    await consumer.client.zadd(shop.wallet.finished, {shop.first: valid_until})
    await drain(consumer)
    retention = WalletRetention(
        consumer.runner, consumer.client, consumer.claims.keyspace, RETENTION, batch=1
    )

    assert await retention.sweep(now=t0 + 20 + RETENTION - 1) == Retained()
    assert await retention.sweep(now=t0 + 20 + RETENTION) == Retained(orders=1)  # o1 only
    at = valid_until + RETENTION
    assert await retention.sweep(now=at) == Retained(orders=1, coupons=1)
    assert await retention.sweep(now=at + 1) == Retained()  # nothing left to do

    assert await consumer.client.hexists(shop.wallet.coupons, shop.first) == 0
    assert await consumer.client.hexists(shop.wallet.coupons, shop.second) == 1  # still live
    assert await consumer.client.zrange(shop.wallet.user_index(USER), 0, -1) == [shop.second]
    assert await consumer.client.hlen(shop.wallet.orders) == 0
    await drain(consumer)
    orders = await consumer.pool.fetch("SELECT order_id, status, archived_at FROM orders ORDER BY order_id")
    assert [tuple(r) for r in orders] == [("o1", "released", t0 + 20 + RETENTION), ("o2", "redeemed", at)]
    coupons = await consumer.pool.fetch(
        "SELECT coupon_id, status, archived_at FROM coupons ORDER BY coupon_id"
    )
    assert {r["coupon_id"]: (r["status"], r["archived_at"]) for r in coupons} == {
        shop.first: ("redeemed", at),
        shop.second: ("available", None),
    }
