"""Trimming never loses an entry that is pending or not yet delivered to the group."""

from __future__ import annotations

import asyncio
import time

import msgspec

from gateway.keys import KeySpace
from gateway.settings import Settings
from gateway.tokens import UserIdentity
from tests.worker.conftest import drain
from tests.worker.test_sink import make_activity
from worker import sink
from worker.consumer import Consumer, start_consumer
from worker.trim import next_id, trim_floor, trim_streams


def test_the_floor_is_the_oldest_pending_else_the_next_undelivered() -> None:
    assert trim_floor({"last-delivered-id": "0-0"}, {"pending": 0}) is None
    assert trim_floor({"last-delivered-id": "17-3"}, {"pending": 0}) == "17-4"
    assert trim_floor({"last-delivered-id": "17-3"}, {"pending": 2, "min": "15-0", "max": "17-3"}) == "15-0"
    assert next_id("5-9") == "5-10"


async def test_trim_keeps_pending_and_undelivered_entries(consumer: Consumer) -> None:
    activity_id = await make_activity(consumer, stock=50, per_user_limit=1)
    stream = KeySpace(8, 4).activity(activity_id).events
    now = int(time.time())
    for i in range(6):
        await consumer.claims.claim(activity_id, UserIdentity(f"t{i}", f"d{i}"), now=now)
    await consumer.refresh_streams()
    entries = [e for e in await consumer.read() if e.stream == stream]
    assert len(entries) == 7  # activity_created + 6 claimed
    acked, still_pending = entries[:3], entries[3:]
    await consumer.client.xack(stream, stream, *(e.entry_id for e in acked))
    for i in range(6, 9):  # not yet delivered to the group
        await consumer.claims.claim(activity_id, UserIdentity(f"t{i}", f"d{i}"), now=now)

    assert await trim_streams(consumer.client, [stream]) == 3
    left = [entry_id for entry_id, _ in await consumer.client.xrange(stream)]
    assert left[:4] == [e.entry_id for e in still_pending]
    assert len(left) == 4 + 3
    assert await trim_streams(consumer.client, [stream]) == 0  # nothing more is safe to remove

    async with consumer.pool.acquire() as conn:
        await sink.apply(conn, entries)  # what the slow worker had read, committed late
    await consumer.ack(still_pending)
    consumer.reread_pending = True
    await drain(consumer)
    assert (
        await consumer.pool.fetchval("SELECT count(*) FROM claims WHERE activity_id = $1", activity_id) == 9
    )
    await trim_streams(consumer.client, [stream])  # (the worker's own steps trim too)
    assert await consumer.client.xlen(stream) == 0  # all persisted and acknowledged: all gone


async def test_a_slow_worker_trimming_all_the_time_loses_nothing(settings: Settings, clean: None) -> None:
    slow = msgspec.structs.replace(
        settings, worker=msgspec.structs.replace(settings.worker, batch_size=3, trim_seconds=0.0, name="slow")
    )
    consumer = await start_consumer(slow)
    try:
        activity_id = await make_activity(consumer, stock=300, per_user_limit=1)
        now = int(time.time())
        granted = 0

        async def produce() -> None:
            nonlocal granted
            for i in range(120):
                await consumer.claims.claim(activity_id, UserIdentity(f"s{i}", f"sd{i}"), now=now)
                granted += 1
                if i % 10 == 0:
                    await asyncio.sleep(0.005)

        async def work() -> None:
            for _ in range(60):
                await consumer.step()

        await asyncio.gather(produce(), work())
        await drain(consumer)
        assert consumer.trimmed > 0
        rows = await consumer.pool.fetchval("SELECT count(*) FROM claims WHERE activity_id = $1", activity_id)
        coupons = await consumer.pool.fetchval(
            "SELECT count(*) FROM coupons WHERE activity_id = $1", activity_id
        )
        assert (rows, coupons) == (granted, granted * 2) == (120, 240)
        assert await consumer.pool.fetchval("SELECT count(*) FROM conflicts") == 0
    finally:
        await consumer.redis.close()
        await consumer.pool.close()
