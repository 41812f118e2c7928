"""Restore on an empty Redis reproduces what the ledger holds; reconcile then finds no difference."""

from __future__ import annotations

import time

from gateway.keys import KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.tokens import UserIdentity
from tests.conftest import flush_redis
from tests.worker.conftest import drain
from tests.worker.test_sink import make_activity
from worker.consumer import Consumer
from worker.recovery.reconcile import Reconciler
from worker.recovery.restore import restore


def reconciler(consumer: Consumer) -> Reconciler:
    return Reconciler(consumer.client, consumer.runner, consumer.pool, KeySpace(8, 4))


async def test_restore_on_an_empty_redis_reproduces_state(consumer: Consumer) -> None:
    activity_id = await make_activity(consumer, stock=10, per_user_limit=2)
    now = int(time.time())
    first = await consumer.claims.claim(activity_id, UserIdentity("u1", "d1"), now=now, idempotency_key="k1")
    await consumer.claims.claim(activity_id, UserIdentity("u1", "d2"), now=now)
    await consumer.claims.claim(activity_id, UserIdentity("u2", "d1"), now=now)
    await drain(consumer)
    clean = await reconciler(consumer).run()
    assert clean.differences == [], clean.lines()
    keys = KeySpace(8, 4).activity(activity_id)
    before = await consumer.client.hgetall(keys.config)

    flush_redis(consumer.settings.redis.url)
    await consumer.runner.load_all()
    lost = await reconciler(consumer).run()
    assert lost.differences, "an empty Redis must differ from the ledger"

    done = await restore(consumer.client, consumer.pool, KeySpace(8, 4))
    assert {d.partition for d in done if d.action == "restored"} >= {keys.tag}
    after = await consumer.client.hgetall(keys.config)
    assert after == before
    assert await consumer.client.hgetall(keys.user_counts) == {"u1": "2", "u2": "1"}
    assert await consumer.client.hgetall(keys.device_counts) == {"d1": "2", "d2": "1"}
    await drain(consumer)
    report = await reconciler(consumer).run()
    assert report.differences == [], report.lines()

    replay = await consumer.claims.claim(activity_id, UserIdentity("u1", "d1"), now=now, idempotency_key="k1")
    assert replay.answer == first.answer
    try:
        await consumer.claims.claim(activity_id, UserIdentity("u1", "d3"), now=now)
    except DomainError as refused:
        assert refused.outcome is Outcome.LIMIT_REACHED
    else:
        raise AssertionError("u1 is at its limit of 2")


async def test_restore_drops_a_stray_index_and_never_delivers_into_a_wallet_still_behind(
    consumer: Consumer,
) -> None:
    activity_id = await make_activity(consumer, stock=10, per_user_limit=2)
    now = int(time.time())
    await consumer.claims.claim(activity_id, UserIdentity("u1", "d1"), now=now)
    await drain(consumer)
    wallet = KeySpace(8, 4).wallet("u1")
    stray = f"{wallet.tag}:u:ghost"
    await consumer.client.zadd(stray, {"ghost.1": 0})
    await restore(consumer.client, consumer.pool, KeySpace(8, 4), named=[wallet.tag], force=True)
    assert await consumer.client.exists(stray) == 0
    assert len(await consumer.client.zrange(wallet.user_index("u1"), 0, -1)) == 2  # the ledger's coupons stay

    # A claim whose coupons neither Redis nor the ledger holds, in a wallet Redis holds behind the ledger.
    answer = (await consumer.claims.claim(activity_id, UserIdentity("u1", "d2"), now=now)).answer
    await drain(consumer)
    claim_id = answer.split('"claim_id":"')[1].split('"')[0]
    await consumer.pool.execute("DELETE FROM coupons WHERE claim_id = $1", claim_id)
    await consumer.client.hdel(wallet.coupons, f"{claim_id}.1", f"{claim_id}.2")
    await consumer.client.zrem(wallet.user_index("u1"), f"{claim_id}.1", f"{claim_id}.2")
    mark = await consumer.pool.fetchval("SELECT seq FROM partition_marks WHERE partition = $1", wallet.tag)
    await consumer.client.set(wallet.seq, mark - 1)
    activity = KeySpace(8, 4).activity(activity_id).tag

    await restore(consumer.client, consumer.pool, KeySpace(8, 4), named=[activity], force=True)
    assert await consumer.client.get(wallet.seq) == str(mark - 1)  # not lifted by a deliver
    assert await consumer.client.hexists(wallet.coupons, f"{claim_id}.1") == 0

    await restore(consumer.client, consumer.pool, KeySpace(8, 4), named=[activity, wallet.tag], force=True)
    assert await consumer.client.hexists(wallet.coupons, f"{claim_id}.1") == 1  # both level: delivered
    await drain(consumer)
    assert (await reconciler(consumer).run()).differences == []
