"""The code buckets' retention sweep: a batch's codes (redeemed ones' tombstones too) and its record in each code
bucket leave Redis once ``CLAIMGATE_RETENTION`` has passed since the batch's window ended.

A code is redeemed only inside its batch's window (``starts_at <= now < ends_at``, copied when the batch was made),
so past ``ends_at + retention`` none can be, and every redeemed one was redeemed before ``ends_at``: its tombstone
has lasted the retention at least. The ledger says which batches are due (``code_batches``: ready or void, not yet
retired, oldest end first; a batch still ``recorded`` waits for reconcile to void it) and where their codes are
(``codes.partition``). Per bucket, ``retire_codes`` in chunks, the batch's record with the last; the buckets
concurrently. Once every bucket is done the batch's ``retired_at`` is set, and recovery expects Redis without it;
a pass cut short (a crash, a fenced Redis) is finished by the next, the script being idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg

from gateway.ids import new_id
from gateway.keys import CodeKeys
from gateway.outcomes import Outcome
from gateway.scripts.calls import codes as calls
from gateway.scripts.runner import ScriptRunner

log = logging.getLogger(__name__)

RETIRE_CHUNK = 1000  # code hashes per retire_codes call
RETIRE_CONCURRENCY = 8  # buckets retired at once
RETIRE_BATCHES = 10  # batches a pass retires at most (the rest wait for the next)

_DUE = """
SELECT batch_id FROM code_batches
WHERE retired_at IS NULL AND state IN ('ready', 'void') AND ends_at <= $1 AND NOT (batch_id = ANY($3::text[]))
ORDER BY ends_at, batch_id LIMIT $2
"""
_CODES = "SELECT partition, code_hash FROM codes WHERE batch_id = $1 ORDER BY partition, code_hash"
_RETIRED = "UPDATE code_batches SET retired_at = $2 WHERE batch_id = $1 AND retired_at IS NULL"


@dataclass(frozen=True, slots=True)
class Retired:
    batches: int = 0
    codes: int = 0

    def __add__(self, other: Retired) -> Retired:
        return Retired(self.batches + other.batches, self.codes + other.codes)


class CodeRetention:
    def __init__(
        self,
        runner: ScriptRunner,
        pool: asyncpg.Pool,
        retention_seconds: int,
        *,
        batches: int = RETIRE_BATCHES,
        chunk: int = RETIRE_CHUNK,
    ) -> None:
        self.runner = runner
        self.pool = pool
        self.retention_seconds = retention_seconds
        self.batches = batches
        self.chunk = chunk
        self.refused: set[str] = set()  # batches a bucket refused: not tried again by this process

    async def sweep(self, *, now: int) -> Retired:
        """Up to ``batches`` due batches, oldest end first; what left Redis now. A batch a bucket refused is
        logged and not tried again by this process, so it never holds up the batches after it."""
        cutoff = now - self.retention_seconds
        retired = Retired()
        for row in await self.pool.fetch(_DUE, cutoff, self.batches, sorted(self.refused)):
            removed = await self.retire(row["batch_id"], now=now, cutoff=cutoff)
            if removed is not None:
                retired += Retired(1, removed)
        return retired

    async def retire(self, batch_id: str, *, now: int, cutoff: int) -> int | None:
        """Every bucket's codes and record of the batch, then its ``retired_at``; the codes removed now, or None
        when a bucket refused (its record of the batch ends after the cutoff: the ledger and Redis disagree)."""
        by_bucket: dict[str, list[str]] = {}
        for row in await self.pool.fetch(_CODES, batch_id):
            by_bucket.setdefault(row["partition"], []).append(row["code_hash"])
        limit = asyncio.Semaphore(RETIRE_CONCURRENCY)

        async def bucket(partition: str, hashes: list[str]) -> int | None:
            async with limit:
                return await self._retire_in(CodeKeys(partition), batch_id, hashes, now=now, cutoff=cutoff)

        results = await asyncio.gather(
            *(bucket(partition, hashes) for partition, hashes in sorted(by_bucket.items())),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result  # once every bucket's call has ended (a fenced Redis: the next pass finishes)
        counts = [result for result in results if not isinstance(result, BaseException)]
        if None in counts:
            log.error("code batch %s not retired: a bucket's record of it ends after %d", batch_id, cutoff)
            self.refused.add(batch_id)
            return None
        await self.pool.execute(_RETIRED, batch_id, now)
        return sum(count for count in counts if count is not None)

    async def _retire_in(
        self, bucket: CodeKeys, batch_id: str, hashes: list[str], *, now: int, cutoff: int
    ) -> int | None:
        """One bucket, chunk by chunk, the record with the last; None when the bucket refused."""
        keys = calls.RetireCodesKeys.of(bucket)
        removed = 0
        for start in range(0, len(hashes), self.chunk):
            reply = await calls.retire_codes(
                self.runner,
                keys,
                now=now,
                event_id=new_id(),
                cutoff=cutoff,
                batch_id=batch_id,
                last=start + self.chunk >= len(hashes),
                hashes=hashes[start : start + self.chunk],
            )
            if reply[0] != Outcome.OK:
                return None
            removed += int(reply[1])
        return removed
