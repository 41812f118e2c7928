"""Restore of checkout and codes: after locks, redeems, releases, refunds, a sweep, a code batch and redeemed
codes, a restore on an emptied Redis reproduces every key and value of the wallet buckets, the code buckets and
the activity, and the gateway goes on from there (a restored lock redeems, a redeemed code answers as before)."""

from __future__ import annotations

import json
import time

import pytest

from gateway.catalog.rebuild import PART_SIZE
from gateway.checkout.service import checkout_figures
from gateway.codes.batches import codes_redeemed
from gateway.outcomes import DomainError, Outcome
from gateway.scripts import ledger_check
from gateway.tokens import UserIdentity
from tests.recovery.checkout_support import (
    DISCOUNT,
    LINES,
    build_shop,
    checkout_service,
    code_bucket_of,
    code_service,
    full_state,
)
from tests.recovery.support import KEYS, marks, persist, reconciler, text
from tests.recovery.test_restore import empty_redis, restore_all, same_state
from worker.consumer import Consumer


async def test_restore_on_an_empty_redis_reproduces_checkout_and_codes(consumer: Consumer) -> None:
    shop = await build_shop(consumer)
    await persist(consumer)
    assert (await reconciler(consumer).run()).differences == []
    before = await full_state(consumer.client)
    figures = await checkout_figures(consumer.client, KEYS, shop.activity.id)
    assert (figures.locked, figures.redeemed, figures.redeemed_value) == (1, 2, 2 * DISCOUNT)
    assert await codes_redeemed(consumer.client, KEYS, shop.activity.id) == 2
    # What the state holds, so the comparison below cannot pass on an empty Redis.
    buyer1 = shop.wallet("buyer1")
    [(locked, deadline)] = before[buyer1.locks][1]
    assert locked == shop.coupons["buyer1"][1]
    assert 0 < deadline - time.time() <= 600
    order_states = {}
    for user, orders in (("buyer1", ("o1", "o2")), ("buyer2", ("o3", "o4")), ("buyer3", ("o5", "o6", "o7"))):
        for order in orders:
            order_states[order] = before[shop.wallet(user).orders][1][f"{user}/{order}"]["status"]
    assert order_states == {
        "o1": "redeemed",
        "o2": "locked",
        "o3": "refunded",
        "o4": "released",
        "o5": "expired",
        "o6": "locked",  # taken over after its lock lapsed: left as it was
        "o7": "redeemed",
    }
    assert before[shop.keys.code_batches][1] == {shop.batch_id: "4"}  # the refused batch left nothing
    bucket, code_hash = await code_bucket_of(shop, consumer, 0)
    assert before[bucket.codes][1][code_hash]["user"] == "coder1"
    assert before[KEYS.wallet("coder1").idempotency("coder1", "ck1")][1].endswith(shop.answers["coder1"])
    ledger_marks = await marks(consumer)

    await empty_redis(consumer)
    done = await restore_all(consumer, operator="ops")

    restored = {d.partition: d for d in done if d.action == "restored"}
    assert sorted(restored) == sorted(ledger_marks)
    for partition, item in restored.items():
        assert item.seq == ledger_marks[partition] + 1
    assert restored[shop.keys.tag].counts == {"users": 3, "devices": 3, "records": 0, "batches": 1}
    assert restored[buyer1.tag].counts["orders"] >= 2
    assert restored[bucket.tag].counts["codes"] >= 1
    after = await full_state(consumer.client)
    same_state(before, after)
    assert await ledger_check.partitions_behind(consumer.client, consumer.pool) == []
    assert await checkout_figures(consumer.client, KEYS, shop.activity.id) == figures
    assert await codes_redeemed(consumer.client, KEYS, shop.activity.id) == 2

    # The gateway goes on: the restored lock redeems; a locked coupon stays taken; the redeemed coupon refunds.
    checkout = checkout_service(consumer)
    now = int(time.time())
    redeemed = json.loads(await checkout.redeem("buyer1", "o2", now=now))
    assert redeemed == {"order_id": "o2", "coupon_id": shop.coupons["buyer1"][1], "status": "redeemed"}
    with pytest.raises(DomainError) as taken:
        await checkout.lock("buyer1", "o9", shop.coupons["buyer1"][0], LINES, now=now)
    assert taken.value.outcome is Outcome.COUPON_UNAVAILABLE  # redeemed by o1
    assert json.loads(await checkout.refund("buyer3", "o7", now=now))["returned"] is True
    view = await checkout.order("buyer2", "o4", now=now)
    assert (view.status, view.discount) == ("available", DISCOUNT)

    # A redeemed code: its redeemer gets the first answer (with or without the key), anyone else invalid_code.
    codes = code_service(consumer)
    again = await codes.redeem(
        UserIdentity("coder1", "cdev1"), shop.codes[0], now=now, idempotency_key=None, blocked=False
    )
    assert again.answer == shop.answers["coder1"]
    keyed = await codes.redeem(
        UserIdentity("coder1", "cdev9"), shop.codes[0], now=now, idempotency_key="ck1", blocked=False
    )
    assert keyed.answer == shop.answers["coder1"]
    with pytest.raises(DomainError) as other:
        await codes.redeem(
            UserIdentity("intruder", "idev"), shop.codes[1], now=now, idempotency_key=None, blocked=False
        )
    assert other.value.outcome is Outcome.INVALID_CODE
    fresh = await codes.redeem(
        UserIdentity("coder3", "cdev3"), shop.codes[2], now=now, idempotency_key=None, blocked=False
    )
    assert json.loads(fresh.answer)["coupons"]
    await persist(consumer)
    figures = await checkout_figures(consumer.client, KEYS, shop.activity.id)
    assert (figures.locked, figures.redeemed) == (0, 2)  # o2 redeemed, o7 refunded
    assert await codes_redeemed(consumer.client, KEYS, shop.activity.id) == 3
    assert await consumer.pool.fetchval("SELECT count(*) FROM conflicts") == 0
    report = await reconciler(consumer).run()
    assert (report.differences, report.repaired) == ([], []), report.lines()


