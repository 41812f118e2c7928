"""The worker's run loop overlaps batches: one batch is delivered and acknowledged while the next is committed.

Each test runs ``Consumer.run`` itself (the loop a ``claimgate worker`` runs) on small batches, so a backlog takes
many overlapped rounds, and checks the ledger and the pending lists after it stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.settings import Settings
from tests.worker.test_sink import claim_n, make_activity, pending, table_counts
from worker.consumer import Consumer, start_consumer
from worker.events import Entry

BATCH = 4
USERS = 30


@pytest.fixture
async def small_batches(settings: Settings, clean: None) -> AsyncIterator[Consumer]:
    worker = msgspec.structs.replace(settings.worker, batch_size=BATCH, idle_sleep_seconds=0.01)
    found = await start_consumer(msgspec.structs.replace(settings, worker=worker))
    yield found
    await found.redis.close()
    await found.pool.close()


async def assert_persisted_once_and_acknowledged(consumer: Consumer) -> None:
    """The activity created and USERS claims of one pack of 2 coupons each: every row once, nothing pending."""
    expected = {"claims": USERS, "coupons": 2 * USERS, "coupon_events": 2 * USERS, "audit": 1}
    assert await table_counts(consumer.pool) == expected
    assert await pending(consumer) == 0


async def run_until_claims(consumer: Consumer, activity_id: str, count: int, within: float = 30.0) -> None:
    """Run the loop until the activity has ``count`` claims rows and nothing is pending, then stop it."""
    stop = asyncio.Event()
    loop = asyncio.create_task(consumer.run(stop))
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            rows = await consumer.pool.fetchval(
                "SELECT count(*) FROM claims WHERE activity_id = $1", activity_id
            )
            if rows >= count and consumer.streams and await pending(consumer) == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(loop, 10)


async def test_the_loop_persists_a_backlog_once_and_acknowledges_all_of_it(small_batches: Consumer) -> None:
    consumer = small_batches
    activity_id = await make_activity(consumer, stock=USERS)
    await claim_n(consumer.claims, activity_id, USERS)
    settling_seen: list[bool] = []
    persist = consumer.persist

    async def watched() -> Any:
        settling_seen.append(consumer._settling is not None and not consumer._settling.done())
        return await persist()

    consumer.persist = watched  # type: ignore[method-assign]
    await run_until_claims(consumer, activity_id, USERS)
    await assert_persisted_once_and_acknowledged(consumer)
    assert consumer.persisted == 1 + 2 * USERS  # created, then each claim's claimed and delivered
    assert any(settling_seen)  # batches did overlap: a batch was read while the one before was settling


async def test_an_acknowledgement_that_fails_leaves_its_batch_to_be_read_again(
    small_batches: Consumer,
) -> None:
    consumer = small_batches
    activity_id = await make_activity(consumer, stock=USERS)
    await claim_n(consumer.claims, activity_id, USERS)
    ack = consumer.ack
    failures = 0

    async def flaky(entries: list[Entry]) -> None:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise RedisConnectionError("reset by peer")
        await ack(entries)

    consumer.ack = flaky  # type: ignore[method-assign]
    await run_until_claims(consumer, activity_id, USERS)
    assert failures == 3
    assert (await table_counts(consumer.pool))["claims"] == USERS  # read again, written once
    assert await pending(consumer) == 0


async def test_a_read_of_our_pending_entries_waits_for_the_batch_in_flight(small_batches: Consumer) -> None:
    """After a failure the loop reads from ``0``; that read must not return the batch still settling."""
    consumer = small_batches
    activity_id = await make_activity(consumer, stock=USERS)
    await claim_n(consumer.claims, activity_id, USERS)
    read = consumer.read
    settle = consumer.settle
    overlapping_rereads = 0

    async def checked_read() -> list[Entry]:
        nonlocal overlapping_rereads
        if consumer.reread_pending and consumer._settling is not None and not consumer._settling.done():
            overlapping_rereads += 1
        return await read()

    async def slow_settle(batch: Any) -> None:
        await asyncio.sleep(0.02)
        consumer.reread_pending = True  # as after a failed entry: the next read is from 0
        await settle(batch)

    consumer.read = checked_read  # type: ignore[method-assign]
    consumer.settle = slow_settle  # type: ignore[method-assign]
    await run_until_claims(consumer, activity_id, USERS)
    assert overlapping_rereads == 0
    assert (await table_counts(consumer.pool))["claims"] == USERS
    assert await pending(consumer) == 0


async def test_stopping_acknowledges_the_batch_in_flight(small_batches: Consumer) -> None:
    consumer = small_batches
    activity_id = await make_activity(consumer, stock=USERS)
    await claim_n(consumer.claims, activity_id, 8)
    settle = consumer.settle
    stop = asyncio.Event()

    async def stop_while_settling(batch: Any) -> None:
        stop.set()  # the loop ends after this round; the batch in flight must still be acknowledged
        await asyncio.sleep(0.05)
        await settle(batch)

    consumer.settle = stop_while_settling  # type: ignore[method-assign]
    await asyncio.wait_for(consumer.run(stop), 10)
    assert consumer.persisted > 0
    assert consumer._settling is None
    assert await pending(consumer) == 0  # everything the loop read was acknowledged before it returned


async def test_the_two_lanes_share_out_every_stream(small_batches: Consumer) -> None:
    consumer = small_batches
    await make_activity(consumer)
    await consumer.refresh_streams()
    claims_lane, others_lane = consumer.lanes()
    for lane in (claims_lane, others_lane):
        await lane.refresh_streams()
    assert claims_lane.streams and others_lane.streams
    assert not set(claims_lane.streams) & set(others_lane.streams)
    assert set(claims_lane.streams) | set(others_lane.streams) == set(consumer.streams)
    assert all(s.startswith("{a:") for s in claims_lane.streams)
    assert claims_lane.housekeeping is None and others_lane.housekeeping is consumer.housekeeping


async def test_two_lanes_drain_a_backlog_once(small_batches: Consumer) -> None:
    consumer = small_batches
    activity_id = await make_activity(consumer, stock=USERS)
    await claim_n(consumer.claims, activity_id, USERS)
    await consumer.refresh_streams()
    stop = asyncio.Event()
    lanes = consumer.lanes()
    running = asyncio.gather(*(lane.run(stop) for lane in lanes))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            counts = await table_counts(consumer.pool)
            if counts["claims"] == USERS and counts["coupons"] == 2 * USERS and await pending(consumer) == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
    await assert_persisted_once_and_acknowledged(consumer)
    assert lanes[0].persisted == 1 + USERS  # the activity's stream: created, then each claim
    assert lanes[1].persisted == USERS  # the wallets' streams: each claim's delivery
