"""Compare one partition: what Redis holds against what the ledger says it should hold, field by field (JSON
records decoded; a counter missing and one at "0" the same), and the ledger's own checks. A retired activity's
partition is expected to hold nothing but its marker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.catalog.rebuild import ActivityState
from gateway.keys import BLOCKLIST, ActivityKeys, CodeKeys, Partition, WalletKeys
from gateway.scripts.runner import RedisClient
from worker.recovery.ledger_state import (
    BlocklistState,
    CodeState,
    PartitionState,
    WalletState,
)


@dataclass(frozen=True)
class Difference:
    partition: str
    # seq, config, user_count, device_count, allow, record, batch, coupon, index, order, lock, counter, code,
    # blocklist, ledger, retired (a retired partition holding more than its marker)
    what: str
    key: str
    field: str
    redis: object
    ledger: object

    def line(self) -> str:
        where = f"{self.key}[{self.field}]" if self.field else self.key
        return f"{self.partition} {self.what}: {where} redis={self.redis!r} ledger={self.ledger!r}"


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
    return found + _ledger_checks(state)


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


async def _retired(client: RedisClient, state: ActivityState) -> list[Difference] | None:
    """A retired partition (no config, its marker there) is expected to hold nothing but its marker, at or above
    the ledger's mark (its idempotency records expire by themselves); None when the partition is not retired."""
    keys = ActivityKeys(state.partition)
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.retired)
    pipe.hgetall(keys.config)
    pipe.hgetall(keys.user_counts)
    pipe.hgetall(keys.device_counts)
    pipe.smembers(keys.allow_list)
    pipe.hgetall(keys.code_batches)
    pipe.get(keys.seq)
    marker, config, *held = await pipe.execute()
    if marker is None or config:
        return None
    found = []
    if int(marker) < state.mark:
        found.append(Difference(state.partition, "seq", keys.retired, "behind", int(marker), state.mark))
    names = (keys.user_counts, keys.device_counts, keys.allow_list, keys.code_batches, keys.seq)
    found += [
        Difference(state.partition, "retired", key, "", value, None)
        for key, value in zip(names, held, strict=True)
        if value
    ]
    return found + _ledger_checks(state)


def _ledger_checks(state: ActivityState) -> list[Difference]:
    if state.highest_unit > state.ever_stocked:
        return [
            Difference(
                state.partition,
                "ledger",
                "claims",
                "units above stock ever made available",
                state.highest_unit,
                state.ever_stocked,
            )
        ]
    return []


async def compare(client: RedisClient, state: PartitionState) -> list[Difference]:
    if isinstance(state, ActivityState):
        retired = await _retired(client, state)
        if retired is not None:
            return retired
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
