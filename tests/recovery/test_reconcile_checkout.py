"""Reconcile of checkout and codes against a ledger built the way the gateway builds it: each kind of
difference, seeded on purpose in a wallet bucket, a code bucket or an activity's code batches, is found exactly
(and nothing else is); a code batch a crash left half-done is voided."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from gateway.codes.service import CodeService
from gateway.keys import order_field
from gateway.outcomes import DomainError, Outcome
from tests.recovery.checkout_support import Shop, build_shop, code_bucket_of, code_service, hot_config
from tests.recovery.support import KEYS, OPERATOR, persist, reconciler, text
from worker.consumer import Consumer
from worker.recovery.compare import Difference
from worker.recovery.reconcile import Report


async def settled_shop(consumer: Consumer) -> Shop:
    """The shop of ``build_shop``, persisted by the worker, and checked clean before anything is seeded."""
    shop = await build_shop(consumer)
    await persist(consumer)
    report = await run_once(consumer)
    assert (report.differences, report.repaired) == ([], []), report.lines()
    return shop


async def run_once(consumer: Consumer) -> Report:
    return await reconciler(consumer).run()


async def record_of(consumer: Consumer, key: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(text(await consumer.client.hget(key, name)))
    return found


async def stock_left(consumer: Consumer, shop: Shop) -> int:
    return int(text(await consumer.client.hget(shop.keys.config, "stock_left")))


# --- wallet buckets ------------------------------------------------------------------------------------------


async def test_a_locked_coupons_status_order_and_deadline_changed_in_redis(consumer: Consumer) -> None:
    shop = await settled_shop(consumer)
    wallet = shop.wallet("buyer1")
    coupon_id = shop.coupons["buyer1"][1]  # locked by o2
    held = await record_of(consumer, wallet.coupons, coupon_id)
    assert (held["status"], held["order"], held["discount"]) == ("locked", "o2", 100)
    changed = {**held, "status": "available", "order": "o9", "locked_until": held["locked_until"] + 5}
    await consumer.client.hset(wallet.coupons, coupon_id, json.dumps(changed))

    report = await run_once(consumer)

    key = f"{wallet.coupons} {coupon_id}"
    assert report.differences == [
        Difference(wallet.tag, "coupon", key, "locked_until", held["locked_until"] + 5, held["locked_until"]),
        Difference(wallet.tag, "coupon", key, "order", "o9", "o2"),
        Difference(wallet.tag, "coupon", key, "status", "available", "locked"),
    ]
    assert report.repaired == []


async def test_a_redeemed_coupon_without_its_order_in_redis(consumer: Consumer) -> None:
    """A field the scripts keep only in some states (the order of a redeemed coupon) is compared too."""
    shop = await settled_shop(consumer)
    wallet = shop.wallet("buyer1")
    coupon_id = shop.coupons["buyer1"][0]  # redeemed by o1
    held = await record_of(consumer, wallet.coupons, coupon_id)
    del held["order"]
    await consumer.client.hset(wallet.coupons, coupon_id, json.dumps(held))

    report = await run_once(consumer)

    assert report.differences == [
        Difference(wallet.tag, "coupon", f"{wallet.coupons} {coupon_id}", "order", None, "o1")
    ]


@pytest.mark.parametrize("change", ["edited", "deleted"])
async def test_an_order_changed_or_missing_in_redis(consumer: Consumer, change: str) -> None:
    shop = await settled_shop(consumer)
    wallet = shop.wallet("buyer2")
    name = order_field("buyer2", "o4")
    held = await record_of(consumer, wallet.orders, name)
    assert held == {
        "coupon": shop.coupons["buyer2"][1],
        "status": "released",
        "discount": 100,
        "split": held["split"],
        "version": 2,
    }
    if change == "edited":
        await consumer.client.hset(wallet.orders, name, json.dumps({**held, "status": "locked"}))
    else:
        await consumer.client.hdel(wallet.orders, name)

    report = await run_once(consumer)

    if change == "edited":
        expected = Difference(wallet.tag, "order", f"{wallet.orders} {name}", "status", "locked", "released")
    else:
        expected = Difference(wallet.tag, "order", wallet.orders, name, None, held)
    assert report.differences == [expected]


async def test_a_refunded_orders_returned_flag_changed_in_redis(consumer: Consumer) -> None:
    shop = await settled_shop(consumer)
    wallet = shop.wallet("buyer2")
    name = order_field("buyer2", "o3")
    held = await record_of(consumer, wallet.orders, name)
    assert (held["status"], held["returned"]) == ("refunded", True)
    await consumer.client.hset(wallet.orders, name, json.dumps({**held, "returned": False}))

    report = await run_once(consumer)

    assert report.differences == [
        Difference(wallet.tag, "order", f"{wallet.orders} {name}", "returned", False, True)
    ]


async def test_a_lock_missing_from_the_zset(consumer: Consumer) -> None:
    shop = await settled_shop(consumer)
    wallet = shop.wallet("buyer1")
    coupon_id = shop.coupons["buyer1"][1]
    deadline = (await record_of(consumer, wallet.coupons, coupon_id))["locked_until"]
    assert await consumer.client.zrem(wallet.locks, coupon_id) == 1

    report = await run_once(consumer)

    assert report.differences == [Difference(wallet.tag, "lock", wallet.locks, coupon_id, None, deadline)]


async def test_a_lock_the_ledger_does_not_know(consumer: Consumer) -> None:
    shop = await settled_shop(consumer)
    wallet = shop.wallet("buyer2")
    await consumer.client.zadd(wallet.locks, {shop.coupons["buyer2"][1]: 1_900_000_000})

    report = await run_once(consumer)

    assert report.differences == [
        Difference(wallet.tag, "lock", wallet.locks, shop.coupons["buyer2"][1], 1_900_000_000, None)
    ]


async def test_a_counter_off(consumer: Consumer) -> None:
    shop = await settled_shop(consumer)
    wallet = shop.wallet("buyer1")
    name = f"{shop.activity.id}|redeemed_value"
    assert await consumer.client.hget(wallet.counters, name) == "100"
    await consumer.client.hincrby(wallet.counters, name, 250)

    report = await run_once(consumer)

    assert report.differences == [Difference(wallet.tag, "counter", wallet.counters, name, "350", "100")]


async def test_a_counter_at_zero_and_a_missing_one_are_the_same(consumer: Consumer) -> None:
    shop = await settled_shop(consumer)
    wallet = shop.wallet("buyer2")  # o3 redeemed then refunded, o4 released: every figure back at 0
    counters = await consumer.client.hgetall(wallet.counters)
    assert set(counters.values()) == {"0"}
    await consumer.client.hdel(wallet.counters, f"{shop.activity.id}|locked")
    await consumer.client.hset(wallet.counters, "other-activity|redeemed", "0")

    report = await run_once(consumer)

    assert report.differences == []


async def test_a_code_redeems_idempotency_record_missing(consumer: Consumer) -> None:
    shop = await settled_shop(consumer)
    wallet = shop.wallet("coder1")
    key = wallet.idempotency("coder1", "ck1")
    held = text(await consumer.client.get(key))
    assert held.endswith("|" + shop.answers["coder1"])
    await consumer.client.delete(key)

    report = await run_once(consumer)

    assert report.differences == [Difference(wallet.tag, "record", key, "", None, held)]


# --- code buckets ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["deleted", "redeemer"])
async def test_a_redeemed_code_missing_or_its_redeemer_changed(consumer: Consumer, change: str) -> None:
    shop = await settled_shop(consumer)
    bucket, code_hash = await code_bucket_of(shop, consumer, 0)
    held = await record_of(consumer, bucket.codes, code_hash)
    assert (held["batch"], held["user"], held["answer"], held["activity"]) == (
        shop.batch_id,
        "coder1",
        shop.answers["coder1"],
        shop.activity.id,
    )
    if change == "deleted":
        await consumer.client.hdel(bucket.codes, code_hash)
    else:
        await consumer.client.hset(bucket.codes, code_hash, json.dumps({**held, "user": "thief"}))

    report = await run_once(consumer)

    if change == "deleted":
        expected = Difference(bucket.tag, "code", bucket.codes, code_hash, None, held)
    else:
        expected = Difference(bucket.tag, "code", f"{bucket.codes} {code_hash}", "user", "thief", "coder1")
    assert report.differences == [expected]


async def test_an_unredeemed_code_missing(consumer: Consumer) -> None:
    shop = await settled_shop(consumer)
    bucket, code_hash = await code_bucket_of(shop, consumer, 3)
    assert await record_of(consumer, bucket.codes, code_hash) == {"batch": shop.batch_id}
    await consumer.client.hdel(bucket.codes, code_hash)

    report = await run_once(consumer)

    assert report.differences == [
        Difference(bucket.tag, "code", bucket.codes, code_hash, None, {"batch": shop.batch_id})
    ]


async def test_a_batch_record_missing_from_a_code_bucket(consumer: Consumer) -> None:
    shop = await settled_shop(consumer)
    bucket, _ = await code_bucket_of(shop, consumer, 1)
    held = await record_of(consumer, bucket.batches, shop.batch_id)
    assert (held["activity"], held["starts_at"], held["ends_at"]) == (
        shop.activity.id,
        shop.activity.starts_at,
        shop.activity.ends_at,
    )
    await consumer.client.hdel(bucket.batches, shop.batch_id)

    report = await run_once(consumer)

    assert report.differences == [Difference(bucket.tag, "batch", bucket.batches, shop.batch_id, None, held)]


async def test_a_code_counter_off(consumer: Consumer) -> None:
    shop = await settled_shop(consumer)
    bucket, _ = await code_bucket_of(shop, consumer, 0)
    held = text(await consumer.client.hget(bucket.counters, shop.activity.id))
    await consumer.client.hincrby(bucket.counters, shop.activity.id, 1)

    report = await run_once(consumer)

    assert report.differences == [
        Difference(bucket.tag, "counter", bucket.counters, shop.activity.id, str(int(held) + 1), held)
    ]


# --- an activity's code batches --------------------------------------------------------------------------------


async def test_an_activity_batches_entry_wrong(consumer: Consumer) -> None:
    shop = await settled_shop(consumer)
    batches = shop.keys.code_batches
    assert await consumer.client.hgetall(batches) == {shop.batch_id: "4"}
    await consumer.client.hset(batches, mapping={shop.batch_id: "void", "ghost": "2"})

    report = await run_once(consumer)

    assert report.differences == [
        Difference(shop.keys.tag, "batch", batches, shop.batch_id, "void", "4"),
        Difference(shop.keys.tag, "batch", batches, "ghost", "2", None),
    ]
    assert report.repaired == []


# --- half-done code batches --------------------------------------------------------------------------------------


def crashing(codes: CodeService, write: int) -> Any:
    """A put_codes that writes the first ``write`` codes, then dies (as the gateway would)."""
    original = codes.put_codes

    async def put_codes(batch_id: str, batch: str, hashes: list[str], *, now: int, drop: bool = False) -> int:
        if write:
            await original(batch_id, batch, hashes[:write], now=now, drop=drop)
        raise RuntimeError("the gateway died")

    return put_codes


async def half_done_batch(
    consumer: Consumer, shop: Shop, monkeypatch: pytest.MonkeyPatch, *, written: int, age: int
) -> str:
    """A batch recorded in Postgres and reserved in Redis whose maker died after writing ``written`` codes,
    ``age`` seconds ago; its id."""
    codes = code_service(consumer)
    monkeypatch.setattr(codes, "put_codes", crashing(codes, written))
    hot = await hot_config(consumer, shop.keys)
    with pytest.raises(RuntimeError, match="the gateway died"):
        await codes.make_batch(shop.activity.id, hot, 3, OPERATOR, now=int(time.time()) - age)
    found: str = await consumer.pool.fetchval("SELECT batch_id FROM code_batches WHERE state = 'recorded'")
    return found


@pytest.mark.parametrize("written", [0, 2], ids=["never-written", "half-written"])
async def test_a_half_done_batch_is_voided_and_its_stock_comes_back(
    consumer: Consumer, monkeypatch: pytest.MonkeyPatch, written: int
) -> None:
    shop = await settled_shop(consumer)
    stock = await stock_left(consumer, shop)
    batch_id = await half_done_batch(consumer, shop, monkeypatch, written=written, age=600)
    assert await stock_left(consumer, shop) == stock - 3
    hashes = [
        r["code_hash"]
        for r in await consumer.pool.fetch("SELECT code_hash FROM codes WHERE batch_id = $1", batch_id)
    ]
    present = [h for h in hashes if await consumer.client.hexists(KEYS.code(h).codes, h)]
    assert len(present) == written

    report = await run_once(consumer)

    created = await consumer.pool.fetchval(
        "SELECT created_at FROM code_batches WHERE batch_id = $1", batch_id
    )
    assert report.repaired == [
        f"{shop.keys.tag} code batch {batch_id} voided (recorded at {created}): stock left {stock},"
        f" {written} code(s) dropped"
    ]
    assert report.differences == [], report.lines()
    assert await stock_left(consumer, shop) == stock
    assert await consumer.client.hget(shop.keys.config, "reserved") == "4"  # the first batch's only
    assert await consumer.client.hget(shop.keys.code_batches, batch_id) == "void"
    assert not [h for h in hashes if await consumer.client.hexists(KEYS.code(h).codes, h)]
    row = await consumer.pool.fetchrow(
        "SELECT state, reserved, voided FROM code_batches WHERE batch_id = $1", batch_id
    )
    assert (row["state"], row["reserved"], row["voided"]) == ("void", True, True)
    audit = await consumer.pool.fetch(
        "SELECT action, operator FROM audit WHERE partition = $1 AND action LIKE '%codes' ORDER BY seq",
        shop.keys.tag,
    )
    assert [(r["action"], r["operator"]) for r in audit] == [
        ("reserve_codes", OPERATOR),
        ("reserve_codes", OPERATOR),
        ("void_codes", "reconcile"),
    ]
    again = await run_once(consumer)
    assert (again.differences, again.repaired) == ([], [])


async def test_a_batch_within_its_grace_is_left_alone(
    consumer: Consumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch being made (or whose maker died a moment ago) is not judged yet."""
    shop = await settled_shop(consumer)
    stock = await stock_left(consumer, shop)
    batch_id = await half_done_batch(consumer, shop, monkeypatch, written=2, age=0)

    report = await run_once(consumer)

    assert (report.differences, report.repaired) == ([], []), report.lines()
    assert await consumer.pool.fetchval("SELECT state FROM code_batches WHERE batch_id = $1", batch_id) == (
        "recorded"
    )
    assert await stock_left(consumer, shop) == stock - 3
    assert await consumer.client.hget(shop.keys.code_batches, batch_id) == "3"


