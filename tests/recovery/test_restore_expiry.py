"""Restore and reconcile of the expiry indexes (``{w:n}:expiring``, ``{w:n}:final``) and of expired coupons: a
ledger holding ``expired`` restores the coupon expired and final, every other coupon waits in ``expiring`` at
its validity's end, and reconcile finds each kind of difference seeded in the indexes (and nothing in a healthy
bucket whose final times the sweep, not the ledger, saw). An expiry Redis lost before the ledger got it is
recorded again, once, with the same id."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway import clock
from gateway.events import ClaimAnswer
from gateway.keys import WalletKeys
from tests.recovery.checkout_support import LINES, LOCK_SECONDS, checkout_service, full_state
from tests.recovery.support import KEYS, claim, new_activity, persist, reconciler
from tests.recovery.test_restore import empty_redis, restore_all, same_state
from worker.consumer import Consumer
from worker.recovery.compare import Difference

pytestmark = pytest.mark.usefixtures("moved_clock")


class Coupons(msgspec.Struct):
    ids: dict[str, tuple[str, str]]  # user -> its two coupon ids
    until: dict[str, int]  # coupon id -> the end of its validity

    @property
    def last(self) -> int:
        return max(self.until.values())


async def sell(consumer: Consumer, *users: str) -> Coupons:
    """An activity (packs of two coupons valid 3 days) claimed by each user; not persisted."""
    activity = await new_activity(consumer, stock=len(users), per_user_limit=1)
    sold = Coupons({}, {})
    for n, user in enumerate(users):
        answer = msgspec.json.decode(
            (await claim(consumer, activity.id, user, f"d{n}")).answer, type=ClaimAnswer
        )
        first, second = answer.coupons
        sold.ids[user] = (first.coupon_id, second.coupon_id)
        sold.until.update({c.coupon_id: c.valid_until for c in answer.coupons})
    return sold


async def sweep(consumer: Consumer, at: int) -> None:
    """The housekeeping lane's sweeps at ``at``: the locks, then the expiry."""
    clock.set_to(at)
    assert consumer.housekeeping is not None
    await consumer.housekeeping.sweep_locks()
    await consumer.housekeeping.sweep_expired()


async def expired_events(consumer: Consumer) -> dict[str, int]:
    rows = await consumer.pool.fetch(
        "SELECT coupon_id, count(*) AS n FROM coupon_events WHERE type = 'expired' GROUP BY coupon_id"
    )
    return {row["coupon_id"]: row["n"] for row in rows}