async def test_a_large_wallet_and_code_bucket_are_restored_in_parts(consumer: Consumer) -> None:
    """More orders, locks and codes than one part holds: every one comes back."""
    shop = await build_shop(consumer)
    await persist(consumer)
    wallet = shop.wallet("buyer1")
    bucket, _ = await code_bucket_of(shop, consumer, 0)
    n = PART_SIZE  # each is a (field, value) pair: two parts per list
    now = int(time.time())
    await consumer.pool.execute(
        "INSERT INTO orders (user_id, order_id, coupon_id, status, discount, split, locked_until, returned,"
        " version, partition, updated_at)"
        " SELECT 'buyer1', 'bulk' || i, 'gone.' || i, 'released', 100, '[]', NULL, NULL, 2, $1, $2"
        " FROM generate_series(1, $3) AS i",
        wallet.tag,
        now,
        n,
    )
    await consumer.pool.execute(
        "INSERT INTO code_batches (batch_id, activity_id, count, starts_at, ends_at, pack, state, reserved,"
        " created_by, created_at) VALUES ('bulk', $1, $2, $3, $4, '[]', 'ready', true, 'ops', $3)",
        shop.activity.id,
        n,
        now - 60,
        now + 3600,
    )
    await consumer.pool.execute(
        "INSERT INTO codes (code_hash, batch_id, partition) SELECT 'bulk' || i, 'bulk', $1"
        " FROM generate_series(1, $2) AS i",
        bucket.tag,
        n,
    )

    await empty_redis(consumer)
    await restore_all(consumer)

    orders = {text(k): text(v) for k, v in (await consumer.client.hgetall(wallet.orders)).items()}
    assert len(orders) == n + 2  # o1, o2 and the bulk
    assert json.loads(orders["buyer1/bulk77"]) == {
        "coupon": "gone.77",
        "status": "released",
        "discount": 100,
        "split": "[]",
        "version": 2,
    }
    codes = {text(k): text(v) for k, v in (await consumer.client.hgetall(bucket.codes)).items()}
    assert sum(1 for code in codes if code.startswith("bulk")) == n
    assert json.loads(codes["bulk5"]) == {"batch": "bulk"}
    batch = json.loads(text(await consumer.client.hget(bucket.batches, "bulk")))
    assert batch["activity"] == shop.activity.id
    assert await consumer.client.hget(shop.keys.code_batches, "bulk") == str(n)
