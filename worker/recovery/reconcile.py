"""Reconcile: compare, per partition, what Redis holds with what the ledger says it should hold, report every
difference, and finish what a crash left half-done.

Per partition it first drains the stream into the ledger (idempotent), then compares: seq with the ledger's
mark; an activity's config and status, stock left and taken, per-user and per-device counts, allow-list,
idempotency records and code batches; a wallet bucket's coupons (every field of each), each user's index, the
orders (every field), the locks, the checkout counters, the expiry indexes (as far as the ledger can tell their
times: worker/recovery/compare.py) and code-redeem idempotency records; a code bucket's codes
(every field), batch records and redeemed counters; the blocklist. JSON records are compared decoded; a counter
missing and one at "0" are the same. It also checks the ledger itself: no activity's claims hold a unit beyond
the stock ever made available, no coupon without its claim, and no entry held long for a claim it lacks.

Half-done work it finishes: a definition in Postgres whose mirror never reached Redis (the partition holds
nothing yet) is mirrored; a claim whose coupons the ledger lacks is delivered (idempotent); a code batch still
``recorded`` after ``batch_grace`` seconds (its maker died before it was ready, so nobody saw its codes) is
voided: claimed in Postgres first (state ``void``, so a maker still running cannot make it ready), its codes
dropped from their buckets, its packs given back (``code_batch`` void). A batch void in Postgres whose packs
Redis still holds (a repair cut short) is finished the same way.

Under live traffic a partition can differ for an instant (a claim between the drain and the read): a partition
that differs is checked again, up to ``attempts`` times, and only what persists is reported.

A retired activity's partition is expected to hold nothing but its marker (at or above the ledger's mark): no
difference to report, nothing to repair in Redis; the ledger's record of the retirement is made to follow the
marker when a crash left them apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field

import asyncpg

from gateway import clock
from gateway.catalog import store
from gateway.catalog.admin import AdminService
from gateway.catalog.rebuild import ActivityState
from gateway.catalog.retirement import record_live, record_retired
from gateway.claim.service import ClaimService
from gateway.codes.batches import void_batch
from gateway.keys import ActivityKeys, KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.runner import RedisClient, ScriptRunner
from worker import sink
from worker.recovery.compare import Difference, compare
from worker.recovery.drain import drain_partition
from worker.recovery.ledger_state import (
    PartitionState,
    build,
    partitions,
)

BATCH_GRACE_SECONDS = 300  # a batch recorded longer ago than this and still not ready is half-done
REPAIR_OPERATOR = "reconcile"


@dataclass
class Report:
    checked: int = 0
    differences: list[Difference] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    drained: int = 0

    def lines(self) -> list[str]:
        out = [
            f"partitions checked: {self.checked}; stream entries applied to the ledger (again if already there):"
            f" {self.drained}"
        ]
        out += [f"repaired: {line}" for line in self.repaired]
        out += [f"difference: {d.line()}" for d in self.differences]
        out.append(f"differences: {len(self.differences)}")
        return out


@dataclass
class Reconciler:
    control: RedisClient
    runner: ScriptRunner  # the gateway's fenced runner: repairs wait while Redis is fenced
    pool: asyncpg.Pool
    keyspace: KeySpace
    idempotency_ttl: int = 90_000
    attempts: int = 3
    settle_seconds: float = 0.3
    batch_grace: int = BATCH_GRACE_SECONDS

    async def run(self, named: list[str] | None = None) -> Report:
        report = Report()
        kinds = await partitions(self.pool, named)
        for partition in kinds:  # every stream first: a claim's deliver may wait in its wallet's stream
            report.drained += (await drain_partition(self.control, self.pool, partition)).entries
        async with self.pool.acquire() as conn:
            await sink.release_held(conn)  # what waited for a claim a drain just committed
        for partition, kind in kinds.items():
            report.checked += 1
            for attempt in range(self.attempts):
                if attempt:
                    await asyncio.sleep(self.settle_seconds)
                    await drain_partition(self.control, self.pool, partition)
                state = await build(self.pool, partition, kind, int(clock.now()))
                repaired = await self._repair(state)
                if repaired:
                    report.repaired += repaired
                    await drain_partition(self.control, self.pool, partition)
                    state = await build(self.pool, partition, kind, int(clock.now()))
                found = await compare(self.control, state)
                if not found or attempt == self.attempts - 1:
                    report.differences += found
                    break
        return report

    async def _repair(self, state: PartitionState) -> list[str]:
        if not isinstance(state, ActivityState):
            return []
        keys = ActivityKeys(state.partition)
        done = await self._follow_marker(state, keys)
        if await self.control.exists(keys.retired) and not await self.control.exists(keys.config):
            return done  # retired: nothing to mirror, deliver or void in Redis
        if state.defined and state.mark == 0 and not await self.control.exists(keys.config, keys.seq):
            activity = await store.get_activity(self.pool, state.activity_id)
            assert activity is not None
            templates = await store.templates_by_id(self.pool, [item.template_id for item in activity.pack])
            admin = AdminService(self.pool, self.runner, self.keyspace)
            done += await _attempt(
                f"{state.partition} definition mirrored into Redis",
                admin.mirror_activity(activity, templates, activity.created_by, int(clock.now())),
            )
        if state.undelivered:
            # A deliver already in its wallet's stream is not half-done: drain those wallets, then look again.
            for wallet in sorted({self.keyspace.wallet(c.user_id).tag for c in state.undelivered}):
                await drain_partition(self.control, self.pool, wallet)
            state = await build(self.pool, state.partition, "activity", int(clock.now()))
            assert isinstance(state, ActivityState)
        claims = ClaimService(self.runner, self.keyspace, self.idempotency_ttl)
        for claim in state.undelivered:
            done += await _attempt(
                f"{state.partition} claim {claim.claim_id} delivered to {claim.user_id}",
                claims.deliver(claim.user_id, claim.activity_id, claim.answer, now=int(clock.now())),
            )
        for wallet in sorted({self.keyspace.wallet(c.user_id).tag for c in state.undelivered}):
            await drain_partition(self.control, self.pool, wallet)  # the new deliveries, into the ledger
        done += await self._void_half_done_batches(state)
        return done

    async def _follow_marker(self, state: ActivityState, keys: ActivityKeys) -> list[str]:
        """The ledger's record of a retirement follows the marker in Redis (a crash between the retire script
        and its record, or a revival cut short, leaves them apart)."""
        marker, config = await self.control.get(keys.retired), await self.control.exists(keys.config)
        now = int(clock.now())
        if marker is not None and not config and not state.retired:
            async with self.pool.acquire() as conn:
                await record_retired(conn, state.activity_id, keys.events, now)
            return [
                f"{state.partition} recorded as retired in the ledger (retired in Redis at seq {int(marker)})"
            ]
        if marker is None and config and state.retired:
            await record_live(self.pool, state.activity_id, keys.events)
            return [f"{state.partition} recorded as live in the ledger (its partition is in Redis)"]
        return []

    async def _void_half_done_batches(self, state: ActivityState) -> list[str]:
        """Void each batch left ``recorded`` past the grace, and finish voids a crash cut short."""
        now = int(clock.now())
        stale = await self.pool.fetch(
            "UPDATE code_batches SET state = 'void' WHERE activity_id = $1 AND state = 'recorded'"
            " AND created_at < $2 RETURNING batch_id, count, created_at",
            state.activity_id,
            now - self.batch_grace,
        )
        # Claimed now, or earlier by a run that stopped before Redis gave the packs back: void in Postgres, its
        # reservation in Redis not yet voided (the ledger drained just before, so ``voided`` is current).
        claimed = {row["batch_id"] for row in stale}
        cut_short = await self.pool.fetch(
            "SELECT batch_id, count, created_at FROM code_batches WHERE activity_id = $1 AND state = 'void'"
            " AND reserved AND NOT voided AND NOT (batch_id = ANY($2::text[]))",
            state.activity_id,
            sorted(claimed),
        )
        done: list[str] = []
        buckets: set[str] = set()
        for row in sorted([*stale, *cut_short], key=lambda r: str(r["batch_id"])):
            what = f"{state.partition} code batch {row['batch_id']} voided (recorded at {row['created_at']})"
            done += await self._void_batch(state, row["batch_id"], int(row["count"]), what, buckets)
        for bucket in sorted(buckets):
            await drain_partition(self.control, self.pool, bucket)  # the drops, into the ledger
        return done

    async def _void_batch(
        self, state: ActivityState, batch_id: str, count: int, what: str, buckets: set[str]
    ) -> list[str]:
        """Drop the batch's codes from their buckets, then give its packs back; both idempotent."""
        now = int(clock.now())
        hashes = [
            row["code_hash"]
            for row in await self.pool.fetch(
                "SELECT code_hash FROM codes WHERE batch_id = $1 ORDER BY code_hash", batch_id
            )
        ]
        try:
            dropped, reply = await void_batch(
                self.runner,
                self.keyspace,
                state.activity_id,
                batch_id,
                count,
                hashes,
                operator=REPAIR_OPERATOR,
                now=now,
            )
            buckets.update(self.keyspace.code(h).tag for h in hashes)
        except DomainError as refused:  # fenced or overloaded: left for the next run (the batch stays void)
            return [f"{what}: NOT DONE ({refused.message})"]
        outcome = Outcome(reply[0])
        if outcome not in (Outcome.OK, Outcome.REPLAY):
            return [f"{what}: NOT DONE (code_batch answered {outcome.value})"]
        return [f"{what}: stock left {reply[1]}, {dropped} code(s) dropped"]


async def _attempt(what: str, repair: Awaitable[Outcome]) -> list[str]:
    """Await a repair; report it only when it did something (a replay means another hand had done it)."""
    try:
        outcome = await repair
    except DomainError as refused:  # fenced or overloaded: reported, left for the next run
        return [f"{what}: NOT DONE ({refused.message})"]
    return [what] if outcome is Outcome.OK else []
