"""The wallet's retention sweep through the worker: finished orders and final coupons leave Redis once the retention
has passed, and the ledger records when (``archived_at``), each once, whatever the sweep repeats."""

from __future__ import annotations

import time

from gateway.checkout.retention import Retained, WalletRetention
from gateway.checkout.service import ExpirySweeper
from tests.recovery.checkout_support import full_state
from tests.recovery.support import reconciler
from tests.recovery.test_restore import empty_redis, restore_all, same_state
from tests.worker.conftest import drain
from tests.worker.test_checkout_sink import DAY, LINES, USER, open_shop
from worker.consumer import Consumer

RETENTION = 30 * DAY


async def test_a_finished_order_and_a_final_coupon_leave_redis_and_the_ledger_says_when(
    consumer: Consumer,
) -> None:
    t0 = int(time.time()) - 2 * DAY  # the coupons' validity (a day) is over: the sweeps ran in the past
    shop = await open_shop(consumer, t0=t0)
    await shop.checkout.lock(USER, "o1", shop.first, LINES, now=t0 + 10)
    await shop.checkout.release(USER, "o1", now=t0 + 20)  # finished at t0 + 20; the coupon lives on
    await shop.checkout.lock(USER, "o2", shop.first, LINES, now=t0 + 30)
    await shop.checkout.redeem(USER, "o2", now=t0 + 40)  # finished when the coupon's validity ends
    valid_until = int((await shop.record(shop.wallet.coupons, shop.first))["valid_until"])
    # The expiry sweep at the coupon's validity's end: it can no longer change (final; the other expires).
    assert await ExpirySweeper(consumer.runner, consumer.claims.keyspace).sweep(now=valid_until) == 1
    await drain(consumer)
    retention = WalletRetention(
        consumer.runner, consumer.client, consumer.claims.keyspace, RETENTION, batch=1
    )

    assert await retention.sweep(now=t0 + 20 + RETENTION - 1) == Retained()
    assert await retention.sweep(now=t0 + 20 + RETENTION) == Retained(orders=1)  # o1 only
    at = valid_until + RETENTION
    assert await retention.sweep(now=at) == Retained(orders=1, coupons=2)
    assert await retention.sweep(now=at + 1) == Retained()  # nothing left to do

    assert await consumer.client.exists(shop.wallet.coupons, shop.wallet.user_index(USER)) == 0
    assert await consumer.client.hlen(shop.wallet.orders) == 0
    await drain(consumer)
    orders = await consumer.pool.fetch("SELECT order_id, status, archived_at FROM orders ORDER BY order_id")
    assert [tuple(r) for r in orders] == [("o1", "released", t0 + 20 + RETENTION), ("o2", "redeemed", at)]
    coupons = await consumer.pool.fetch(
        "SELECT coupon_id, status, archived_at FROM coupons ORDER BY coupon_id"
    )
    assert {r["coupon_id"]: (r["status"], r["archived_at"]) for r in coupons} == {
        shop.first: ("redeemed", at),
        shop.second: ("expired", at),  # expired unused at its validity's end, then left with the other
    }


async def test_reconcile_and_restore_expect_redis_without_what_the_retention_removed(
    consumer: Consumer,
) -> None:
    t0 = int(time.time()) - 2 * DAY  # the coupons' validity (a day) is over: the sweeps ran in the past
    shop = await open_shop(consumer, t0=t0)
    await shop.checkout.lock(USER, "o1", shop.first, LINES, now=t0 + 10)
    await shop.checkout.release(USER, "o1", now=t0 + 20)
    await shop.checkout.lock(USER, "o2", shop.second, LINES, now=t0 + 30)
    await shop.checkout.redeem(USER, "o2", now=t0 + 40)
    await shop.checkout.lock(USER, "o3", shop.first, LINES, now=t0 + 50)
    await shop.checkout.release(USER, "o3", now=t0 + 60)
    valid_until = int((await shop.record(shop.wallet.coupons, shop.second))["valid_until"])
    assert await ExpirySweeper(consumer.runner, consumer.claims.keyspace).sweep(now=valid_until) == 1
    retention = WalletRetention(consumer.runner, consumer.client, consumer.claims.keyspace, RETENTION)
    # o1 leaves; o3 (released 40 s later) and the redeemed o2 with its coupon stay
    assert await retention.sweep(now=t0 + 20 + RETENTION) == Retained(orders=1)
    await drain(consumer)
    assert (await reconciler(consumer).run()).differences == []
    wallet_keys = [
        shop.wallet.coupons,
        shop.wallet.orders,
        shop.wallet.finished_orders,
        shop.wallet.user_index(USER),
    ]
    before = {key: value for key, value in (await full_state(consumer.client)).items() if key in wallet_keys}
    assert set(before) == set(wallet_keys)
    assert set(before[shop.wallet.orders][1]) == {f"{USER}/o2", f"{USER}/o3"}
    assert before[shop.wallet.finished_orders][1] == [
        (f"{USER}/o3", float(t0 + 60)),
        (f"{USER}/o2", float(valid_until)),
    ]

    await empty_redis(consumer)
    await restore_all(consumer)

    after = {key: value for key, value in (await full_state(consumer.client)).items() if key in wallet_keys}
    same_state(before, after)
    assert (await reconciler(consumer).run()).differences == []

    # Redis holding what the ledger says left is a difference: reconcile reports it.
    await consumer.client.hset(shop.wallet.orders, f"{USER}/o1", '{"coupon":"x","status":"released"}')
    assert [d.what for d in (await reconciler(consumer).run()).differences] == ["order"]