async def test_restore_rebuilds_expired_coupons_and_both_indexes(consumer: Consumer) -> None:
    """b0's coupons expire at the first sweep; b1's first is locked across its validity's end, released after,
    expired at the second sweep; b2's first is locked across it and redeemed after (final when the second sweep
    finds it); b3's first is redeemed before it, its second locked across it, lapsed, expired by the second."""
    sold = await sell(consumer, "b0", "b1", "b2", "b3")
    checkout = checkout_service(consumer)
    (b1, _), (b2, _), (b3, b3_locked) = sold.ids["b1"], sold.ids["b2"], sold.ids["b3"]
    await checkout.lock("b1", "o1", b1, LINES, now=sold.until[b1] - 10)
    await checkout.lock("b2", "o2", b2, LINES, now=sold.until[b2] - 20)
    await checkout.lock("b3", "o3", b3, LINES, now=sold.until[b3] - 100)
    await checkout.redeem("b3", "o3", now=sold.until[b3] - 90)
    await checkout.lock("b3", "o4", b3_locked, LINES, now=sold.until[b3_locked] - 30)
    first_sweep, second_sweep = sold.last + 5, sold.last + LOCK_SECONDS + 100
    await sweep(consumer, first_sweep)
    await checkout.redeem("b2", "o2", now=sold.until[b2] + 50)  # the lock honoured past the validity
    await checkout.release("b1", "o1", now=sold.until[b1] + 100)
    await sweep(consumer, second_sweep)
    await persist(consumer)
    report = await reconciler(consumer).run()
    assert report.differences == [], report.lines()
    redeemed = {b2, b3}
    expired = {c for pair in sold.ids.values() for c in pair} - redeemed
    assert await expired_events(consumer) == {c: 1 for c in expired}
    before = await full_state(consumer.client)
    held: dict[str, float] = {}
    for user in sold.ids:
        wallet = KEYS.wallet(user)
        assert wallet.expiring not in before  # every coupon final: the index emptied
        held.update(dict(before[wallet.finished][1]))
    assert held == {
        **{c: float(sold.until[c]) for c in expired - {b1, b3_locked}},  # final at their validity's end
        b1: float(second_sweep),  # locked then: final when the sweep found it unlocked
        b3_locked: float(second_sweep),  # its lock lapsed: the lock sweep, then the expiry, at the same pass
        b2: float(second_sweep),  # redeemed under its lock: final when the sweep found it
        b3: float(sold.until[b3]),  # redeemed before its validity ended
    }

    await empty_redis(consumer)
    await restore_all(consumer)

    after = await full_state(consumer.client)
    # Where the ledger tells better than the sweep saw: b1 became final when released, b2 when redeemed.
    expected = dict(before)
    for user, coupon, final in (("b1", b1, sold.until[b1] + 100), ("b2", b2, sold.until[b2] + 50)):
        kind, entries, expiry = expected[KEYS.wallet(user).finished]
        entries = [(c, float(final) if c == coupon else at) for c, at in entries]
        expected[KEYS.wallet(user).finished] = (kind, sorted(entries, key=lambda e: (e[1], e[0])), expiry)
    same_state(expected, after)
    records = {c: after[KEYS.wallet(u).coupons][1][c] for u, pair in sold.ids.items() for c in pair}
    assert {c for c, record in records.items() if record["status"] == "expired"} == expired
    assert (await reconciler(consumer).run()).differences == []
    # The sweeps go on from the restored state: nothing left to expire, nothing recorded again.
    await sweep(consumer, second_sweep + 60)
    assert consumer.housekeeping is not None
    assert consumer.housekeeping.coupons_expired == len(expired)
    await persist(consumer)
    assert await expired_events(consumer) == {c: 1 for c in expired}


async def test_restore_puts_coupons_not_final_in_expiring_at_their_validitys_end(consumer: Consumer) -> None:
    sold = await sell(consumer, "w0")
    locked, kept = sold.ids["w0"]
    checkout = checkout_service(consumer)
    await checkout.lock("w0", "o1", locked, LINES, now=sold.until[locked] - 10)
    await sweep(
        consumer, sold.until[locked]
    )  # the locked one goes back in at its deadline; the other expires
    await persist(consumer)
    wallet = KEYS.wallet("w0")
    deadline = sold.until[locked] - 10 + LOCK_SECONDS
    assert await consumer.client.zrange(wallet.expiring, 0, -1, withscores=True) == [
        (locked, float(deadline))
    ]
    assert (await reconciler(consumer).run()).differences == []  # put back past its validity: as allowed

    await empty_redis(consumer)
    await restore_all(consumer)

    assert await consumer.client.zrange(wallet.expiring, 0, -1, withscores=True) == [
        (locked, float(sold.until[locked]))
    ]
    assert await consumer.client.zrange(wallet.finished, 0, -1, withscores=True) == [
        (kept, float(sold.until[kept]))
    ]
    await sweep(consumer, sold.until[locked] + 1)  # looked at again: still locked, back at its deadline
    assert await consumer.client.zrange(wallet.expiring, 0, -1, withscores=True) == [
        (locked, float(deadline))
    ]
    assert (await reconciler(consumer).run()).differences == []


