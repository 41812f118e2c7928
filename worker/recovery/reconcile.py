"""Reconcile: compare, per partition, what Redis holds with what the ledger says it should hold, report every
difference, and finish what a crash left half-done.

Per partition it first drains the stream into the ledger (idempotent), then compares: seq with the ledger's
mark; an activity's config and status, stock left and taken, per-user and per-device counts, allow-list,
idempotency records and code batches; a wallet bucket's coupons (every field of each), each user's index, the
orders (every field), the locks, the checkout counters and code-redeem idempotency records; a code bucket's codes
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
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from gateway import clock
from gateway.catalog import store
from gateway.catalog.admin import AdminService
from gateway.claim.service import ClaimService
from gateway.codes.service import void_batch
from gateway.keys import BLOCKLIST, ActivityKeys, CodeKeys, KeySpace, Partition, WalletKeys
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.runner import RedisClient, ScriptRunner
from worker import sink
from worker.recovery.drain import drain_partition
from worker.recovery.ledger_state import (
    ActivityState,
    BlocklistState,
    CodeState,
    PartitionState,
    WalletState,
    build,
    partitions,
)

BATCH_GRACE_SECONDS = 300  # a batch recorded longer ago than this and still not ready is half-done
REPAIR_OPERATOR = "reconcile"


@dataclass(frozen=True)
class Difference:
    partition: str
    # seq, config, user_count, device_count, allow, record, batch, coupon, index, order, lock, counter, code,
    # blocklist, ledger
    what: str
    key: str
    field: str
    redis: object
    ledger: object

    def line(self) -> str:
        where = f"{self.key}[{self.field}]" if self.field else self.key
        return f"{self.partition} {self.what}: {where} redis={self.redis!r} ledger={self.ledger!r}"


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


def _compare_map(
    partition: str, what: str, key: str, redis: dict[str, Any], ledger: dict[str, Any]
) -> list[Difference]:
    return [
        Difference(partition, what, key, name, redis.get(name), ledger.get(name))
        for name in sorted(set(redis) | set(ledger))
        if redis.get(name) != ledger.get(name)
    ]


def _compare_records(
    partition: str, what: str, key: str, redis: dict[str, bytes | str], ledger: dict[str, dict[str, Any]]
) -> list[Difference]:
    """A hash of JSON records: one difference for a record present on one side only, else one per field."""
    found: list[Difference] = []
    held = {name: msgspec.json.decode(raw) for name, raw in redis.items()}
    for name in sorted(set(held) | set(ledger)):
        mine, theirs = held.get(name), ledger.get(name)
        if mine is None or theirs is None or not isinstance(mine, dict):
            if mine != theirs:
                found.append(Difference(partition, what, key, name, mine, theirs))
            continue
        found += _compare_map(partition, what, f"{key} {name}", mine, theirs)
    return found


def _compare_counters(
    partition: str, key: str, redis: dict[str, str], ledger: dict[str, str]
) -> list[Difference]:
    """Counters the scripts move with HINCRBY: a field missing and one at "0" say the same."""
    return [
        Difference(partition, "counter", key, name, redis.get(name), ledger.get(name))
        for name in sorted(set(redis) | set(ledger))
        if int(redis.get(name) or 0) != int(ledger.get(name) or 0)
    ]


def _compare_idempotency(
    partition: str, held: list[str | None], records: dict[str, tuple[str, int]]
) -> list[Difference]:
    return [
        Difference(partition, "record", key, "", value, expected)
        for (key, (expected, _)), value in zip(records.items(), held, strict=True)
        if value != expected
    ]


async def _seq(client: RedisClient, state: PartitionState) -> list[Difference]:
    raw = await client.get(Partition(state.partition).seq)
    seq = int(raw or 0)
    if seq < state.mark:
        return [Difference(state.partition, "seq", Partition(state.partition).seq, "behind", seq, state.mark)]
    if seq > state.mark:
        # After the drain every event Redis recorded is in the ledger; a higher seq means events that never got
        # there (dead letters, conflicts).
        return [Difference(state.partition, "seq", Partition(state.partition).seq, "ahead", seq, state.mark)]
    return []


async def _activity(client: RedisClient, state: ActivityState) -> list[Difference]:
    keys = ActivityKeys(state.partition)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.config)
    pipe.hgetall(keys.user_counts)
    pipe.hgetall(keys.device_counts)
    pipe.smembers(keys.allow_list)
    pipe.hgetall(keys.code_batches)
    for key in state.records:
        pipe.get(key)
    config, users, devices, allow, batches, *records = await pipe.execute()
    found = _compare_map(
        state.partition, "config", keys.config, config, state.config if state.defined else {}
    )
    found += _compare_map(state.partition, "user_count", keys.user_counts, users, state.users)
    found += _compare_map(state.partition, "device_count", keys.device_counts, devices, state.devices)
    if set(allow) != state.allow:
        found.append(
            Difference(state.partition, "allow", keys.allow_list, "", sorted(allow), sorted(state.allow))
        )
    found += _compare_map(state.partition, "batch", keys.code_batches, batches, state.batches)
    found += _compare_idempotency(state.partition, records, state.records)
    if state.highest_unit > state.ever_stocked:
        found.append(
            Difference(
                state.partition,
                "ledger",
                "claims",
                "units above stock ever made available",
                state.highest_unit,
                state.ever_stocked,
            )
        )
    return found


async def indexed_users(client: RedisClient, partition: str) -> set[str]:
    """Users the bucket holds an index for, whatever the ledger says (a SCAN of the bucket's pattern)."""
    keys = WalletKeys(partition)
    return {
        keys.user_of_index(str(key))
        async for key in client.scan_iter(match=keys.user_index_pattern, count=1000)
    }


async def _wallet(client: RedisClient, state: WalletState) -> list[Difference]:
    keys = WalletKeys(state.partition)
    users = sorted(set(state.indexes) | await indexed_users(client, state.partition))
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.coupons)
    pipe.hgetall(keys.orders)
    pipe.zrange(keys.locks, 0, -1, withscores=True)
    pipe.hgetall(keys.counters)
    for key in state.records:
        pipe.get(key)
    for user in users:
        pipe.zrange(keys.user_index(user), 0, -1)
    raw, orders, locks, counters, *rest = await pipe.execute()
    records, indexes = rest[: len(state.records)], rest[len(state.records) :]
    found = _compare_records(state.partition, "coupon", keys.coupons, raw, state.coupons)
    found += _compare_records(state.partition, "order", keys.orders, orders, state.orders)
    found += _compare_map(
        state.partition, "lock", keys.locks, {cid: int(until) for cid, until in locks}, state.locks
    )
    found += _compare_counters(state.partition, keys.counters, counters, state.counters)
    found += _compare_idempotency(state.partition, records, state.records)
    found += [
        Difference(state.partition, "ledger", "coupons", coupon_id, "coupon without its claim", claim_id)
        for coupon_id, claim_id in state.unclaimed.items()
    ]
    found += [
        Difference(state.partition, "ledger", "held_entries", entry, "held for a claim it lacks", claim_id)
        for entry, claim_id in state.waiting.items()
    ]
    for user, index in zip(users, indexes, strict=True):
        expected = state.indexes.get(user)
        if sorted(index) != (expected or []):
            found.append(
                Difference(
                    state.partition, "index", keys.user_index(user), "", sorted(index) or None, expected
                )
            )
    return found


