"""Drain a partition's stream into the ledger: every entry still in the stream, applied through the sink
(idempotent: entries already persisted change nothing). Restore and reconcile do this first, so the ledger
holds everything Redis recorded, whether or not a worker is running."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway.keys import Partition
from gateway.scripts.runner import RedisClient
from worker import sink
from worker.events import Entry

DRAIN_BATCH = 1000


@dataclass
class Drained:
    entries: int = 0
    conflicts: int = 0
    failed: dict[tuple[str, str], str] = field(
        default_factory=dict
    )  # entries the sink refuses (dead letters)


async def drain_partition(client: RedisClient, pool: asyncpg.Pool, partition: str) -> Drained:
    stream = Partition(partition).events
    drained = Drained()
    start = "-"
    while True:
        batch: list[Any] = await client.xrange(stream, min=start, count=DRAIN_BATCH) or []
        entries = [Entry(stream, str(entry_id), fields) for entry_id, fields in batch if fields]
        if entries:
            async with pool.acquire() as conn:
                written = await sink.write(conn, entries)
            drained.entries += len(entries)
            drained.conflicts += len(written.conflicts)
            drained.failed.update(written.failed)
        if len(batch) < DRAIN_BATCH:
            return drained
        start = "(" + batch[-1][0]
