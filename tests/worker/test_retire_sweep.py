"""The retire sweep (worker/retire.py) against real Valkey and Postgres: an ended, drained activity past its
retention leaves Redis (its marker stays) and the ledger records it; a live one, one the worker has not drained,
and one whose claims are not all delivered in the ledger stay; a crash between the script and the record is
completed by the next pass; the housekeeping lane runs the sweep."""

from __future__ import annotations

import time

import pytest

from gateway.checkout.service import ExpirySweeper, LockSweeper
from gateway.keys import Partition
from tests.retire_support import (
    KEYS,
    RETENTION,
    ended_activity,
    partition_keys,
    retired_at,
    sweep,
)
from tests.worker.conftest import drain
from worker import polling
from worker.consumer import Consumer
from worker.housekeeping import Housekeeping
from worker.recovery.drain import drain_partition
from worker.retire import RetireSweep


async def persist(consumer: Consumer) -> None:
    """Everything in the streams into the ledger, the streams of activities made since the last read included."""
    await consumer.refresh_streams()
    await drain(consumer)


async def test_a_drained_ended_activity_is_retired_and_recorded(consumer: Consumer) -> None:
    ended = await ended_activity(consumer)
    await persist(consumer)
    mark = await consumer.pool.fetchval(
        "SELECT seq FROM partition_marks WHERE partition = $1", ended.keys.tag
    )
    assert mark == 1 + 1 + 4  # created, restocked, 4 claims
    before = await partition_keys(consumer.client, ended.keys)
    record = ended.keys.idempotency("u3", "k3")
    assert record in before and ended.keys.config in before
    now = int(time.time())

    assert await sweep(consumer).sweep(now) == 1

    after = await partition_keys(consumer.client, ended.keys)
    assert after == {ended.keys.retired: "string", record: "string"}  # the record expires by itself
    assert await consumer.client.get(ended.keys.retired) == str(mark)
    assert await consumer.client.ttl(record) > 0
    assert await retired_at(consumer, ended) == (now, now)


async def test_live_undrained_and_undelivered_activities_stay(consumer: Consumer) -> None:
    live = await ended_activity(consumer, ended_ago=-3600)  # ends in an hour
    recent = await ended_activity(consumer, ended_ago=RETENTION - 60)  # ended, within its retention
    await persist(consumer)
    undrained = await ended_activity(consumer)  # its events still in the stream: the ledger lacks them
    undelivered = await ended_activity(consumer)
    # Its claims persisted without their wallets' deliveries: the ledger holds claims without coupons.
    await drain_partition(consumer.client, consumer.pool, undelivered.keys.tag)
    before = {e.activity.id: await partition_keys(consumer.client, e.keys) for e in (live, recent, undrained)}
    retire = sweep(consumer)

    assert await retire.sweep(int(time.time())) == 0

    for each in (live, recent, undrained, undelivered):
        assert await retired_at(consumer, each) == (None, None)
        assert await consumer.client.exists(each.keys.config) == 1
        assert await consumer.client.exists(each.keys.retired) == 0
    for each in (live, recent, undrained):
        assert await partition_keys(consumer.client, each.keys) == before[each.activity.id]
    # The script refused the undrained one (behind): it waits, and is not looked at again in the next pass.
    assert set(retire.refused) == {undrained.activity.id}
    await persist(consumer)
    assert await retire.sweep(int(time.time())) == 1  # the undelivered one, now delivered in the ledger
    assert await consumer.client.exists(undelivered.keys.retired) == 1
    assert await consumer.client.exists(undrained.keys.config) == 1
    retire.refused.clear()  # its hour is up
    assert await retire.sweep(int(time.time())) == 1
    assert await consumer.client.exists(undrained.keys.retired) == 1


async def test_a_crash_between_the_script_and_the_record_is_completed_by_the_next_pass(
    consumer: Consumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ended = await ended_activity(consumer)
    await persist(consumer)
    retire = sweep(consumer)

    async def crash(self: RetireSweep, activity_id: str, stream: str, now: int) -> None:
        raise RuntimeError("the worker died here")

    with monkeypatch.context() as patched:
        patched.setattr(RetireSweep, "record", crash)
        with pytest.raises(RuntimeError, match="died"):
            await retire.sweep(int(time.time()))

    assert await consumer.client.exists(ended.keys.retired, ended.keys.config) == 1  # retired in Redis only
    assert await retired_at(consumer, ended) == (None, None)

    now = int(time.time())
    assert await sweep(consumer).sweep(now) == 1  # the script answers replay; the record is written now
    assert await retired_at(consumer, ended) == (now, now)
    assert await sweep(consumer).sweep(now) == 0  # nothing left to do


async def test_the_housekeeping_lane_runs_the_sweep(consumer: Consumer) -> None:
    ended = await ended_activity(consumer)
    await persist(consumer)
    assert consumer.housekeeping is not None
    assert consumer.housekeeping.retire.retention == 30 * 86_400  # CLAIMGATE_RETENTION's default
    assert await consumer.client.exists(ended.keys.config) == 1  # an hour ago is well within it
    chores = Housekeeping(
        consumer.settings,
        consumer.pool,
        LockSweeper(consumer.runner, KEYS),
        ExpirySweeper(consumer.runner, KEYS),
        sweep(consumer),
    )

    await chores.run_due()

    assert chores.retire.retired == 1
    assert await consumer.client.exists(ended.keys.retired) == 1
    assert await consumer.client.exists(Partition(ended.keys.tag).seq) == 0


async def test_a_lane_that_still_reads_a_retired_stream_does_not_make_it_again(consumer: Consumer) -> None:
    """The sweep deletes the stream; a lane whose list still names it (until its next refresh) gets NOGROUP and
    leaves it gone, where a live activity's missing group is made as before."""
    ended = await ended_activity(consumer)
    await persist(consumer)
    await consumer.refresh_streams()
    assert ended.keys.events in consumer.streams
    assert await sweep(consumer).sweep(int(time.time())) == 1
    assert await consumer.client.exists(ended.keys.events) == 0

    await consumer.read()  # the lane's list is as before the sweep: it reads the deleted stream

    assert await consumer.client.exists(ended.keys.events) == 0
    assert await partition_keys(consumer.client, ended.keys) == {
        ended.keys.retired: "string",
        ended.keys.idempotency("u3", "k3"): "string",
    }
    live = "{a:never-made}:events"
    assert await polling.ensure_group_unless_retired(consumer.client, live)  # no marker: made as before
    assert await consumer.client.exists(live) == 1
