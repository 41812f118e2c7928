"""The fence's record of checked primaries (``FENCE_CHECKED``): it stands in for the ledger only while the ledger
cannot be reached, and only for the very lives of the primaries it names (run id and replication id)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.keys import FENCE_CHECKED
from gateway.scripts import ledger_check
from gateway.scripts.fence import Fence
from gateway.scripts.runner import RedisClient

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


@pytest.fixture
async def no_ledger() -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(UNREACHABLE, min_size=0, max_size=1, timeout=1)
    yield pool
    await pool.close()


async def test_a_process_without_the_ledger_trusts_lives_another_checked(
    redis_client: RedisClient, db: asyncpg.Pool, no_ledger: asyncpg.Pool
) -> None:
    checked = Fence()
    await ledger_check.check(redis_client, db, checked)
    assert checked.is_open
    lives = await ledger_check.primary_lives(redis_client)
    assert await ledger_check.checked_lives(redis_client) == lives
    assert all(len(life.split("/")) == 2 and all(life.split("/")) for life in lives), lives

    started_during_an_outage = Fence()
    await ledger_check.check(redis_client, no_ledger, started_during_an_outage)
    assert started_during_an_outage.is_open


async def test_a_promoted_replica_is_a_new_life_the_record_does_not_vouch_for(
    redis_client: RedisClient, db: asyncpg.Pool, no_ledger: asyncpg.Pool
) -> None:
    await ledger_check.check(redis_client, db, Fence())
    (life,) = await ledger_check.primary_lives(redis_client)
    run_id, _ = life.split("/")
    await redis_client.set(
        FENCE_CHECKED, f"{run_id}/{'0' * 40}"
    )  # the same server under another replication id
    fence = Fence()
    await ledger_check.check(redis_client, no_ledger, fence)
    assert not fence.is_open and "the ledger is unreachable" in fence.reason


async def test_when_the_ledger_answers_it_judges_whatever_the_record_says(
    redis_client: RedisClient, db: asyncpg.Pool
) -> None:
    await ledger_check.check(redis_client, db, Fence())  # records this Redis's lives
    await db.execute("INSERT INTO partition_marks VALUES ('{w:0}', 999)")  # then the ledger is ahead of it
    fence = Fence()
    await ledger_check.check(redis_client, db, fence)
    assert not fence.is_open and "behind the ledger" in fence.reason


class _SlowLedger:
    """A pool whose marks come only once the test lets them: the check is caught in the middle."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def fetch(self, query: str) -> list[asyncpg.Record]:
        self.asked.set()
        await self.answer.wait()
        return list(await self.pool.fetch(query))


async def test_a_fence_closed_on_partitions_behind_keeps_saying_so_while_it_checks_again(
    redis_client: RedisClient, db: asyncpg.Pool
) -> None:
    await db.execute("INSERT INTO partition_marks VALUES ('{w:0}', 999)")
    fence = Fence()
    await ledger_check.check(redis_client, db, fence)
    behind = fence.reason
    assert "behind the ledger" in behind
    slow = _SlowLedger(db)
    again = asyncio.create_task(ledger_check.check(redis_client, slow, fence))  # type: ignore[arg-type]
    await asyncio.wait_for(slow.asked.wait(), 5)
    assert fence.reason == behind  # what readiness shows in the middle of the next check
    slow.answer.set()
    await again
    assert fence.reason == behind and not fence.is_open