async def test_an_expiry_redis_lost_is_recorded_again_once(consumer: Consumer) -> None:
    """Swept, then Redis lost everything before the worker persisted the expiries: restore puts the coupons
    back available, the sweep expires them again with the same event ids, and the ledger holds each once."""
    sold = await sell(consumer, "r0")
    await persist(consumer)
    await sweep(consumer, sold.last + 1)
    wallet = KEYS.wallet("r0")
    lost = [f["id"] for _, f in await consumer.client.xrange(wallet.events) if f["type"] == "expired"]
    assert sorted(lost) == sorted(f"expired:{c}" for c in sold.ids["r0"])

    await empty_redis(consumer)
    await restore_all(consumer)
    assert await expired_events(consumer) == {}
    await sweep(consumer, sold.last + 30)
    await persist(consumer)

    again = [f["id"] for _, f in await consumer.client.xrange(wallet.events) if f["type"] == "expired"]
    assert sorted(again) == sorted(lost)
    assert await expired_events(consumer) == {c: 1 for c in sold.ids["r0"]}
    assert await consumer.pool.fetchval("SELECT count(*) FROM conflicts") == 0
    assert (await reconciler(consumer).run()).differences == []


# --- reconcile: each difference seeded in the indexes ---------------------------------------------------------


async def seeded(consumer: Consumer, case: str) -> tuple[WalletKeys, Difference]:
    """A settled bucket past the coupons' validity (u0's first locked across it, in ``expiring`` at its
    deadline; the second expired, in ``finished``), then one difference seeded: the one reconcile must find."""
    sold = await sell(consumer, "u0")
    locked, gone = sold.ids["u0"]
    await checkout_service(consumer).lock("u0", "o1", locked, LINES, now=sold.until[locked] - 10)
    await sweep(consumer, sold.last + 1)
    await persist(consumer)
    assert (await reconciler(consumer).run()).differences == []
    wallet, client, until = KEYS.wallet("u0"), consumer.client, sold.until
    ledger: dict[str, Any] = {
        locked: (wallet.expiring, until[locked]),
        gone: (wallet.finished, until[gone]),
        "ghost.1": None,
    }

    def found(key: str, coupon: str, redis: object) -> Difference:
        return Difference(wallet.tag, "expiry", key, coupon, redis, ledger[coupon])

    if case == "missing":
        await client.zrem(wallet.expiring, locked)
        return wallet, found(wallet.expiring, locked, None)
    if case == "final too early":
        await client.zrem(wallet.expiring, locked)
        await client.zadd(wallet.finished, {locked: until[locked]})
        return wallet, found(wallet.finished, locked, (wallet.finished, until[locked]))
    if case == "due before its validity ends":
        await client.zadd(wallet.expiring, {locked: until[locked] - 1})
        return wallet, found(wallet.expiring, locked, (wallet.expiring, until[locked] - 1))
    if case == "final before its validity ended":
        await client.zadd(wallet.finished, {gone: until[gone] - 1})
        return wallet, found(wallet.finished, gone, (wallet.finished, until[gone] - 1))
    if case == "final in the future":
        await client.zadd(wallet.finished, {gone: sold.last + 3600})
        return wallet, found(wallet.finished, gone, (wallet.finished, sold.last + 3600))
    if case == "expired but waiting":
        await client.zrem(wallet.finished, gone)
        await client.zadd(wallet.expiring, {gone: until[gone]})
        return wallet, found(wallet.expiring, gone, (wallet.expiring, until[gone]))
    if case == "in both":
        await client.zadd(wallet.expiring, {gone: until[gone]})
        both = [(wallet.expiring, until[gone]), (wallet.finished, until[gone])]
        return wallet, found(wallet.expiring, gone, both)
    assert case == "a stray"
    await client.zadd(wallet.finished, {"ghost.1": until[gone]})
    return wallet, found(wallet.finished, "ghost.1", (wallet.finished, until[gone]))


CASES = [
    "missing",
    "final too early",
    "due before its validity ends",
    "final before its validity ended",
    "final in the future",
    "expired but waiting",
    "in both",
    "a stray",
]


@pytest.mark.parametrize("case", CASES)
async def test_reconcile_finds_a_difference_seeded_in_the_expiry_indexes(
    consumer: Consumer, case: str
) -> None:
    _, expected = await seeded(consumer, case)

    report = await reconciler(consumer).run()

    assert report.differences == [expected]
    assert report.repaired == []
