"""What the readiness answers report of the stores: each probe says ``ok`` or why not, never raises."""

from __future__ import annotations

import asyncpg

from gateway.scripts.runner import RedisClient

OK = "ok"


async def redis_state(client: RedisClient) -> str:
    try:
        await client.ping()
    except Exception as exc:  # any failure to answer is the answer
        return f"unreachable: {exc.__class__.__name__}"
    return OK


async def postgres_state(pool: asyncpg.Pool) -> str:
    try:
        async with pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"unreachable: {exc.__class__.__name__}"
    return OK
