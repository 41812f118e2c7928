"""The worker keeps going: a poison entry, a dead consumer's pending entries, a deliver that failed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest

from gateway.claim.service import ClaimService
from gateway.keys import KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.settings import Settings
from gateway.tokens import UserIdentity
from tests.worker.conftest import drain
from tests.worker.test_sink import claim_n, make_activity, pending
from worker.consumer import Consumer, start_consumer
from worker.dead_letters import replay


async def test_a_poison_entry_is_dead_lettered_blocks_nothing_and_replays_once_fixed(
    consumer: Consumer,
) -> None:
    activity_id = await make_activity(consumer)
    await claim_n(consumer.claims, activity_id, 3)
    stream = KeySpace(8, 4).activity(activity_id).events
    poison = {
        "type": "claimed",
        "id": "poison",
        "seq": "99",
        "at": "1",
        "activity": activity_id,
        "claim_id": "p1",
        "user": "u-p",
        "device": "d",
        "channel": "",
        "mode": "gift",
        "by": "",
        "ordinal": "0",  # a place no real claim holds (theirs start at 1): no conflict, only the constraint
        "idem": "",
        "idem_hash": "",
        "idem_expires": "",
        "answer": '{"claim_id":"p1","coupons":[{"coupon_id":"p1.1","template_id":"t","valid_from":1,'
        '"valid_until":2}]}',
    }  # mode "gift" breaks a constraint only it breaks
    poison_id = await consumer.client.xadd(stream, poison)
    await consumer.claims.claim(activity_id, UserIdentity("after", "dev-after"), now=int(time.time()))
    await drain(consumer)
    # Dead-lettered after 3 failures of its own; everything around it persisted and acknowledged.
    assert consumer.dead_lettered == 1
    assert await pending(consumer) == 0
    assert await consumer.pool.fetchval("SELECT count(*) FROM claims") == 4
    dead = KeySpace(8, 4).activity(activity_id).dead_letters
    [(_, fields)] = await consumer.client.xrange(dead)
    assert (fields["dl_stream"], fields["dl_entry_id"], fields["dl_failures"]) == (stream, poison_id, "3")
    assert "CheckViolation" in fields["dl_reason"]

    def deliver(entry: Any) -> Any:
        return consumer.deliver_claims([entry])

    # Still broken: replay keeps it.
    report = await replay(consumer.client, consumer.pool, consumer.streams, deliver)
    assert (report.replayed, report.still_failing) == (0, 1)
    # The fix (here: the schema learns the new mode), then replay persists it once and removes it.
    await consumer.pool.execute("ALTER TABLE claims DROP CONSTRAINT claims_mode_check")
    try:
        first = await replay(consumer.client, consumer.pool, consumer.streams, deliver)
        second = await replay(consumer.client, consumer.pool, consumer.streams, deliver)
        assert (first.replayed, second.replayed) == (1, 0)
        assert await consumer.pool.fetchval("SELECT count(*) FROM claims WHERE claim_id = 'p1'") == 1
        assert await consumer.client.xlen(dead) == 0
        assert await consumer.client.zrange(KeySpace(8, 4).wallet("u-p").user_index("u-p"), 0, -1) == ["p1.1"]
    finally:
        await consumer.pool.execute("DELETE FROM claims WHERE mode NOT IN ('claim', 'grant', 'code')")
        await consumer.pool.execute(
            "ALTER TABLE claims ADD CONSTRAINT claims_mode_check CHECK (mode IN ('claim', 'grant', 'code'))"
        )


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
