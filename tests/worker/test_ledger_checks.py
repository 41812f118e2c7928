"""The ledger's own checks: what they refuse goes to ``conflicts`` (never dropped), is acknowledged, is not
delivered, and holds back nothing else in its batch."""

from __future__ import annotations

import time

from gateway.keys import KeySpace
from gateway.tokens import UserIdentity
from tests.worker.conftest import drain
from tests.worker.test_sink import claim_n, make_activity, pending
from worker.consumer import Consumer


async def claimed_entries(consumer: Consumer, activity_id: str) -> list[dict[str, str]]:
    stream = KeySpace(8, 4).activity(activity_id).events
    return [fields for _, fields in await consumer.client.xrange(stream) if fields["type"] == "claimed"]


async def conflicts(consumer: Consumer) -> list[tuple[str, str, str]]:
    rows = await consumer.pool.fetch("SELECT event_id, reason, activity FROM conflicts ORDER BY conflict_id")
    return [(r["event_id"], r["reason"], r["activity"]) for r in rows]


async def test_a_unit_sold_twice_is_a_conflict_and_the_rest_is_written(consumer: Consumer) -> None:
    activity_id = await make_activity(consumer)
    await claim_n(consumer.claims, activity_id, 2)
    first, _ = await claimed_entries(consumer, activity_id)
    # What a Redis that lost its history would emit: a new claim for a unit the ledger already holds.
    resold = {**first, "id": "evt-resold", "claim_id": "claim-resold", "user": "someone-else"}
    resold["answer"] = first["answer"].replace(first["claim_id"], "claim-resold")
    await consumer.client.xadd(KeySpace(8, 4).activity(activity_id).events, resold)
    await consumer.claims.claim(activity_id, UserIdentity("late", "d-late"), now=int(time.time()))

    await drain(consumer)

    assert await conflicts(consumer) == [
        (
            "evt-resold",
            f"unit {first['ordinal']} of activity {activity_id} already sold to claim {first['claim_id']}",
            activity_id,
        )
    ]
    claims = await consumer.pool.fetch("SELECT claim_id FROM claims ORDER BY ordinal")
    assert "claim-resold" not in {r["claim_id"] for r in claims}
    assert len(claims) == 3
    assert await pending(consumer) == 0  # the conflict was acknowledged: recorded, not lost
    assert consumer.conflicts == 1
    wallet = KeySpace(8, 4).wallet("someone-else")
    assert await consumer.client.zrange(wallet.user_index("someone-else"), 0, -1) == []  # never delivered
    assert await consumer.pool.fetchval("SELECT count(*) FROM coupons WHERE claim_id = 'claim-resold'") == 0


async def test_a_claim_id_reused_by_another_event_is_a_conflict(consumer: Consumer) -> None:
    activity_id = await make_activity(consumer)
    await claim_n(consumer.claims, activity_id, 1)
    await drain(consumer)
    [first] = await claimed_entries(consumer, activity_id)
    reused = {**first, "id": "evt-other", "ordinal": "77"}
    await consumer.client.xadd(KeySpace(8, 4).activity(activity_id).events, reused)
    await drain(consumer)
    assert await conflicts(consumer) == [
        ("evt-other", f"claim id {first['claim_id']} already held for event {first['id']}", activity_id)
    ]
    assert await consumer.pool.fetchval("SELECT event_id FROM claims") == first["id"]


async def test_a_coupon_version_claimed_by_two_events_is_a_conflict(consumer: Consumer) -> None:
    activity_id = await make_activity(consumer)
    await claim_n(consumer.claims, activity_id, 1)
    await drain(consumer)
    [(_, delivered)] = [
        (i, f)
        for i, f in await consumer.client.xrange(KeySpace(8, 4).wallet("u0").events)
        if f["type"] == "delivered"
    ]
    again = {**delivered, "id": "evt-deliver-again", "at": str(int(delivered["at"]) + 5)}
    await consumer.client.xadd(KeySpace(8, 4).wallet("u0").events, again)
    await drain(consumer)
    [(event_id, reason, activity)] = await conflicts(consumer)
    assert (event_id, activity) == ("evt-deliver-again", activity_id)
    assert reason.endswith(f"version 1 already held by event {delivered['id']}")
    history = await consumer.pool.fetch("SELECT DISTINCT event_id FROM coupon_events")
    assert [r["event_id"] for r in history] == [delivered["id"]]
    at = await consumer.pool.fetch("SELECT DISTINCT updated_at FROM coupons")
    assert [r["updated_at"] for r in at] == [int(delivered["at"])]  # the rejected event changed no coupon


async def test_a_redelivered_batch_is_not_a_conflict(consumer: Consumer) -> None:
    activity_id = await make_activity(consumer)
    await claim_n(consumer.claims, activity_id, 3)
    await drain(consumer)
    stream = KeySpace(8, 4).activity(activity_id).events
    for _, fields in await consumer.client.xrange(stream):  # every event again, as after a lost XACK
        await consumer.client.xadd(stream, fields)
    await drain(consumer)
    assert await conflicts(consumer) == []
    assert await consumer.pool.fetchval("SELECT count(*) FROM claims") == 3
