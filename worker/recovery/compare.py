"""Compare one partition: what Redis holds against what the ledger says it should hold, field by field (JSON
records decoded; a counter missing and one at "0" the same), and the ledger's own checks. A retired activity's
partition is expected to hold nothing but its marker.

A wallet's expiry indexes hold times only the sweep saw (when it looked, when it found a lock gone), so they are
held to what the ledger can tell: each coupon in exactly one of them, in ``finished`` only once final (a redeemed
one past its validity may still wait in ``expiring`` for the sweep), ``expiring`` at its validity's end or, past
it, later (put back while a lock held it), ``finished`` between its validity's end and now."""

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
)
from worker.recovery.wallet_state import WalletState


@dataclass(frozen=True)
class Difference:
    partition: str
    # seq, config, user_count, device_count, allow, record, batch, coupon, index, order, finished_order, lock,
    # counter, expiry, code, blocklist, ledger, retired (a retired partition holding more than its marker)
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


# Seconds a time the sweeping worker wrote may lie ahead of this process's clock (each keeps within the fence's
# skew bound of Redis's).
CLOCK_SLACK = 2
Placed = tuple[str, int] | None  # (the expiry index holding a coupon, its score), or nowhere


def _expiry_fits(state: WalletState, coupon_id: str, redis: Placed, keys: WalletKeys) -> bool:
    record = state.coupons.get(coupon_id)
    if record is None or redis is None:
        return record is None and redis is None
    key, score = redis
    until, past = int(record["valid_until"]), int(record["valid_until"]) <= state.now + CLOCK_SLACK
    if key == keys.finished:
        return coupon_id in state.finished and until <= score <= state.now + CLOCK_SLACK
    waiting = coupon_id in state.expiring or record["status"] == "redeemed"  # the sweep has yet to come
    return key == keys.expiring and waiting and (score == until or (past and score > until))


def _compare_expiry(
    state: WalletState, keys: WalletKeys, expiring: dict[str, int], finished: dict[str, int]
) -> list[Difference]:
    """Each coupon in one expiry index, as the ledger allows (the module's docstring)."""
    found = []
    for coupon_id in sorted(set(state.coupons) | set(expiring) | set(finished)):
        indexes = ((keys.expiring, expiring), (keys.finished, finished))
        held = [(key, index[coupon_id]) for key, index in indexes if coupon_id in index]
        redis: Placed = held[0] if len(held) == 1 else None
        if len(held) < 2 and _expiry_fits(state, coupon_id, redis, keys):
            continue
        ledger: Placed = None
        if coupon_id in state.finished:
            ledger = (keys.finished, state.finished[coupon_id])
        elif coupon_id in state.expiring:
            ledger = (keys.expiring, state.expiring[coupon_id])
        key = held[0][0] if held else ledger[0] if ledger else keys.expiring
        shown = held[0] if len(held) == 1 else held or None
        found.append(Difference(state.partition, "expiry", key, coupon_id, shown, ledger))
    return found


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
    pipe.zrange(keys.expiring, 0, -1, withscores=True)
    pipe.zrange(keys.finished, 0, -1, withscores=True)
    pipe.zrange(keys.finished_orders, 0, -1, withscores=True)
    for key in state.records:
        pipe.get(key)
    for user in users:
        pipe.zrange(keys.user_index(user), 0, -1)
    raw, orders, locks, counters, expiring, finished, done, *rest = await pipe.execute()
    records, indexes = rest[: len(state.records)], rest[len(state.records) :]
    found = _compare_records(state.partition, "coupon", keys.coupons, raw, state.coupons)
    found += _compare_records(state.partition, "order", keys.orders, orders, state.orders)
    found += _compare_map(
        state.partition, "lock", keys.locks, {cid: int(until) for cid, until in locks}, state.locks
    )
    found += _compare_map(
        state.partition, "finished_order", keys.finished_orders, {f: int(at) for f, at in done}, state.done
    )
    found += _compare_counters(state.partition, keys.counters, counters, state.counters)
    found += _compare_expiry(
        state, keys, {cid: int(at) for cid, at in expiring}, {cid: int(at) for cid, at in finished}
    )
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
