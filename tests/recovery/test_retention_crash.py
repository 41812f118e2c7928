"""A crash in the middle of the wallet's retention sweep, then Redis lost and restored: reconcile is clean, nothing
is sold twice, and every read answers as before the sweep (what the ledger had recorded as removed stays out of
Redis and answers from the ledger; what it had not comes back, final, and the next sweep removes it again)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway import clock
from gateway.checkout.retention import WalletRetention
from gateway.checkout.wallet import WalletService
from gateway.outcomes import Outcome
from tests.recovery.checkout_support import LINES, checkout_service
from tests.recovery.support import KEYS, persist, reconciler, refusal
from tests.recovery.test_restore import empty_redis, restore_all
from tests.recovery.test_restore_expiry import sell, sweep
from worker.consumer import Consumer

pytestmark = pytest.mark.usefixtures("moved_clock")
USERS = [f"r{n:02d}" for n in range(16)]


async def wallets(consumer: Consumer) -> dict[str, dict[str, list[Any]]]:
    """Each user's wallet with a final status, every page, as the route answers it (Redis and the ledger)."""
    service = WalletService(consumer.runner, KEYS, consumer.pool)
    found: dict[str, dict[str, list[Any]]] = {}
    for user in USERS:
        for status in ("expired", "redeemed"):
            page = await service.page(user, status=status, cursor="", limit=100, now=int(clock.now()))
            found.setdefault(user, {})[status] = msgspec.json.decode(page)["items"]
    return found


async def test_a_crash_in_the_middle_of_the_retention_sweep_then_restore(consumer: Consumer) -> None:
    sold = await sell(consumer, *USERS)
    activity_id = await consumer.pool.fetchval("SELECT activity_id FROM activities")
    checkout = checkout_service(consumer)
    for n, user in enumerate(USERS[:8]):
        first = sold.ids[user][0]
        await checkout.lock(user, f"o{n}", first, LINES, now=sold.until[first] - 100)
        if n % 2:
            await checkout.redeem(user, f"o{n}", now=sold.until[first] - 90)
        else:
            await checkout.release(user, f"o{n}", now=sold.until[first] - 90)
    await sweep(consumer, sold.last + 5)  # every coupon final: expired, or redeemed past its validity
    await persist(consumer)
    before = await wallets(consumer)
    assert sum(len(w["expired"]) for w in before.values()) == 2 * len(USERS) - 4
    assert sum(len(w["redeemed"]) for w in before.values()) == 4
    claims = await consumer.pool.fetchval("SELECT count(*) FROM claims")

    retention = consumer.settings.retention.seconds
    clock.set_to(sold.last + 5 + retention + 60)
    cut_short = WalletRetention(consumer.runner, consumer.client, KEYS, retention, batch=1)
    await cut_short.sweep(now=int(clock.now()), passes=1)  # a few removals, persisted
    await persist(consumer)
    persisted = await consumer.pool.fetchval("SELECT count(*) FROM coupons WHERE archived_at IS NOT NULL")
    await cut_short.sweep(now=int(clock.now()), passes=1)  # more, whose events Redis then loses
    assert persisted > 0
    assert await consumer.client.hlen(KEYS.wallet(USERS[0]).coupons) < len(USERS)  # the sweep was under way

    await empty_redis(consumer)
    await restore_all(consumer)

    assert (await reconciler(consumer).run()).differences == []
    assert (
        await consumer.pool.fetchval("SELECT count(*) FROM coupons WHERE archived_at IS NOT NULL")
        == persisted
    )
    assert await wallets(consumer) == before
    assert await consumer.pool.fetchval("SELECT count(*) FROM claims") == claims
    config = await consumer.client.hgetall(KEYS.activity(activity_id).config)
    assert (config["taken"], config["stock_left"]) == (
        str(len(USERS)),
        "0",
    )  # restored as sold, not sold again
    assert await refusal(consumer, activity_id, "newcomer", "d-new") is Outcome.SOLD_OUT

    # The sweep, run again, finishes what the crash left: every coupon and order out of Redis, recorded once.
    whole = WalletRetention(consumer.runner, consumer.client, KEYS, retention)
    await whole.sweep(now=int(clock.now()))
    await persist(consumer)
    assert await consumer.pool.fetchval("SELECT count(*) FROM coupons WHERE archived_at IS NULL") == 0
    assert await consumer.pool.fetchval("SELECT count(*) FROM orders WHERE archived_at IS NULL") == 0
    assert (await reconciler(consumer).run()).differences == []
    assert await wallets(consumer) == before
