"""Polling that scales with live work (worker/polling.py), against real Valkey and Postgres: the registry's
retired streams and activity windows as the ledger knows them; a quiet stream read only at its turn, a live one
every round; a retired stream never read, a revived one read again; a late grant after the window persisted by
the running loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest

from gateway.catalog import store
from gateway.catalog.admin import AdminService
from gateway.catalog.campaign import ActivityIn, PackItem, TemplateIn
from gateway.keys import KeySpace
from gateway.settings import Settings
from gateway.tokens import UserIdentity
from tests.worker.conftest import drain
from tests.worker.test_sink import pending
from worker import polling
from worker.consumer import Consumer, start_consumer
from worker.events import Entry

HOUR = 3600


@pytest.fixture
async def slow_quiet(
    settings: Settings, clean: None, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Consumer]:
    """A worker whose quiet streams' turn comes only when a test says so (an hour apart otherwise), and for
    which returning entries does not keep a stream live: liveness is the window's alone."""
    monkeypatch.setattr(polling, "BUSY_SECONDS", 0.0)
    worker = msgspec.structs.replace(settings.worker, quiet_poll_seconds=HOUR)
    found = await start_consumer(msgspec.structs.replace(settings, worker=worker))
    yield found
    await found.redis.close()
    await found.pool.close()


async def activity(consumer: Consumer, starts_in: int, ends_in: int) -> str:
    admin = AdminService(consumer.pool, consumer.runner, KeySpace(8, 4))
    now = int(time.time())
    template = await admin.create_template(
        TemplateIn(name="t", kind="cash", amount_off=100, valid_days=3), "alice", now
    )
    body = ActivityIn(
        name="a", pack=[PackItem(template.id, 1)], starts_at=now + starts_in, ends_at=now + ends_in, stock=50,
        per_user_limit=5,
    )  # fmt: skip
    return (await admin.create_activity(body, "alice", now)).id


async def grant(consumer: Consumer, activity_id: str, user: str) -> None:
    await consumer.claims.claim(
        activity_id, UserIdentity(user, ""), now=int(time.time()), mode="grant", operator="ops"
    )


async def claims_rows(consumer: Consumer, activity_id: str) -> int:
    rows: int = await consumer.pool.fetchval(
        "SELECT count(*) FROM claims WHERE activity_id = $1", activity_id
    )
    return rows


def counting_reads(consumer: Consumer) -> list[set[str]]:
    """Each round's streams read from ``>`` (what ``StreamReads.read`` was asked), recorded as they go."""
    rounds: list[set[str]] = []
    read = consumer.reader.read

    async def counted(reads: list[tuple[str, str]]) -> tuple[dict[str, list[Entry]], list[str]]:
        rounds.append({stream for stream, start in reads if start == polling.NEW})
        return await read(reads)

    consumer.reader.read = counted  # type: ignore[method-assign]
    return rounds


async def test_the_registry_gives_windows_and_status_as_the_ledger_knows_them_and_hides_retired_streams(
    consumer: Consumer,
) -> None:
    open_now = await activity(consumer, -10, 600)
    past = await activity(consumer, -600, -10)
    ended = await activity(consumer, -10, 600)
    later = await activity(consumer, 7200, 9000)
    admin = AdminService(consumer.pool, consumer.runner, KeySpace(8, 4))
    await admin.set_status(ended, "end", "alice", int(time.time()))
    await drain(consumer)  # the status change reaches the audit
    polled = {s.stream: s for s in await store.polled_streams(consumer.pool)}
    now = time.time()
    live = {a for a in (open_now, past, ended, later) if polled[KeySpace.activity(a).events].live(now)}
    assert live == {open_now}
    assert polled[KeySpace.activity(ended).events].ended
    assert polled["{w:0}:events"].live(now)  # fixed streams have no window

    stream = KeySpace.activity(past).events
    assert await store.retire_stream(consumer.pool, stream, 1234)
    assert not await store.retire_stream(consumer.pool, stream, 5678)  # the first retirement's time is kept
    assert stream not in {s.stream for s in await store.polled_streams(consumer.pool)}
    assert stream in await store.registered_streams(consumer.pool)  # still registered (recovery walks it)
    assert await consumer.pool.fetchval("SELECT retired_at FROM streams WHERE stream = $1", stream) == 1234
    assert await store.revive_stream(consumer.pool, stream)
    assert not await store.revive_stream(consumer.pool, stream)
    assert stream in {s.stream for s in await store.polled_streams(consumer.pool, activities=True)}
    assert stream not in {s.stream for s in await store.polled_streams(consumer.pool, activities=False)}


