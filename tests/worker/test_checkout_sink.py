"""Checkout's transitions in the ledger: each reaches Postgres exactly once and in order per coupon (``coupons``
and ``orders`` by version, ``coupon_events`` once per coupon version), whatever order or how often the worker
applies them."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import msgspec

from gateway.catalog.admin import AdminService
from gateway.catalog.campaign import ActivityIn, PackItem, TemplateIn
from gateway.checkout.quote import Line
from gateway.checkout.service import CheckoutService, LockSweeper
from gateway.checkout.terms import TermsCache
from gateway.events import ClaimAnswer
from gateway.keys import WalletKeys
from gateway.tokens import UserIdentity
from tests.worker.conftest import drain
from tests.worker.test_sink import pending
from worker import sink
from worker.consumer import Consumer
from worker.events import Entry

DAY = 86400
USER = "shopper"
LOCK_SECONDS = 60
DISCOUNT = 500
LINES = [Line(sku="s1", category="food", amount=3000), Line(sku="s2", category="toys", amount=1000)]
SPLIT = [{"sku": "s1", "amount": 375}, {"sku": "s2", "amount": 125}]  # 500 over 3000 + 1000, proportionally

# A coupon's history as (type, status, order_id), version 1 first.
History = list[tuple[str, str, str | None]]
# The coupons row: (status, version, order_id, discount, locked_until).
CouponState = tuple[str, int, str | None, int | None, int | None]
# An orders row: (coupon_id, status, version, discount, split, locked_until, returned).
OrderState = tuple[str, str, int, int, list[dict[str, Any]], int | None, bool | None]


@dataclass
class Shop:
    """One user's wallet with two coupons of one claim (cash 500, valid one day from ``t0``), and the services
    that move them through checkout."""

    consumer: Consumer
    checkout: CheckoutService
    sweeper: LockSweeper
    wallet: WalletKeys
    first: str
    second: str
    t0: int

    async def stream(self) -> list[Entry]:
        """The wallet's events as the worker reads them."""
        found = cast(list[tuple[str, dict[str, str]]], await self.consumer.client.xrange(self.wallet.events))
        return [Entry(self.wallet.events, entry_id, fields) for entry_id, fields in found]

    async def seq(self) -> int:
        return int(cast(str, await self.consumer.client.get(self.wallet.seq)))

    async def record(self, key: str, field: str) -> dict[str, Any]:
        """A coupon's or an order's JSON record as Redis holds it."""
        raw = await self.consumer.client.hget(key, field)
        assert raw is not None, f"no {field} in {key}"
        found: dict[str, Any] = msgspec.json.decode(raw)
        return found


async def open_shop(consumer: Consumer, *, t0: int) -> Shop:
    """A template and activity through the admin service, then one claim by ``USER`` at ``t0``."""
    keyspace = consumer.claims.keyspace
    admin = AdminService(consumer.pool, consumer.runner, keyspace)
    template = await admin.create_template(
        TemplateIn(name="t", kind="cash", amount_off=DISCOUNT, valid_days=1), "alice", t0
    )
    activity = await admin.create_activity(
        ActivityIn(
            name="a",
            pack=[PackItem(template.id, 2)],
            starts_at=t0 - 10,
            ends_at=t0 + DAY,
            stock=10,
            per_user_limit=1,
        ),
        "alice",
        t0,
    )
    claimed = await consumer.claims.claim(activity.id, UserIdentity(USER, "d1"), now=t0)
    first, second = (c.coupon_id for c in msgspec.json.decode(claimed.answer, type=ClaimAnswer).coupons)
    # The claim in the ledger first: a wallet's events about coupons whose claim it lacks would wait for it.
    activity_events = keyspace.activity(activity.id).events
    found = cast(list[tuple[str, dict[str, str]]], await consumer.client.xrange(activity_events))
    async with consumer.pool.acquire() as conn:
        await sink.write(conn, [Entry(activity_events, entry_id, fields) for entry_id, fields in found])
    checkout = CheckoutService(consumer.runner, keyspace, TermsCache(consumer.pool), LOCK_SECONDS)
    return Shop(
        consumer, checkout, LockSweeper(consumer.runner, keyspace), keyspace.wallet(USER), first, second, t0
    )


