"""The retire sweep: ended activities' partitions leave Redis once their retention has passed (design.md,
"Retention"; ``lua/retire_activity.lua``).

Candidates come from the ledger: activities not retired whose ``ends_at`` plus the retention has passed (the
one clock), oldest end first, a bounded number a pass, and only those the ledger holds whole: no claim without
its coupons (a delivery still to make) and no code batch half done (reconcile finishes those). For each, the
script refuses (the end after the cutoff, as Redis holds it; the partition's seq not the ledger's mark; dead
letters waiting) or retires it, and the worker records the retirement in Postgres (the activity and its stream,
one transaction). A crash between the script and that record is healed by the next pass: the script answers
``replay`` (retired before) and the record is written then. After recording, the marker is looked at again: a
revival that raced the record (``gateway/catalog/retirement.py``) leaves the ledger saying live. A refused
activity is looked at again after ``REFUSED_SECONDS``, so refusals do not fill every pass.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import asyncpg

from gateway.catalog.retirement import is_retired, record_live, record_retired
from gateway.keys import KeySpace
from gateway.outcomes import Outcome
from gateway.scripts.calls import retire as calls
from gateway.scripts.runner import ScriptRunner

log = logging.getLogger(__name__)
RETIRE_SECONDS = 300.0  # how often the sweep runs
RETIRE_BATCH = 100  # activities looked at per pass
REFUSED_SECONDS = 3600.0  # an activity the script refused waits this long before it is a candidate again

CANDIDATES = (
    "SELECT a.activity_id FROM activities a WHERE a.retired_at IS NULL AND a.ends_at <= $1"
    " AND NOT (a.activity_id = ANY($2::text[]))"
    " AND NOT EXISTS (SELECT 1 FROM claims c WHERE c.activity_id = a.activity_id"
    " AND NOT EXISTS (SELECT 1 FROM coupons k WHERE k.claim_id = c.claim_id))"
    " AND NOT EXISTS (SELECT 1 FROM code_batches b WHERE b.activity_id = a.activity_id"
    " AND (b.state = 'recorded' OR (b.state = 'void' AND b.reserved AND NOT b.voided)))"
    " ORDER BY a.ends_at, a.activity_id LIMIT $3"
)


@dataclass
class RetireSweep:
    pool: asyncpg.Pool
    runner: ScriptRunner  # the fenced runner: a fenced Redis postpones the pass
    keyspace: KeySpace
    retention: int  # seconds after its end an activity's partition leaves Redis
    batch: int = RETIRE_BATCH
    retired: int = 0
    refused: dict[str, float] = field(default_factory=dict)  # activity -> when it may be a candidate again

    async def sweep(self, now: int) -> int:
        """One bounded pass: the activities retired (or recorded after an earlier pass's crash) now."""
        cutoff = now - self.retention
        waiting = time.monotonic()
        self.refused = {activity: until for activity, until in self.refused.items() if until > waiting}
        rows = await self.pool.fetch(CANDIDATES, cutoff, sorted(self.refused), self.batch)
        done = 0
        for row in rows:
            if await self.retire(row["activity_id"], now, cutoff):
                done += 1
        self.retired += done
        return done

    async def retire(self, activity_id: str, now: int, cutoff: int) -> bool:
        keys = self.keyspace.activity(activity_id)
        mark = await self.pool.fetchval("SELECT seq FROM partition_marks WHERE partition = $1", keys.tag)
        reply = await calls.retire_activity(
            self.runner, calls.RetireActivityKeys.of(keys), now=now, cutoff=cutoff, mark=int(mark or 0)
        )
        if reply[0] not in (Outcome.OK, Outcome.REPLAY):
            why = reply[1] if len(reply) > 1 else reply[0]
            log.info("activity %s not retired yet: %s", activity_id, why)
            self.refused[activity_id] = time.monotonic() + REFUSED_SECONDS
            return False
        await self.record(activity_id, keys.events, now)
        if not await is_retired(self.runner.control, keys):  # revived while we recorded: the ledger follows
            await record_live(self.pool, activity_id, keys.events)
            return False
        if reply[0] == Outcome.OK:
            log.info("activity %s retired from Redis at seq %s", activity_id, reply[1])
        return True

    async def record(self, activity_id: str, stream: str, now: int) -> None:
        async with self.pool.acquire() as conn:
            await record_retired(conn, activity_id, stream, now)
