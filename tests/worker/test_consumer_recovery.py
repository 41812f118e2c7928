"""The worker keeps going: a poison entry, a dead consumer's pending entries, a deliver that failed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest

from gateway.claims import ClaimService
from gateway.keys import KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.settings import Settings
from gateway.tokens import UserIdentity
from tests.worker.conftest import drain
from tests.worker.test_sink import claim_n, make_activity, pending
from worker.consumer import Consumer, start_consumer


async def test_an_entry_postgres_refuses_is_kept_as_a_conflict_and_blocks_nothing(consumer: Consumer) -> None:
    activity_id = await make_activity(consumer)
    await claim_n(consumer.claims, activity_id, 3)
    stream = KeySpace(8, 4).activity(activity_id).events
    # An entry whose text Postgres cannot store (NUL), between good ones.
    await consumer.client.xadd(
        stream,
        {
            "type": "claimed",
            "id": "poison",
            "seq": "99",
            "at": "1",
            "activity": activity_id,
            "claim_id": "p1",
            "user": "u\x00",
            "device": "d",
            "channel": "",
            "mode": "claim",
            "by": "",
            "answer": '{"claim_id":"p1","coupons":[{"coupon_id":"p1.1","template_id":"t",'
            '"valid_from":1,"valid_until":2}]}',
            "idem": "",
            "idem_hash": "",
            "idem_expires": "",
        },
    )
    await consumer.claims.claim(activity_id, UserIdentity("after", "dev-after"), now=int(time.time()))
    await drain(consumer)
    assert await pending(consumer) == 0
    rows = await consumer.pool.fetch("SELECT event_id, reason FROM conflicts")
    assert [r["event_id"] for r in rows] == ["poison"]
    assert "refused by Postgres" in rows[0]["reason"]
    # the three before the poison and the one after it
    assert await consumer.pool.fetchval("SELECT count(*) FROM claims") == 4


async def test_entries_a_dead_consumer_left_pending_are_taken_over(settings: Settings, clean: None) -> None:
    dead = await start_consumer(settings)
    survivor = await start_consumer(_with_worker(settings, name="survivor", claim_idle_ms=1))
    try:
        activity_id = await make_activity(dead)
        await claim_n(dead.claims, activity_id, 2)
        await dead.refresh_streams()
        taken = await dead.read()  # read, then "killed" before committing: never acknowledged
        assert len(taken) == 5
        await asyncio.sleep(0.01)
        await drain(survivor)
        assert await pending(survivor) == 0
        assert await survivor.pool.fetchval("SELECT count(*) FROM claims") == 2
    finally:
        for consumer in (dead, survivor):
            await consumer.redis.close()
            await consumer.pool.close()


def _with_worker(settings: Settings, **changes: Any) -> Settings:
    return msgspec.structs.replace(settings, worker=msgspec.structs.replace(settings.worker, **changes))


async def test_a_claim_whose_deliver_failed_still_answers_and_the_worker_delivers(
    consumer: Consumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    activity_id = await make_activity(consumer)

    async def refused(*_: Any, **__: Any) -> Outcome:
        raise DomainError(Outcome.OVERLOADED, "Redis is unreachable; retry shortly.", retry_after=1)

    gateway_side = ClaimService(consumer.runner, KeySpace(8, 4), 90_000)
    monkeypatch.setattr(gateway_side, "deliver", refused)
    result = await gateway_side.claim(activity_id, UserIdentity("late", "dev"), now=int(time.time()))
    assert result.outcome is Outcome.OK  # the pack is taken: the answer stands
    wallet = KeySpace(8, 4).wallet("late")
    assert await consumer.client.zcard(wallet.user_index("late")) == 0
    await drain(consumer)
    assert await consumer.client.zcard(wallet.user_index("late")) == 2
    assert await consumer.pool.fetchval("SELECT count(*) FROM coupons WHERE user_id = 'late'") == 2
