"""A backlog for the worker, and what each issued coupon costs Redis.

With no worker running, N claims of distinct users are made the gateway's own way, without HTTP
(``ClaimService.claim`` through ``ScriptRunner``: the ``claim`` script, then ``deliver``), from client processes
with many claims in flight (``loadtest.direct_claims.client_process``). Redis ``used_memory`` is read before and
after: the difference over N is what one issued coupon holds in Redis while the worker has not persisted it (the
claim's stream entry and the delivery's, neither trimmed yet, the coupon in its wallet bucket, the user's index
entry, the user and device counters).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import asyncpg
import redis

from loadtest.direct_claims import Share, client_process

POLL_SECONDS = 0.2  # count(*) over the activity's rows costs Postgres ~10-20 ms: polled no faster


def used_memory(info: dict[str, object]) -> int:
    return int(str(info["used_memory"]))


def settled_memory(client: redis.Redis, within: float = 10.0) -> int:
    """INFO used_memory once Valkey has freed what earlier deletes queued for its background thread (a DEL of a
    big key frees lazily: read at once, the memory it still holds would count against the backlog)."""
    deadline = time.monotonic() + within
    while True:
        info = client.info("memory")
        if not int(str(info.get("lazyfree_pending_objects", 0))) or time.monotonic() > deadline:
            return used_memory(info)
        time.sleep(0.05)


def user_ids(count: int, prefix: str = "bk") -> list[str]:
    return [f"{prefix}{n:07d}" for n in range(count)]


def claim_share(url: str, activity_id: str, users: list[str], concurrency: int, start_at: float) -> Share:
    """One client process's claims; a refusal comes back as a plain error (a DomainError does not unpickle)."""
    try:
        return client_process(url, activity_id, users, concurrency, start_at)
    except Exception as exc:
        raise RuntimeError(f"backlog claim failed: {exc.__class__.__name__}: {exc}") from None


async def make_backlog(
    url: str, activity_id: str, count: int, processes: int, concurrency: int, prefix: str = "bk"
) -> float:
    """Claim ``count`` packs for users named ``prefix``N (each granted, or ``client_process`` raises); the
    seconds it took."""
    users = user_ids(count, prefix)
    start_at = time.time() + 2.0  # every process started and connected by then
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = [
            asyncio.wrap_future(
                pool.submit(claim_share, url, activity_id, users[i::processes], concurrency, start_at)
            )
            for i in range(processes)
        ]
        shares: list[Share] = await asyncio.gather(*futures)
    return max(s.ended for s in shares) - min(s.began for s in shares)


async def time_drain(
    database_url: str, activity_id: str, count: int, within: float
) -> tuple[int, float, float]:
    """Poll Postgres until the activity has ``count`` claims rows (or ``within`` seconds pass): (rows, when the first
    row was seen, when the last poll found them all), times from ``time.monotonic``."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + within
        first = 0.0
        while True:
            rows = int(await conn.fetchval("SELECT count(*) FROM claims WHERE activity_id = $1", activity_id))
            now = time.monotonic()
            if rows and not first:
                first = now
            if rows >= count or now > deadline:
                return rows, first, now
            await asyncio.sleep(POLL_SECONDS)
    finally:
        await conn.close()


async def claims_rows(database_url: str) -> int:
    """Rows of the whole claims table (the worker's ledger checks read it: their cost grows with it)."""
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM claims"))
    finally:
        await conn.close()


# The ledger's tables a claim writes to (with their indexes and TOAST), for the growth per claim.
LEDGER_TABLES = ("claims", "coupons", "coupon_events", "idempotency_records", "audit", "held_entries")


async def ledger_bytes(database_url: str) -> dict[str, int]:
    """Each ledger table's size on disk, indexes and TOAST included (``pg_total_relation_size``)."""
    conn = await asyncpg.connect(database_url)
    try:
        return {
            table: int(await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", table))
            for table in LEDGER_TABLES
        }
    finally:
        await conn.close()
