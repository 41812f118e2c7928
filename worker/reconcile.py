"""Reconcile: compare, per partition, what Redis holds with what the ledger says it should hold, report every
difference, and finish what a crash left half-done.

Per partition it first drains the stream into the ledger (idempotent), then compares: seq with the ledger's
mark; an activity's config and status, stock left and taken, per-user and per-device counts, allow-list and
idempotency records; a wallet bucket's coupons (every field of each) and each user's index; the blocklist.
It also checks the ledger itself: no activity's claims hold a unit beyond the stock ever made available.

Half-done work it finishes: a definition in Postgres whose mirror never reached Redis (the partition holds
nothing yet) is mirrored; a claim whose coupons the ledger lacks is delivered (idempotent). Code batches join
when codes exist.

Under live traffic a partition can differ for an instant (a claim between the drain and the read): a partition
that differs is checked again, up to ``attempts`` times, and only what persists is reported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from gateway import store
from gateway.admin import AdminService
from gateway.claims import ClaimService
from gateway.keys import BLOCKLIST, ActivityKeys, KeySpace, Partition, WalletKeys
from gateway.outcomes import DomainError, Outcome
from gateway.redis_client import RedisClient, ScriptRunner
from worker.drain import drain_partition
from worker.ledger_state import (
    ActivityState,
    BlocklistState,
    PartitionState,
    WalletState,
    build,
    partitions,
)


@dataclass(frozen=True)
class Difference:
    partition: str
    what: str  # seq, config, user_count, device_count, allow, record, coupon, index, blocklist, ledger
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
    for key in state.records:
        pipe.get(key)
    config, users, devices, allow, *records = await pipe.execute()
    found = _compare_map(
        state.partition, "config", keys.config, config, state.config if state.defined else {}
    )
    found += _compare_map(state.partition, "user_count", keys.user_counts, users, state.users)
    found += _compare_map(state.partition, "device_count", keys.device_counts, devices, state.devices)
    if set(allow) != state.allow:
        found.append(
            Difference(state.partition, "allow", keys.allow_list, "", sorted(allow), sorted(state.allow))
        )
    for (key, (value, _)), held in zip(state.records.items(), records, strict=True):
        if held != value:
            found.append(Difference(state.partition, "record", key, "", held, value))
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
    for user in users:
        pipe.zrange(keys.user_index(user), 0, -1)
    raw, *indexes = await pipe.execute()
    found: list[Difference] = []
    held = {cid: msgspec.json.decode(record) for cid, record in raw.items()}
    for cid in sorted(set(held) | set(state.coupons)):
        mine, theirs = held.get(cid), state.coupons.get(cid)
        if mine is None or theirs is None:
            found.append(Difference(state.partition, "coupon", keys.coupons, cid, mine, theirs))
            continue
        found += _compare_map(state.partition, "coupon", f"{keys.coupons} {cid}", mine, theirs)
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


async def compare(client: RedisClient, state: PartitionState) -> list[Difference]:
    found = await _seq(client, state)
    if isinstance(state, ActivityState):
        found += await _activity(client, state)
    elif isinstance(state, WalletState):
        found += await _wallet(client, state)
    elif isinstance(state, BlocklistState):
        found += await _blocklist(client, state)
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

    async def run(self, named: list[str] | None = None) -> Report:
        report = Report()
        kinds = await partitions(self.pool, named)
        for partition in kinds:  # every stream first: a claim's deliver may wait in its wallet's stream
            report.drained += (await drain_partition(self.control, self.pool, partition)).entries
        for partition, kind in kinds.items():
            report.checked += 1
            for attempt in range(self.attempts):
                if attempt:
                    await asyncio.sleep(self.settle_seconds)
                    await drain_partition(self.control, self.pool, partition)
                state = await build(self.pool, partition, kind, int(time.time()))
                repaired = await self._repair(state)
                if repaired:
                    report.repaired += repaired
                    await drain_partition(self.control, self.pool, partition)
                    state = await build(self.pool, partition, kind, int(time.time()))
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
                admin.mirror_activity(activity, templates, activity.created_by, int(time.time())),
            )
        if state.undelivered:
            # A deliver already in its wallet's stream is not half-done: drain those wallets, then look again.
            for wallet in sorted({self.keyspace.wallet(c.user_id).tag for c in state.undelivered}):
                await drain_partition(self.control, self.pool, wallet)
            state = await build(self.pool, state.partition, "activity", int(time.time()))
            assert isinstance(state, ActivityState)
        claims = ClaimService(self.runner, self.keyspace, self.idempotency_ttl)
        for claim in state.undelivered:
            done += await _attempt(
                f"{state.partition} claim {claim.claim_id} delivered to {claim.user_id}",
                claims.deliver(claim.user_id, claim.activity_id, claim.answer, now=int(time.time())),
            )
        for wallet in sorted({self.keyspace.wallet(c.user_id).tag for c in state.undelivered}):
            await drain_partition(self.control, self.pool, wallet)  # the new deliveries, into the ledger
        return done


async def _attempt(what: str, repair: Awaitable[Outcome]) -> list[str]:
    """Await a repair; report it only when it did something (a replay means another hand had done it)."""
    try:
        outcome = await repair
    except DomainError as refused:  # fenced or overloaded: reported, left for the next run
        return [f"{what}: NOT DONE ({refused.message})"]
    return [what] if outcome is Outcome.OK else []
