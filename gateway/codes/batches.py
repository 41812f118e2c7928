"""A code batch's footprint in Redis: its packs reserved from (or voided back to) the activity's stock
(``code_batch``), its codes written to (or dropped from) their code buckets (``put_codes``), and the codes of an
activity redeemed so far. Each step is idempotent: making a batch, undoing one and reconcile's repairs share them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from gateway.ids import new_id
from gateway.keys import KeySpace
from gateway.scripts.calls import codes as calls
from gateway.scripts.runner import RedisClient, ScriptRunner

PUT_CHUNK = 1000  # code hashes per put_codes call
PUT_CONCURRENCY = 8


def batch_record(activity_id: str, starts_at: int, ends_at: int, pack: str) -> str:
    """What redeeming a batch's codes needs, as put_codes keeps it in each code bucket."""
    return msgspec.json.encode(
        {"activity": activity_id, "starts_at": starts_at, "ends_at": ends_at, "pack": pack}
    ).decode()


async def put_codes(
    runner: ScriptRunner,
    keyspace: KeySpace,
    batch_id: str,
    batch: str,
    hashes: list[str],
    *,
    now: int,
    drop: bool = False,
) -> int:
    """Write (or drop) a batch's codes in their buckets (``put_codes``, PUT_CHUNK hashes a call); idempotent, so
    a repair can run it again. The codes written (or dropped) now."""
    by_bucket: dict[int, list[str]] = {}
    for code_hash in hashes:
        by_bucket.setdefault(keyspace.code_bucket(code_hash), []).append(code_hash)
    chunks = [
        (bucket, part[i : i + PUT_CHUNK])
        for bucket, part in sorted(by_bucket.items())
        for i in range(0, len(part), PUT_CHUNK)
    ]
    limit = asyncio.Semaphore(PUT_CONCURRENCY)

    async def put(bucket: int, chunk: list[str]) -> int:
        keys = calls.PutCodesKeys.of(keyspace.code_of_bucket(bucket))
        async with limit:
            reply = await calls.put_codes(
                runner,
                keys,
                now=now,
                event_id=new_id(),
                batch_id=batch_id,
                batch=batch,
                action="drop" if drop else "put",
                hashes=chunk,
            )
        return int(reply[1])

    return sum(await asyncio.gather(*(put(bucket, chunk) for bucket, chunk in chunks)))


async def code_batch(
    runner: ScriptRunner,
    keyspace: KeySpace,
    activity_id: str,
    batch_id: str,
    count: int,
    action: calls.BatchAction,
    *,
    operator: str,
    now: int,
) -> list[Any]:
    """Reserve a batch's packs from the activity's stock, or void them back (script ``code_batch``)."""
    return await calls.code_batch(
        runner,
        calls.CodeBatchKeys.of(keyspace.activity(activity_id)),
        now=now,
        event_id=new_id(),
        operator=operator,
        activity_id=activity_id,
        batch_id=batch_id,
        count=count,
        action=action,
    )


async def void_batch(
    runner: ScriptRunner,
    keyspace: KeySpace,
    activity_id: str,
    batch_id: str,
    count: int,
    hashes: list[str],
    *,
    operator: str,
    now: int,
) -> tuple[int, list[Any]]:
    """Undo a batch nobody has seen: drop its codes from their buckets, then give its packs back; both
    idempotent. The codes dropped now, and ``code_batch``'s reply."""
    dropped = await put_codes(runner, keyspace, batch_id, "", hashes, now=now, drop=True)
    reply = await code_batch(
        runner, keyspace, activity_id, batch_id, count, "void", operator=operator, now=now
    )
    return dropped, reply


async def codes_redeemed(client: RedisClient, keyspace: KeySpace, activity_id: str) -> int:
    """Codes of the activity redeemed, summed over every code bucket."""
    pipe = client.pipeline(transaction=False)
    for bucket in range(keyspace.code_buckets):
        pipe.hget(keyspace.code_of_bucket(bucket).counters, activity_id)
    return sum(int(value or 0) for value in await pipe.execute())
