"""A worker SIGKILLed at an injected point of a batch, under steady claims: another worker takes its pending
entries over and every acknowledged claim reaches Postgres exactly once."""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import pytest
from redis.asyncio import Redis

from tests.faults.support import (
    Load,
    Processes,
    assert_exactly_once,
    assert_reconciled,
    create_sale,
    finish,
    pending_entries_of,
    plan,
    wait_drained,
)

pytestmark = [pytest.mark.fault, pytest.mark.short_fault]


async def persisted_of(database_url: str, held: list[tuple[str, dict[str, str]]]) -> tuple[int, int]:
    """Of the ``claimed`` and ``delivered`` entries held, how many Postgres holds, and how many there are."""
    claims = [f["claim_id"] for _, f in held if f.get("type") == "claimed"]
    deliveries = [f["id"] for _, f in held if f.get("type") == "delivered"]
    conn = await asyncpg.connect(database_url)
    try:
        found = await conn.fetchval("SELECT count(*) FROM claims WHERE claim_id = ANY($1::text[])", claims)
        # A delivery is in the ledger once its coupons' events are, or while it waits there for its claim.
        found += await conn.fetchval(
            "SELECT count(*) FROM (SELECT event_id FROM coupon_events WHERE event_id = ANY($1::text[])"
            " UNION SELECT fields->>'id' FROM held_entries WHERE fields->>'id' = ANY($1::text[])) AS persisted",
            deliveries,
        )
    finally:
        await conn.close()
    return int(found), len(claims) + len(deliveries)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("point", "lanes"), [("before_commit", "1"), ("after_commit", "1"), ("after_commit", "2")]
)
async def test_a_worker_killed_at_a_crash_point_loses_and_doubles_nothing(
    point: str, lanes: str, env: dict[str, str], procs: Processes, rdb: Redis
) -> None:
    database_url = env["CLAIMGATE_DATABASE_URL"]
    gateway = await procs.gateway(env)
    requests = plan(2000)
    sale = await create_sale(gateway.url, stock=2300)  # the tail of the load sells out
    load = Load(gateway.url, sale.activity_id, requests, concurrency=32)
    loading = load.start()
    try:
        await load.wait_acked(300)
        doomed = procs.worker(
            env, name="doomed", worker_batch="100", worker_crash_at=f"{point}:3", worker_lanes=lanes
        )
        code = await doomed.wait_exit(60)
        assert code == -signal.SIGKILL, f"the worker should have killed itself at {point}\n{doomed.tail()}"
        assert not loading.done(), "the worker should die under load"

        # What it held when it died: read, not acknowledged; with one lane, written (after_commit) or not
        # (before_commit). With two, the other lane's batch may be at any point of its own.
        held = await pending_entries_of(rdb, "doomed", database_url)
        assert held, "the killed worker should leave entries pending"
        in_ledger, total = await persisted_of(database_url, held)
        assert total > 0
        if lanes == "1":
            assert in_ledger == (total if point == "after_commit" else 0), (point, in_ledger, total)

        survivor = procs.worker(env, name="survivor", worker_claim_idle_ms="500")
        await asyncio.wait_for(loading, 120)
        await wait_drained(rdb, database_url, [survivor])
    finally:
        await finish(loading)
    assert procs.stop(survivor) == 0, survivor.tail()
    assert await pending_entries_of(rdb, "doomed", database_url) == []

    load.assert_clean()
    assert len(load.acked) == sale.stock, load.summary()  # sold out: every pack taken by an answered claim
    print(load.summary())
    await assert_exactly_once(rdb, database_url, sale, load)
    await assert_reconciled(env)
