"""A worker asked to stop (SIGTERM) while it is busy: it finishes the batch in hand, exits 0 within a few
seconds, leaves nothing pending; the next worker finishes and each claim is persisted once."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from redis.asyncio import Redis

from tests.faults.support import (
    Load,
    Processes,
    assert_exactly_once,
    assert_reconciled,
    claims_rows,
    create_sale,
    finish,
    pending_entries_of,
    plan,
    registered_streams,
    stream_backlog,
    wait_drained,
    wait_until,
)

pytestmark = pytest.mark.fault
STOP_SECONDS = 5.0


@contextlib.asynccontextmanager
async def watch_writes(database_url: str) -> AsyncIterator[Callable[[], Awaitable[bool]]]:
    """A probe: is another session inside a write transaction now (the worker writing a batch)?"""
    conn = await asyncpg.connect(database_url)

    async def writing() -> bool:
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                " AND datname = current_database()"
                " AND (state LIKE 'idle in transaction%' OR (state = 'active' AND query LIKE '%INSERT INTO%'))"
            )
        )

    try:
        yield writing
    finally:
        await conn.close()


@pytest.mark.timeout(300)
async def test_a_worker_stopped_with_sigterm_under_load_exits_0_and_loses_nothing(
    env: dict[str, str], procs: Processes, rdb: Redis
) -> None:
    database_url = env["CLAIMGATE_DATABASE_URL"]
    gateway = await procs.gateway(env)
    sale = await create_sale(gateway.url, stock=2300)
    worker = procs.worker(env, name="stopped")
    load = Load(gateway.url, sale.activity_id, plan(2000), concurrency=32)
    loading = load.start()
    try:
        await load.wait_acked(800)
        await wait_until("the worker persisting", lambda: claims_rows(database_url), 30)
        assert not loading.done()
        backlog = await stream_backlog(rdb, await registered_streams(database_url))
        async with watch_writes(database_url) as writing:
            await wait_until("the worker inside a batch's transaction", writing, 30, interval=0.001)
            asked = time.monotonic()
            worker.signal(signal.SIGTERM)
        code = await worker.wait_exit(STOP_SECONDS)
        took = time.monotonic() - asked
        assert code == 0, f"exit {code} ({took:.1f}s after SIGTERM)\n{worker.tail()}"
        assert not loading.done(), "the worker should stop under load"
        print(f"stopped in {took:.2f}s with backlog {backlog}")
        # It finished the batch it had: nothing of it is left pending.
        assert await pending_entries_of(rdb, "stopped", database_url) == []
        print(f"{await claims_rows(database_url)} claims persisted when it stopped, {len(load.acked)} acked")

        finisher = procs.worker(env, name="finisher")
        await asyncio.wait_for(loading, 120)
        await wait_drained(rdb, database_url, [finisher])
    finally:
        await finish(loading)
    assert procs.stop(finisher) == 0, finisher.tail()
    print(load.summary())

    load.assert_clean()
    await assert_exactly_once(rdb, database_url, sale, load)
    await assert_reconciled(env)