async def test_a_void_cut_short_is_finished(consumer: Consumer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reconcile claimed a half-done batch (void in Postgres) and died before Redis gave its packs back."""
    shop = await settled_shop(consumer)
    stock = await stock_left(consumer, shop)
    batch_id = await half_done_batch(consumer, shop, monkeypatch, written=1, age=0)
    await persist(consumer)
    await consumer.pool.execute("UPDATE code_batches SET state = 'void' WHERE batch_id = $1", batch_id)

    report = await run_once(consumer)

    created = await consumer.pool.fetchval(
        "SELECT created_at FROM code_batches WHERE batch_id = $1", batch_id
    )
    assert report.repaired == [
        f"{shop.keys.tag} code batch {batch_id} voided (recorded at {created}): stock left {stock},"
        " 1 code(s) dropped"
    ]
    assert report.differences == [], report.lines()
    assert await stock_left(consumer, shop) == stock
    again = await run_once(consumer)
    assert (again.differences, again.repaired) == ([], [])


async def test_a_batch_voided_while_it_is_made_is_refused_and_takes_nothing(
    consumer: Consumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reconcile claims a batch whose maker is still at work (it outlived the grace): the maker cannot make it
    ready, drops what it wrote and gives the packs back itself."""
    shop = await settled_shop(consumer)
    stock = await stock_left(consumer, shop)
    codes = code_service(consumer)
    original = codes.put_codes
    written: list[str] = []

    async def put_codes(batch_id: str, batch: str, hashes: list[str], *, now: int, drop: bool = False) -> int:
        if not drop:
            await consumer.pool.execute(
                "UPDATE code_batches SET state = 'void' WHERE batch_id = $1", batch_id
            )
            written.extend(hashes)
        return await original(batch_id, batch, hashes, now=now, drop=drop)

    monkeypatch.setattr(codes, "put_codes", put_codes)
    hot = await hot_config(consumer, shop.keys)
    with pytest.raises(DomainError) as refused:
        await codes.make_batch(shop.activity.id, hot, 3, OPERATOR, now=int(time.time()))

    assert refused.value.outcome is Outcome.STATE_CONFLICT
    assert len(written) == 3
    assert not [h for h in written if await consumer.client.hexists(KEYS.code(h).codes, h)]
    assert await stock_left(consumer, shop) == stock
    report = await run_once(consumer)
    assert (report.differences, report.repaired) == ([], []), report.lines()
