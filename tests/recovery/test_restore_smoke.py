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
from worker.reconcile import Reconciler
from worker.restore import restore


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
