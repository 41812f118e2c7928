"""Pruning the ledger's expired idempotency records. A record answers a keyed retry only until its expiry (Redis
drops its copy then by itself, and restore and reconcile read only the unexpired ones), so past it the row serves
nothing. Deleted a bounded batch at a time, oldest first, so a pass never holds a lane long; a row another worker
is deleting is skipped, not waited for."""

from __future__ import annotations

import logging

import asyncpg

from gateway import clock

log = logging.getLogger(__name__)

PRUNE_BATCH = 5_000
PRUNE_BATCHES_PER_PASS = 10

_DELETE_EXPIRED = """
DELETE FROM idempotency_records
WHERE redis_key IN (
    SELECT redis_key FROM idempotency_records WHERE expires_at <= $1
    ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
)
"""


async def prune_idempotency(
    pool: asyncpg.Pool, now: int, *, batch: int = PRUNE_BATCH, batches: int = PRUNE_BATCHES_PER_PASS
) -> int:
    """Delete records expired at ``now``, up to ``batches`` batches of ``batch``; how many were deleted (a pass
    that stops at its bound leaves the rest to the next)."""
    deleted = 0
    for _ in range(batches):
        status = await pool.execute(_DELETE_EXPIRED, now, batch)
        count = int(status.split()[-1])
        deleted += count
        if count < batch:
            break
    return deleted


async def prune_expired(pool: asyncpg.Pool) -> int:
    """``prune_idempotency`` at the clock's now. Housekeeping: a Postgres away holds back the batches, which report
    it; this pass is skipped (logged) and the next one tries again."""
    try:
        return await prune_idempotency(pool, int(clock.now()))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("idempotency prune postponed: %r", exc)
        return 0
