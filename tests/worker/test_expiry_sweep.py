"""The expiry sweep in the ledger: each coupon still available past its validity reaches Postgres as ``expired``
exactly once (the coupon's row at its new version, one ``coupon_events`` row), whatever order, how often and by how
many workers it is applied; the worker runs the sweep after the lock sweep, and a fenced Redis postpones it.

The acceptance: two workers over the same Redis and Postgres sweeping concurrently, then a fresh one after a
restart, leave exactly one ``expired`` per coupon and every coupon's versions consistent. Time is the processes'
one clock (``gateway.clock``), moved past the coupons' validity."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg
import msgspec
import pytest

from gateway import clock
from gateway.checkout.quote import Line
from gateway.checkout.service import CheckoutService
from gateway.checkout.terms import TermsCache
from gateway.events import ClaimAnswer
from gateway.keys import KeySpace, Partition
from gateway.settings import Settings
from tests.worker.conftest import drain
from tests.worker.test_sink import claim_n, make_activity, pending
from worker import sink
from worker.consumer import Consumer, start_consumer
from worker.events import Entry
from worker.recovery.reconcile import Reconciler

KEYS = KeySpace(8, 4)  # as tests.conftest.settings_env sets the buckets
LOCK_SECONDS = 60
LINES = [Line(sku="s1", category="food", amount=3000)]


class Sold(msgspec.Struct):
    owners: dict[str, str]  # coupon id -> its owner
    valid_until: dict[str, int]  # coupon id -> the end of its validity

    @property
    def last(self) -> int:
        return max(self.valid_until.values())

    def of(self, user: str) -> list[str]:
        return sorted(c for c, owner in self.owners.items() if owner == user)


async def sell(consumer: Consumer, users: int) -> Sold:
    """An activity (packs of two coupons, valid 3 days) claimed by ``users`` users (u0, u1, ...); not drained."""
    activity_id = await make_activity(consumer, stock=users)
    sold = Sold({}, {})
    for n, answer in enumerate(await claim_n(consumer.claims, activity_id, users)):
        for coupon in msgspec.json.decode(answer, type=ClaimAnswer).coupons:
            sold.owners[coupon.coupon_id] = f"u{n}"
            sold.valid_until[coupon.coupon_id] = coupon.valid_until
    return sold


def checkout(consumer: Consumer) -> CheckoutService:
    return CheckoutService(consumer.runner, KEYS, TermsCache(consumer.pool), LOCK_SECONDS)


async def expired_rows(pool: asyncpg.Pool) -> dict[str, list[tuple[int, str, str]]]:
    """coupon id -> its ``expired`` history rows: (version, event id, status)."""
    found: dict[str, list[tuple[int, str, str]]] = {}
    for row in await pool.fetch(
        "SELECT coupon_id, version, event_id, status FROM coupon_events WHERE type = 'expired'"
        " ORDER BY coupon_id, version"
    ):
        found.setdefault(row["coupon_id"], []).append((row["version"], row["event_id"], row["status"]))
    return found


async def coupon_rows(pool: asyncpg.Pool) -> dict[str, tuple[str, int]]:
    rows = await pool.fetch("SELECT coupon_id, status, version FROM coupons")
    return {row["coupon_id"]: (row["status"], row["version"]) for row in rows}


async def versions_consistent(pool: asyncpg.Pool) -> list[str]:
    """Coupons whose history is not 1, 2, ... up to the row's version, ending in the row's status."""
    rows = await pool.fetch(
        "SELECT c.coupon_id FROM coupons c JOIN coupon_events e USING (coupon_id)"
        " GROUP BY c.coupon_id, c.version, c.status"
        " HAVING array_agg(e.version ORDER BY e.version) <> array(SELECT generate_series(1, c.version))"
        " OR (array_agg(e.status ORDER BY e.version DESC))[1] <> c.status"
    )
    return [row["coupon_id"] for row in rows]


async def conflicts(pool: asyncpg.Pool) -> list[str]:
    return [row["reason"] for row in await pool.fetch("SELECT reason FROM conflicts ORDER BY conflict_id")]


async def wallet_entries(consumer: Consumer, user: str, kind: str) -> list[dict[str, str]]:
    found = cast(list[tuple[str, dict[str, str]]], await consumer.client.xrange(KEYS.wallet(user).events))
    return [fields for _, fields in found if fields["type"] == kind]


# --- the sink ----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("moved_clock")
async def test_the_workers_sweep_persists_each_expiry(consumer: Consumer) -> None:
    sold = await sell(consumer, 2)
    await drain(consumer)
    used = sold.of("u0")[0]
    shop = checkout(consumer)
    await shop.lock("u0", "o1", used, LINES, now=sold.valid_until[used] - 100)
    await shop.redeem("u0", "o1", now=sold.valid_until[used] - 90)
    clock.set_to(sold.last + 1)
    assert consumer.housekeeping is not None

    await consumer.housekeeping.sweep_expired()
    await drain(consumer)

    assert consumer.housekeeping.coupons_expired == 3
    expired = set(sold.owners) - {used}
    assert await expired_rows(consumer.pool) == {c: [(2, f"expired:{c}", "expired")] for c in expired}
    assert await coupon_rows(consumer.pool) == {**{c: ("expired", 2) for c in expired}, used: ("redeemed", 3)}
    rows = await consumer.pool.fetch("SELECT at, order_id FROM coupon_events WHERE type = 'expired'")
    assert {(row["at"] >= sold.last + 1, row["order_id"]) for row in rows} == {(True, None)}
    for user in ("u0", "u1"):  # the ledger's mark is Redis's seq: every expiry persisted
        wallet = KEYS.wallet(user)
        mark = await consumer.pool.fetchval(
            "SELECT seq FROM partition_marks WHERE partition = $1", wallet.tag
        )
        assert mark == int(cast(str, await consumer.client.get(wallet.seq)))
    assert await versions_consistent(consumer.pool) == []
    assert await conflicts(consumer.pool) == []
    assert await pending(consumer) == 0


async def test_a_repeated_expiry_is_written_once_and_another_event_at_its_version_is_a_conflict(
    consumer: Consumer,
) -> None:
    sold = await sell(consumer, 1)
    await drain(consumer)
    assert consumer.housekeeping is not None
    assert await consumer.housekeeping.expiry.sweep(now=sold.last) == 2
    await drain(consumer)
    first, second = await wallet_entries(consumer, "u0", "expired")
    stream = KEYS.wallet("u0").events

    await consumer.client.xadd(stream, first)  # the same event again (a Redis rolled back, swept again)
    await consumer.client.xadd(stream, {**second, "id": "another"})  # another event at the same version
    await drain(consumer)

    assert await conflicts(consumer.pool) == [
        f"coupon {second['coupon']} version 2 already held by event expired:{second['coupon']}"
    ]
    assert {c: len(rows) for c, rows in (await expired_rows(consumer.pool)).items()} == {
        first["coupon"]: 1,
        second["coupon"]: 1,
    }
    assert set((await coupon_rows(consumer.pool)).values()) == {("expired", 2)}
    assert await pending(consumer) == 0


async def test_an_expiry_reaching_the_ledger_before_its_delivery_is_not_overwritten(
    consumer: Consumer,
) -> None:
    sold = await sell(consumer, 1)
    activity = Partition(
        next(s for s in await _streams(consumer) if s.startswith("{a:")).removesuffix(":events")
    )
    found = cast(list[tuple[str, dict[str, str]]], await consumer.client.xrange(activity.events))
    async with consumer.pool.acquire() as conn:  # the claim first: a wallet's entries wait for it otherwise
        await sink.write(conn, [Entry(activity.events, entry_id, fields) for entry_id, fields in found])
    assert consumer.housekeeping is not None
    assert await consumer.housekeeping.expiry.sweep(now=sold.last) == 2
    wallet = KEYS.wallet("u0").events
    entries = [Entry(wallet, i, f) for i, f in cast(Any, await consumer.client.xrange(wallet))]
    assert [entry.type for entry in entries] == ["delivered", "expired", "expired"]

    async with consumer.pool.acquire() as conn:
        await sink.write(conn, entries[1:])  # the expiries first (another worker, another batch)
        await sink.write(conn, entries[:1])

    assert await coupon_rows(consumer.pool) == {c: ("expired", 2) for c in sold.owners}
    assert await versions_consistent(consumer.pool) == []
    await drain(consumer)  # the worker applies them all again: nothing changes
    assert await coupon_rows(consumer.pool) == {c: ("expired", 2) for c in sold.owners}
    assert await conflicts(consumer.pool) == []


async def _streams(consumer: Consumer) -> list[str]:
    await consumer.refresh_streams()
    return list(consumer.streams)


async def test_an_expiry_whose_claim_the_ledger_lacks_waits_for_it(consumer: Consumer) -> None:
    sold = await sell(consumer, 1)
    assert consumer.housekeeping is not None
    assert await consumer.housekeeping.expiry.sweep(now=sold.last) == 2
    wallet = KEYS.wallet("u0").events
    entries = [Entry(wallet, i, f) for i, f in cast(Any, await consumer.client.xrange(wallet))]

    async with consumer.pool.acquire() as conn:
        await sink.write(conn, entries)  # the wallet's stream alone: the claim is not in the ledger yet

    held = await consumer.pool.fetch("SELECT fields->>'type' AS type FROM held_entries ORDER BY entry_id")
    assert [row["type"] for row in held] == ["delivered", "expired", "expired"]
    assert await coupon_rows(consumer.pool) == {}
    await drain(consumer)  # the claim comes: what waited is applied
    assert await coupon_rows(consumer.pool) == {c: ("expired", 2) for c in sold.owners}
    assert await consumer.pool.fetchval("SELECT count(*) FROM held_entries") == 0


# --- the housekeeping lane ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("moved_clock")
async def test_a_fenced_redis_postpones_the_sweep(
    consumer: Consumer, caplog: pytest.LogCaptureFixture
) -> None:
    sold = await sell(consumer, 1)
    await drain(consumer)
    clock.set_to(sold.last + 1)
    fence = consumer.redis.fence
    trusted = fence.verified
    fence.close("not yet checked")
    assert consumer.housekeeping is not None
    expiring = await consumer.client.zrange(KEYS.wallet("u0").expiring, 0, -1, withscores=True)

    await consumer.housekeeping.sweep_expired()

    assert "expiry sweep postponed" in caplog.text
    assert consumer.housekeeping.coupons_expired == 0
    assert await consumer.client.zrange(KEYS.wallet("u0").expiring, 0, -1, withscores=True) == expiring
    fence.open(trusted)
    await consumer.housekeeping.sweep_expired()
    assert consumer.housekeeping.coupons_expired == 2


# --- the acceptance: two workers, then a restart -------------------------------------------------------------


def worker_settings(settings: Settings, name: str) -> Settings:
    """A worker of its own name that sweeps at every step."""
    worker = msgspec.structs.replace(settings.worker, name=name, sweep_seconds=0.0)
    return msgspec.structs.replace(settings, worker=worker)


async def a_worker(settings: Settings, name: str) -> Consumer:
    found = await start_consumer(worker_settings(settings, name))
    assert found.housekeeping is not None
    found.housekeeping.expiry.batch = 2  # short passes: the two workers' interleave
    return found


async def stop(*workers: Consumer) -> None:
    for worker in workers:
        await worker.redis.close()
        await worker.pool.close()


@pytest.fixture
async def first(settings: Settings, clean: None) -> AsyncIterator[Consumer]:
    found = await a_worker(settings, "worker-a")
    yield found
    await stop(found)


@pytest.mark.usefixtures("moved_clock")
async def test_two_workers_and_a_restart_record_each_expiry_exactly_once(
    settings: Settings, first: Consumer
) -> None:
    sold = await sell(first, 12)
    await drain(first)
    shop = checkout(first)
    held, used = sold.of("u0")[0], sold.of("u1")[0]
    # u0's coupon locked across its validity's end (held past it); u1's redeemed before it.
    await shop.lock("u0", "o-held", held, LINES, now=sold.valid_until[held] - 10)
    await shop.lock("u1", "o-used", used, LINES, now=sold.valid_until[used] - 20)
    await shop.redeem("u1", "o-used", now=sold.valid_until[used] - 19)
    second = await a_worker(settings, "worker-b")
    try:
        clock.set_to(sold.last + 5)  # every validity over; the lock on u0's coupon holds 45 s more
        await asyncio.gather(drain(first), drain(second))
        await asyncio.gather(drain(first), drain(second))  # what either's last sweeps appended
        assert first.housekeeping is not None and second.housekeeping is not None
        swept = first.housekeeping.coupons_expired + second.housekeeping.coupons_expired
    finally:
        await stop(second)
    # Expired so far: every coupon but the held and the used one; the held one is due again at its deadline.
    expired = set(sold.owners) - {held, used}
    assert swept == len(expired) == 22
    assert set(await expired_rows(first.pool)) == expired
    deadline = sold.valid_until[held] - 10 + LOCK_SECONDS
    assert await first.client.zscore(KEYS.wallet("u0").expiring, held) == deadline

    # The restart: the first worker stops too; a fresh one comes up once the lock has lapsed.
    await stop(first)
    clock.set_to(deadline + 30)
    fresh = await a_worker(settings, "worker-c")
    try:
        await drain(fresh)
        await drain(fresh)
        assert fresh.housekeeping is not None
        assert (fresh.housekeeping.locks_expired, fresh.housekeeping.coupons_expired) == (1, 1)
        pool = fresh.pool
        rows = await expired_rows(pool)
        assert {c: len(history) for c, history in rows.items()} == {c: 1 for c in expired | {held}}
        assert all(event_id == f"expired:{c}" for c, [(_, event_id, _)] in rows.items())
        assert rows[held] == [(4, f"expired:{held}", "expired")]  # delivered, locked, lock_expired, expired
        coupons = await coupon_rows(pool)
        assert coupons[used] == ("redeemed", 3)
        assert {c: state for c, state in coupons.items() if c != used} == {
            **{c: ("expired", 2) for c in expired},
            held: ("expired", 4),
        }
        assert await versions_consistent(pool) == []
        assert await conflicts(pool) == []
        assert await pool.fetchval("SELECT count(*) FROM held_entries") == 0
        # Redis: nothing left for the sweep, every coupon final; and the ledger agrees with it.
        finished: set[str] = set()
        for bucket in range(KEYS.wallet_buckets):
            wallet = KEYS.wallet_of_bucket(bucket)
            assert await fresh.client.zcard(wallet.expiring) == 0
            finished |= set(cast(list[str], await fresh.client.zrange(wallet.finished, 0, -1)))
        assert finished == set(sold.owners)
        assert await fresh.client.zscore(KEYS.wallet("u0").finished, held) == deadline + 30
        assert await fresh.client.zscore(KEYS.wallet("u1").finished, used) == sold.valid_until[used]
        reconcile = Reconciler(fresh.client, fresh.runner, pool, KEYS, attempts=1)
        report = await reconcile.run()
        assert report.differences == [], report.lines()
    finally:
        await stop(fresh)
