"""Several workers in one consumer group for the whole load, taking each other's pending entries over every
100 ms: no deadlock, every acknowledged claim persisted once."""

from __future__ import annotations

import asyncio
import re

import pytest
from redis.asyncio import Redis

from tests.faults.support import (
    KEYS,
    Load,
    Processes,
    assert_exactly_once,
    assert_reconciled,
    create_sale,
    finish,
    plan,
    registered_streams,
    wait_drained,
)

pytestmark = pytest.mark.fault
# A small idle time: a worker takes over entries another has read and is still writing, so the same entries
# are written by two workers at once, often.
RACE = {"worker_claim_idle_ms": "1", "worker_batch": "200"}


async def sample_redeliveries(
    redis: Redis, streams: list[str], seen: set[tuple[str, str]], stop: asyncio.Event
) -> None:
    """Collect the pending entries delivered more than once (taken over from another worker)."""
    while not stop.is_set():
        for stream in streams:
            for row in await redis.xpending_range(stream, stream, min="-", max="+", count=1000):
                if int(row["times_delivered"]) > 1:
                    seen.add((stream, str(row["message_id"])))
        await asyncio.sleep(0.005)


@pytest.mark.timeout(300)
async def test_workers_racing_on_one_group_persist_each_claim_once_without_deadlock(
    env: dict[str, str], procs: Processes, rdb: Redis
) -> None:
    database_url = env["CLAIMGATE_DATABASE_URL"]
    gateway = await procs.gateway(env)
    sale = await create_sale(gateway.url, stock=3300)
    workers = [procs.worker(env, name=f"racer-{n}", **RACE) for n in (1, 2)]
    load = Load(gateway.url, sale.activity_id, plan(3000), concurrency=32)
    loading = load.start()
    redelivered: set[tuple[str, str]] = set()
    streams = await registered_streams(database_url)
    stop_sampling = asyncio.Event()
    sampling = asyncio.create_task(sample_redeliveries(rdb, streams, redelivered, stop_sampling))
    try:
        await load.wait_acked(1500)
        assert not loading.done()
        workers.append(procs.worker(env, name="racer-3", **RACE))
        await asyncio.wait_for(loading, 120)
        await wait_drained(rdb, database_url, workers)
    finally:
        stop_sampling.set()
        await finish(loading)
        await asyncio.wait_for(sampling, 10)
    print(load.summary())
    print(f"{len(redelivered)} entries seen delivered to more than one reader")
    assert redelivered, "the workers should have taken entries over from each other while writing them"

    # Each of the three read entries of the activity's stream.
    stream = KEYS.activity(sale.activity_id).events
    consumers = {c["name"]: c for c in await rdb.xinfo_consumers(stream, stream)}
    assert {"racer-1", "racer-2", "racer-3"} <= set(consumers), consumers
    for worker in workers:
        assert int(consumers[worker.name]["inactive"]) >= 0, consumers[worker.name]  # -1: never read any
    for worker in workers:
        assert procs.stop(worker) == 0, worker.tail()
    for worker in workers:
        log = worker.text()
        assert not re.search("deadlock", log, re.IGNORECASE), worker.tail(80)
        assert "Traceback" not in log and " ERROR " not in log, worker.tail(80)
        retries = log.count("batch not persisted")
        print(f"{worker.name}: {retries} batches retried")

    load.assert_clean()
    await assert_exactly_once(rdb, database_url, sale, load)
    await assert_reconciled(env)