async def _blocklist(client: RedisClient, state: BlocklistState) -> list[Difference]:
    keys = BLOCKLIST
    pipe = client.pipeline(transaction=False)
    pipe.smembers(keys.users)
    pipe.smembers(keys.devices)
    pipe.hgetall(keys.entries)
    users, devices, entries = await pipe.execute()
    found: list[Difference] = []
    if set(users) != state.users:
        found.append(
            Difference(state.partition, "blocklist", keys.users, "", sorted(users), sorted(state.users))
        )
    if set(devices) != state.devices:
        found.append(
            Difference(state.partition, "blocklist", keys.devices, "", sorted(devices), sorted(state.devices))
        )
    decoded = {name: msgspec.json.decode(value) for name, value in entries.items()}
    found += _compare_map(state.partition, "blocklist", keys.entries, decoded, state.entries)
    return found


async def _codes(client: RedisClient, state: CodeState) -> list[Difference]:
    keys = CodeKeys(state.partition)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.codes)
    pipe.hgetall(keys.batches)
    pipe.hgetall(keys.counters)
    codes, batches, counters = await pipe.execute()
    # A batch being made (recorded) is not judged yet; a void batch's record stays behind its dropped codes.
    unsettled = set(state.unsettled)
    making = {batch for batch, phase in state.unsettled.items() if phase == "recorded"}
    codes = {h: raw for h, raw in codes.items() if _batch_of(raw) not in making}
    batches = {batch: raw for batch, raw in batches.items() if batch not in unsettled}
    found = _compare_records(state.partition, "code", keys.codes, codes, state.codes)
    ledger_batches = {batch: msgspec.json.decode(record) for batch, record in state.batches.items()}
    found += _compare_records(state.partition, "batch", keys.batches, batches, ledger_batches)
    found += _compare_counters(state.partition, keys.counters, counters, state.counters)
    return found


def _batch_of(raw: bytes | str) -> object:
    record = msgspec.json.decode(raw)
    return record.get("batch") if isinstance(record, dict) else None


async def compare(client: RedisClient, state: PartitionState) -> list[Difference]:
    found = await _seq(client, state)
    if isinstance(state, ActivityState):
        found += await _activity(client, state)
    elif isinstance(state, WalletState):
        found += await _wallet(client, state)
    elif isinstance(state, BlocklistState):
        found += await _blocklist(client, state)
    elif isinstance(state, CodeState):
        found += await _codes(client, state)
    return found


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
        done = []
        keys = ActivityKeys(state.partition)
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
