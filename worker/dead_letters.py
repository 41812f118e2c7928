"""Dead letters: an entry that failed on its own account ``CLAIMGATE_WORKER_DEAD_AFTER`` times in a row moves
to its partition's dead-letter stream (``<tag>:dead``, same slot) with the reason, and is acknowledged, so it
blocks nothing. Postgres being away is never an entry's fault: those entries wait. ``claimgate replay-dead``
applies dead letters again after a fix; each is written once (the sink is idempotent) and removed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.keys import Partition, partition_of_stream
from gateway.scripts.runner import RedisClient
from worker import sink
from worker.events import Entry

ORIGIN_FIELDS = ("dl_stream", "dl_entry_id", "dl_reason", "dl_failures")


async def bury(client: RedisClient, entry: Entry, reason: str, failures: int) -> None:
    """Copy the entry to the dead-letter stream, then acknowledge it (a crash between the two leaves it
    pending: it is dead-lettered again, and replay is idempotent)."""
    dead = Partition(entry.partition).dead_letters
    fields: dict[Any, Any] = dict(entry.fields)
    fields.update(
        dl_stream=entry.stream, dl_entry_id=entry.entry_id, dl_reason=reason, dl_failures=str(failures)
    )
    await client.xadd(dead, fields)
    await client.xack(entry.stream, entry.stream, entry.entry_id)


def original(fields: dict[str, str]) -> Entry:
    return Entry(
        fields["dl_stream"],
        fields["dl_entry_id"],
        {k: v for k, v in fields.items() if k not in ORIGIN_FIELDS},
    )


@dataclass
class ReplayReport:
    replayed: int = 0
    still_failing: int = 0


async def replay(
    client: RedisClient, pool: asyncpg.Pool, streams: list[str], deliver: Callable[[Entry], Awaitable[object]]
) -> ReplayReport:
    """Apply every dead letter of these streams again; remove those that are written now."""
    report = ReplayReport()
    for stream in streams:
        dead = Partition(partition_of_stream(stream)).dead_letters
        dead_entries: list[tuple[Any, Any]] = await client.xrange(dead) or []
        for dead_id, fields in dead_entries:
            entry = original({str(k): str(v) for k, v in fields.items()})
            try:
                async with pool.acquire() as conn:
                    conflicts = await sink.apply(conn, [entry])
                if not conflicts:
                    await deliver(entry)
            except sink.ENTRY_FAULTS:
                report.still_failing += 1
                continue
            await client.xdel(dead, dead_id)
            report.replayed += 1
    return report