async def drive(shop: Shop) -> None:
    """The first coupon: lock (o1), redeem, refund (returned), lock (o2), release; the second: lock (o3), then
    the sweeper expires the lapsed lock. Every step at an explicit time after ``t0``."""
    t0, checkout = shop.t0, shop.checkout
    await checkout.lock(USER, "o1", shop.first, LINES, now=t0 + 10)
    await checkout.redeem(USER, "o1", now=t0 + 20)
    refund = msgspec.json.decode(await checkout.refund(USER, "o1", now=t0 + 30))
    assert refund["returned"] is True
    await checkout.lock(USER, "o2", shop.first, LINES, now=t0 + 40)
    await checkout.release(USER, "o2", now=t0 + 50)
    await checkout.lock(USER, "o3", shop.second, LINES, now=t0 + 60)
    assert await shop.sweeper.sweep(now=t0 + 60 + LOCK_SECONDS + 1) == 1


FIRST_HISTORY: History = [
    ("delivered", "available", None),
    ("locked", "locked", "o1"),
    ("redeemed", "redeemed", "o1"),
    ("refunded", "available", "o1"),
    ("locked", "locked", "o2"),
    ("released", "available", "o2"),
]
SECOND_HISTORY: History = [
    ("delivered", "available", None),
    ("locked", "locked", "o3"),
    ("lock_expired", "available", "o3"),
]


def final_coupons(shop: Shop) -> dict[str, CouponState]:
    return {
        shop.first: ("available", len(FIRST_HISTORY), None, None, None),
        shop.second: ("available", len(SECOND_HISTORY), None, None, None),
    }


def final_orders(shop: Shop) -> dict[str, OrderState]:
    return {
        "o1": (shop.first, "refunded", 3, DISCOUNT, SPLIT, None, True),
        "o2": (shop.first, "released", 2, DISCOUNT, SPLIT, None, None),
        "o3": (shop.second, "expired", 2, DISCOUNT, SPLIT, None, None),
    }


async def coupon_rows(pool: asyncpg.Pool) -> dict[str, CouponState]:
    rows = await pool.fetch(
        "SELECT coupon_id, status, version, order_id, discount, locked_until FROM coupons"
    )
    return {
        r["coupon_id"]: (r["status"], r["version"], r["order_id"], r["discount"], r["locked_until"])
        for r in rows
    }


async def order_rows(pool: asyncpg.Pool) -> dict[str, OrderState]:
    rows = await pool.fetch(
        "SELECT user_id, order_id, coupon_id, status, version, discount, split, locked_until, returned FROM orders"
    )
    assert {r["user_id"] for r in rows} <= {USER}
    return {
        r["order_id"]: (
            r["coupon_id"],
            r["status"],
            r["version"],
            r["discount"],
            msgspec.json.decode(r["split"]),
            r["locked_until"],
            r["returned"],
        )
        for r in rows
    }


async def histories(pool: asyncpg.Pool) -> dict[str, list[tuple[int, str, str, str | None]]]:
    """Each coupon's events in version order: (version, type, status, order_id)."""
    rows = await pool.fetch(
        "SELECT coupon_id, version, type, status, order_id FROM coupon_events ORDER BY 1, 2"
    )
    found: dict[str, list[tuple[int, str, str, str | None]]] = {}
    for r in rows:
        found.setdefault(r["coupon_id"], []).append((r["version"], r["type"], r["status"], r["order_id"]))
    return found


def numbered(history: History) -> list[tuple[int, str, str, str | None]]:
    return [(version, *step) for version, step in enumerate(history, start=1)]


async def marks(pool: asyncpg.Pool) -> dict[str, int]:
    return dict(await pool.fetch("SELECT partition, seq FROM partition_marks"))


async def ledger(pool: asyncpg.Pool) -> list[list[tuple[Any, ...]]]:
    """Everything checkout writes, for comparing before and after."""
    queries = (
        "SELECT * FROM coupons ORDER BY coupon_id",
        "SELECT * FROM coupon_events ORDER BY coupon_id, version",
        "SELECT * FROM orders ORDER BY user_id, order_id",
        "SELECT * FROM partition_marks ORDER BY partition",
    )
    return [[tuple(r) for r in await pool.fetch(q)] for q in queries]