async def test_a_quiet_stream_is_read_only_at_its_turn_and_a_live_one_every_round(
    slow_quiet: Consumer,
) -> None:
    consumer = slow_quiet
    live = await activity(consumer, -10, 600)
    quiet = await activity(consumer, -600, -10)  # its window is over: no work expected
    await drain(consumer)  # both created and read once (new streams are read at once, quiet or not)
    await consumer.refresh_streams()  # sorted again: what returned entries counts as live only until here
    live_stream, quiet_stream = KeySpace.activity(live).events, KeySpace.activity(quiet).events
    assert live_stream in consumer.plan.live and quiet_stream not in consumer.plan.live
    rounds = counting_reads(consumer)

    await grant(consumer, live, "u1")
    await grant(consumer, quiet, "u2")  # a grant after the window: still granted
    for _ in range(5):
        await consumer.step()
    assert all(live_stream in streams for streams in rounds)
    assert not any(quiet_stream in streams for streams in rounds)
    assert await claims_rows(consumer, live) == 1
    assert await claims_rows(consumer, quiet) == 0  # waiting for the quiet turn

    consumer.plan.quiet_read_at -= HOUR  # as an hour later: the quiet streams' turn
    turn = len(rounds)
    await drain(consumer)
    assert quiet_stream in rounds[turn]
    assert await claims_rows(consumer, quiet) == 1
    assert quiet_stream in consumer.plan.live  # it returned entries: live (until the list is sorted again)
    assert await pending(consumer) == 0


async def test_a_failed_batch_on_a_quiet_stream_is_read_again_from_0_before_its_turn(
    slow_quiet: Consumer,
) -> None:
    consumer = slow_quiet
    quiet = await activity(consumer, -600, -10)
    await drain(consumer)
    await consumer.refresh_streams()
    await grant(consumer, quiet, "u1")
    consumer.plan.quiet_read_at -= HOUR
    good_pool = consumer.pool
    consumer.pool = await asyncpg.create_pool(
        "postgresql://nobody@127.0.0.1:1/none", min_size=0, max_size=1, timeout=1
    )
    try:
        with pytest.raises(OSError):
            await consumer.step()  # read (the quiet turn), not committed: pending for us
    finally:
        await consumer.pool.close()
        consumer.pool = good_pool
    stream = KeySpace.activity(quiet).events
    await consumer.refresh_streams()  # quiet again (returning entries kept it live only until here)
    assert stream in consumer.plan.ours and stream not in consumer.plan.live
    await drain(consumer)  # no quiet turn now: the read from 0 finds the batch
    assert await claims_rows(consumer, quiet) == 1
    assert await pending(consumer) == 0


async def test_a_retired_stream_is_not_read_and_a_revived_one_is_read_again(slow_quiet: Consumer) -> None:
    consumer = slow_quiet
    activity_id = await activity(consumer, -10, 600)
    stream = KeySpace.activity(activity_id).events
    await drain(consumer)
    await store.retire_stream(consumer.pool, stream, int(time.time()))
    await consumer.refresh_streams()
    assert stream not in consumer.streams
    rounds = counting_reads(consumer)

    await grant(consumer, activity_id, "late")  # a late change before the partition is revived
    consumer.plan.quiet_read_at -= HOUR
    await drain(consumer)
    assert rounds and not any(stream in streams for streams in rounds)
    assert await claims_rows(consumer, activity_id) == 0

    await store.revive_stream(consumer.pool, stream)
    await consumer.refresh_streams()  # what the loop does every STREAM_REFRESH_SECONDS
    await drain(consumer)
    assert await claims_rows(consumer, activity_id) == 1
    assert await pending(consumer) == 0


async def test_the_running_worker_persists_a_late_grant_after_the_window_at_the_quiet_cadence(
    settings: Settings, clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(polling, "BUSY_SECONDS", 0.0)
    worker = msgspec.structs.replace(settings.worker, quiet_poll_seconds=0.3)
    consumer = await start_consumer(msgspec.structs.replace(settings, worker=worker))
    stop = asyncio.Event()
    loop = asyncio.create_task(consumer.run(stop))
    try:
        activity_id = await activity(consumer, -600, -10)
        stream = KeySpace.activity(activity_id).events
        deadline = time.monotonic() + 20
        # Created and persisted; quiet from the next refresh of the list.
        while await consumer.pool.fetchval("SELECT count(*) FROM audit") == 0 or stream in consumer.plan.live:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert stream in consumer.streams
        await grant(consumer, activity_id, "late")
        while await claims_rows(consumer, activity_id) == 0:
            assert time.monotonic() < deadline, "the late grant was never persisted"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(loop, 10)
        await consumer.redis.close()
        await consumer.pool.close()


async def test_a_round_over_many_streams_with_backlogs_reads_about_one_batch(consumer: Consumer) -> None:
    """Each stream's share of the batch, at least MIN_COUNT: 40 streams of 50 entries each, a batch of 100, read
    10 at a time per stream (400, not 2,000: a round's reply must arrive within the transport's timeout, and its
    transaction stay a batch); a single stream with a backlog still gets the whole batch."""
    streams = [f"{{a:backlog-{n}}}:events" for n in range(40)]
    for stream in streams:
        await polling.ensure_group(consumer.client, stream)
        pipe = consumer.client.pipeline(transaction=False)
        for n in range(50):
            pipe.xadd(stream, {"n": str(n)})
        await pipe.execute()
    reader = polling.StreamReads(consumer.redis.polls, "reader-1", 100)

    found, missing = await reader.read([(stream, polling.NEW) for stream in streams])

    assert missing == []
    assert {stream: len(entries) for stream, entries in found.items()} == {
        s: polling.MIN_COUNT for s in streams
    }
    alone, _ = await reader.read([(streams[0], polling.NEW)])
    assert len(alone[streams[0]]) == 40  # what the stream had left, under a batch of 100 for it alone
    assert (
        reader.count_of(1) == 100 and reader.count_of(3) == 33 and reader.count_of(1000) == polling.MIN_COUNT
    )