async def conflict_count(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM conflicts")
    return count


async def test_every_transition_reaches_postgres_once_and_in_order(consumer: Consumer) -> None:
    shop = await open_shop(consumer, t0=int(time.time()))
    await drive(shop)

    await drain(consumer)

    pool = consumer.pool
    assert await histories(pool) == {
        shop.first: numbered(FIRST_HISTORY),
        shop.second: numbered(SECOND_HISTORY),
    }
    # Each row is its stream event's, written once: same event id and time.
    expected_events: list[tuple[str, int, str, int]] = []
    for event in await shop.stream():
        f = event.fields
        moved = [shop.first, shop.second] if event.type == "delivered" else [f["coupon"]]
        expected_events += [(c, int(f["version"]), f["id"], int(f["at"])) for c in moved]
    rows = await pool.fetch("SELECT coupon_id, version, event_id, at FROM coupon_events ORDER BY 1, 2")
    assert [tuple(r) for r in rows] == sorted(expected_events)
    t0 = shop.t0
    assert [r["at"] for r in rows if r["coupon_id"] == shop.first] == [
        t0,
        t0 + 10,
        t0 + 20,
        t0 + 30,
        t0 + 40,
        t0 + 50,
    ]
    assert [r["at"] for r in rows if r["coupon_id"] == shop.second] == [
        t0,
        t0 + 60,
        t0 + 60 + LOCK_SECONDS + 1,
    ]

    assert await coupon_rows(pool) == final_coupons(shop)
    assert await order_rows(pool) == final_orders(shop)
    assert await shop.seq() == 1 + 5 + 2  # delivered, the first coupon's five steps, the second's two
    assert (await marks(pool))[shop.wallet.tag] == await shop.seq()
    assert await conflict_count(pool) == 0
    assert await pending(consumer) == 0


async def test_postgres_follows_redis_after_each_transition(consumer: Consumer) -> None:
    """Drained after every step: the ``coupons`` and ``orders`` rows are what Redis holds at that moment."""
    shop = await open_shop(consumer, t0=int(time.time()))
    t0, checkout = shop.t0, shop.checkout
    steps: list[tuple[str, str, int, Callable[[], Awaitable[object]]]] = [
        (shop.first, "o1", 2, lambda: checkout.lock(USER, "o1", shop.first, LINES, now=t0 + 10)),
        (shop.first, "o1", 3, lambda: checkout.redeem(USER, "o1", now=t0 + 20)),
        (shop.first, "o1", 4, lambda: checkout.refund(USER, "o1", now=t0 + 30)),
        (shop.first, "o2", 5, lambda: checkout.lock(USER, "o2", shop.first, LINES, now=t0 + 40)),
        (shop.first, "o2", 6, lambda: checkout.release(USER, "o2", now=t0 + 50)),
        (shop.second, "o3", 2, lambda: checkout.lock(USER, "o3", shop.second, LINES, now=t0 + 60)),
        (shop.second, "o3", 3, lambda: shop.sweeper.sweep(now=t0 + 60 + LOCK_SECONDS + 1)),
    ]
    await drain(consumer)
    for coupon_id, order_id, version, step in steps:
        await step()
        await drain(consumer)
        coupon = await shop.record(shop.wallet.coupons, coupon_id)
        order = await shop.record(shop.wallet.orders, f"{USER}/{order_id}")
        held: CouponState = (
            coupon["status"],
            coupon["version"],
            coupon.get("order"),
            coupon.get("discount"),
            coupon.get("locked_until"),
        )
        assert (await coupon_rows(consumer.pool))[coupon_id] == held
        assert held[1] == version
        placed: OrderState = (
            order["coupon"],
            order["status"],
            order["version"],
            order["discount"],
            msgspec.json.decode(order["split"]),
            order.get("locked_until"),
            order.get("returned"),
        )
        assert (await order_rows(consumer.pool))[order_id] == placed
        assert (await marks(consumer.pool))[shop.wallet.tag] == await shop.seq()


async def test_a_redelivered_batch_changes_nothing_and_is_no_conflict(consumer: Consumer) -> None:
    shop = await open_shop(consumer, t0=int(time.time()))
    await drive(shop)
    entries = await shop.stream()
    async with consumer.pool.acquire() as conn:
        first = await sink.write(conn, entries)
        assert (first.failed, first.conflicts) == ({}, set())
        before = await ledger(consumer.pool)
        again = [await sink.write(conn, entries), await sink.write(conn, entries[::-1])]
        again += [await sink.write(conn, [entry]) for entry in entries]
    assert all((w.failed, w.conflicts) == ({}, set()) for w in again)
    assert await ledger(consumer.pool) == before
    assert await conflict_count(consumer.pool) == 0
    assert await histories(consumer.pool) == {
        shop.first: numbered(FIRST_HISTORY),
        shop.second: numbered(SECOND_HISTORY),
    }
    assert await coupon_rows(consumer.pool) == final_coupons(shop)
    assert await order_rows(consumer.pool) == final_orders(shop)


async def test_a_newer_batch_applied_first_is_never_overwritten(consumer: Consumer) -> None:
    shop = await open_shop(consumer, t0=int(time.time()))
    await drive(shop)
    entries = await shop.stream()
    pool = consumer.pool
    for cut in range(1, len(entries)):
        await pool.execute("TRUNCATE coupons, coupon_events, orders, partition_marks, conflicts")
        earlier, later = entries[:cut], entries[cut:]
        async with pool.acquire() as conn:
            await sink.apply(conn, later)
            after_later = (await coupon_rows(pool), await order_rows(pool))
            assert await sink.apply(conn, earlier) == set(), f"cut at {cut}"
        coupons, orders = await coupon_rows(pool), await order_rows(pool)
        assert coupons == final_coupons(shop), f"cut at {cut}"
        assert orders == final_orders(shop), f"cut at {cut}"
        # What the later batch wrote was never moved back by the older one.
        assert {k: v for k, v in coupons.items() if k in after_later[0]} == after_later[0], f"cut at {cut}"
        assert {k: v for k, v in orders.items() if k in after_later[1]} == after_later[1], f"cut at {cut}"
        assert await histories(pool) == {
            shop.first: numbered(FIRST_HISTORY),
            shop.second: numbered(SECOND_HISTORY),
        }, f"cut at {cut}"
        assert (await marks(pool))[shop.wallet.tag] == await shop.seq()
        assert await conflict_count(pool) == 0


async def test_a_refund_past_validity_updates_the_order_only(consumer: Consumer) -> None:
    shop = await open_shop(consumer, t0=int(time.time()))
    t0 = shop.t0
    await shop.checkout.lock(USER, "o1", shop.first, LINES, now=t0 + 10)
    await shop.checkout.redeem(USER, "o1", now=t0 + 20)
    await drain(consumer)
    pool = consumer.pool
    history_before = await histories(pool)
    redeemed: CouponState = ("redeemed", 3, "o1", DISCOUNT, None)
    assert (await coupon_rows(pool))[shop.first] == redeemed

    refund = msgspec.json.decode(await shop.checkout.refund(USER, "o1", now=t0 + DAY + 10))
    assert refund == {"order_id": "o1", "coupon_id": shop.first, "status": "redeemed", "returned": False}
    await drain(consumer)

    assert await histories(pool) == history_before  # no new coupon_events row
    assert [(v, t) for v, t, _, _ in history_before[shop.first]] == [
        (1, "delivered"),
        (2, "locked"),
        (3, "redeemed"),
    ]
    assert (await coupon_rows(pool))[shop.first] == redeemed
    assert (await order_rows(pool))["o1"] == (shop.first, "refunded", 3, DISCOUNT, SPLIT, None, False)
    updated = await pool.fetchval("SELECT updated_at FROM orders WHERE order_id = 'o1'")
    assert updated == t0 + DAY + 10
    assert (await marks(pool))[shop.wallet.tag] == await shop.seq() == 4
    assert await conflict_count(pool) == 0


async def test_the_workers_sweep_persists_lock_expired(consumer: Consumer) -> None:
    """The consumer's own sweep (real time): a lock whose deadline passed long ago is expired and persisted."""
    t0 = int(time.time()) - 1000
    shop = await open_shop(consumer, t0=t0)
    await shop.checkout.lock(USER, "o1", shop.first, LINES, now=t0 + 10)  # held until t0 + 70, long past

    swept_at = int(time.time())
    assert consumer.housekeeping is not None
    await consumer.housekeeping.sweep_locks()
    assert consumer.housekeeping.locks_expired == 1
    [expired] = [e for e in await shop.stream() if e.type == "lock_expired"]
    assert expired.fields["coupon"] == shop.first
    await drain(consumer)
    events = await consumer.pool.fetch(
        "SELECT version, type, status, order_id, event_id, at FROM coupon_events WHERE coupon_id = $1 ORDER BY 1",
        shop.first,
    )
    assert [(r["version"], r["type"], r["status"], r["order_id"]) for r in events] == [
        (1, "delivered", "available", None),
        (2, "locked", "locked", "o1"),
        (3, "lock_expired", "available", "o1"),
    ]
    assert events[-1]["event_id"] == expired.fields["id"]
    assert events[-1]["at"] >= swept_at
    assert (await coupon_rows(consumer.pool))[shop.first] == ("available", 3, None, None, None)
    assert (await order_rows(consumer.pool))["o1"] == (shop.first, "expired", 2, DISCOUNT, SPLIT, None, None)
    assert (await marks(consumer.pool))[shop.wallet.tag] == await shop.seq() == 3
