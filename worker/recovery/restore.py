"""Restore: rebuild Redis state from the ledger, per partition (design.md, "Redis restarts, rollbacks").

For each partition: drain its stream into the ledger (so the ledger holds everything Redis recorded), rebuild
its state from the ledger (``ledger_state``), write it with the ``restore_*`` scripts, then ``restore_finish``
levels its seq at or above the ledger's mark and appends a ``restored`` event. Last, claims whose coupons the
ledger lacks are delivered (the deliver script, idempotent). The fence of every gateway opens by itself once
no partition is behind. Failed code attempts (``{w:n}:fails:*``) are rate-limit state, not ledger state: a
restore starts them afresh.

Restore writes through its own script runner on the control connection: the gateways' runners stay fenced
while it works. By default it rebuilds a partition only when Redis is behind the ledger there, or holds
nothing of a partition the ledger has state for; ``force`` rebuilds it anyway (stop the gateways first: a
claim racing a rebuild can be overwritten).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from gateway import clock
from gateway.claim.service import ClaimService
from gateway.ids import new_id
from gateway.keys import BLOCKLIST, ActivityKeys, CodeKeys, KeySpace, Partition, WalletKeys
from gateway.scripts.calls import restore as calls
from gateway.scripts.fence import Fence
from gateway.scripts.ledger_check import partitions_behind
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import RedisClient, ScriptRunner
from worker import sink
from worker.recovery.compare import indexed_users
from worker.recovery.drain import drain_partition
from worker.recovery.ledger_state import (
    ActivityState,
    BareState,
    BlocklistState,
    CodeState,
    PartitionState,
    build,
    encode,
    mark_of,
    partitions,
)
from worker.recovery.wallet_state import WalletState

PART_SIZE = 2000  # fields per script call: large partitions go in parts, each one short for Redis


@dataclass
class Restored:
    partition: str
    action: str  # "restored" or why it was left alone
    drained: int = 0
    seq: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def restore_runner(control: RedisClient) -> ScriptRunner:
    """Scripts on the control connection, outside the fence the gateways keep closed meanwhile."""
    return ScriptRunner(control, load_scripts(), Fence(open_=True))


def _parts(flat: list[str], size: int = PART_SIZE) -> list[list[str]]:
    return [flat[i : i + size] for i in range(0, len(flat), size)] or [[]]


def _pairs(mapping: dict[str, str]) -> list[str]:
    return [item for pair in sorted(mapping.items()) for item in pair]


def _scored(mapping: dict[str, int]) -> list[str]:
    """A zset's members and scores, flat: ``[member, score, ...]``."""
    return [item for member, score in sorted(mapping.items()) for item in (member, str(score))]


async def _needs_restore(control: RedisClient, state: PartitionState) -> str | None:
    """None when the partition should be rebuilt, else why not."""
    seq = await control.get(Partition(state.partition).seq)
    if seq is not None and int(seq) >= state.mark:
        return "level with the ledger (use --force to rebuild anyway)"
    if seq is None and state.mark == 0 and not _has_state(state):
        return "nothing to restore"
    return None


def _has_state(state: PartitionState) -> bool:
    if isinstance(state, ActivityState):
        return state.defined
    if isinstance(state, WalletState):
        return bool(state.coupons or state.orders or state.records)
    if isinstance(state, BlocklistState):
        return bool(state.entries)
    if isinstance(state, CodeState):
        return bool(state.codes or state.batches or state.counters)
    return False


def _in_parts(**lists: list[str]) -> list[dict[str, list[str]]]:
    """Payloads of at most PART_SIZE items per list, the lists side by side: part i holds each one's i-th part."""
    parts = {name: _parts(flat) for name, flat in lists.items()}
    count = max(len(p) for p in parts.values())
    return [{name: p[i] if i < len(p) else [] for name, p in parts.items()} for i in range(count)]


def _nonzero(**counts: int) -> dict[str, int]:
    return {name: n for name, n in counts.items() if n}


async def _write_records(runner: ScriptRunner, records: dict[str, tuple[str, int]]) -> None:
    now = int(clock.now())
    for key, (value, expires_at) in records.items():
        if expires_at > now:
            await calls.restore_record(runner, calls.RestoreRecordKeys(key), value=value, expires=expires_at)


async def _write_activity(runner: ScriptRunner, state: ActivityState) -> dict[str, int]:
    keys = calls.RestoreActivityKeys.of(ActivityKeys(state.partition))
    payloads = _in_parts(
        users=_pairs(state.users),
        devices=_pairs(state.devices),
        allow=sorted(state.allow),
        batches=_pairs(state.batches),
    )
    for i, part in enumerate(payloads):
        payload: dict[str, object] = dict(part)
        if i == 0:
            payload["config"] = _pairs(state.config) if state.defined else []
        await calls.restore_activity(
            runner, keys, step="reset" if i == 0 else "more", payload=encode(payload)
        )
    await _write_records(runner, state.records)
    return {
        "users": len(state.users),
        "devices": len(state.devices),
        "records": len(state.records),
        **_nonzero(batches=len(state.batches)),
    }


async def _write_wallet(runner: ScriptRunner, state: WalletState) -> dict[str, int]:
    wallet = WalletKeys(state.partition)
    bucket = calls.RestoreWalletKeys.of(wallet)
    await calls.restore_wallet(runner, bucket, step="reset", payload="[]")
    for user in sorted(await indexed_users(runner.client, state.partition) - set(state.indexes)):
        await calls.restore_wallet(
            runner, calls.RestoreWalletKeys.of(wallet, user), step="drop", payload="[]"
        )
    for user, coupon_ids in sorted(state.indexes.items()):
        records = [item for cid in coupon_ids for item in (cid, encode(state.coupons[cid]))]
        user_keys = calls.RestoreWalletKeys.of(wallet, user)
        await calls.restore_wallet(runner, user_keys, step="user", payload=encode(records))
    if state.orders or state.locks or state.counters or state.expiring or state.finished or state.done:
        for payload in _in_parts(
            orders=[item for name in sorted(state.orders) for item in (name, encode(state.orders[name]))],
            locks=_scored(state.locks),
            counters=_pairs(state.counters),
            expiring=_scored(state.expiring),
            finished=_scored(state.finished),
            done=_scored(state.done),
        ):
            await calls.restore_wallet(runner, bucket, step="checkout", payload=encode(payload))
    await _write_records(runner, state.records)
    return {
        "coupons": len(state.coupons),
        "users": len(state.indexes),
        **_nonzero(
            orders=len(state.orders),
            locks=len(state.locks),
            records=len(state.records),
            finished=len(state.finished),
        ),
    }


async def _write_codes(runner: ScriptRunner, state: CodeState) -> dict[str, int]:
    keys = calls.RestoreCodesKeys.of(CodeKeys(state.partition))
    payloads = _in_parts(
        codes=[item for code in sorted(state.codes) for item in (code, encode(state.codes[code]))],
        batches=_pairs(state.batches),
        counters=_pairs(state.counters),
    )
    for i, payload in enumerate(payloads):
        await calls.restore_codes(runner, keys, step="reset" if i == 0 else "more", payload=encode(payload))
    return {"codes": len(state.codes), "batches": len(state.batches)}


async def _write_blocklist(runner: ScriptRunner, state: BlocklistState) -> dict[str, int]:
    keys = calls.RestoreBlocklistKeys.of(BLOCKLIST)
    entries = _parts([item for name in sorted(state.entries) for item in (name, encode(state.entries[name]))])
    users, devices = _parts(sorted(state.users)), _parts(sorted(state.devices))
    for i in range(max(len(entries), len(users), len(devices))):
        payload = {
            "users": users[i] if i < len(users) else [],
            "devices": devices[i] if i < len(devices) else [],
            "entries": entries[i] if i < len(entries) else [],
        }
        await calls.restore_blocklist(
            runner, keys, step="reset" if i == 0 else "more", payload=encode(payload)
        )
    return {"entries": len(state.entries)}


async def _write(runner: ScriptRunner, state: PartitionState) -> dict[str, int]:
    if isinstance(state, ActivityState):
        return await _write_activity(runner, state)
    if isinstance(state, WalletState):
        return await _write_wallet(runner, state)
    if isinstance(state, BlocklistState):
        return await _write_blocklist(runner, state)
    if isinstance(state, CodeState):
        return await _write_codes(runner, state)
    assert isinstance(state, BareState)
    return {}


async def restore(
    control: RedisClient,
    pool: asyncpg.Pool,
    keyspace: KeySpace,
    *,
    named: list[str] | None = None,
    force: bool = False,
    operator: str = "restore",
    idempotency_ttl: int = 90_000,
) -> list[Restored]:
    runner = restore_runner(control)
    await runner.load_all()
    done: list[Restored] = []
    undelivered = []
    kinds = await partitions(pool, named)
    # Activities before wallets does not matter for correctness; delivering the undelivered comes last, after
    # every wallet it may write to is rebuilt.
    # Every stream into the ledger first, then what waited there for a claim one of them brought: a wallet is
    # rebuilt only once each delivery whose claim the ledger holds is among its coupons.
    drained = {partition: await drain_partition(control, pool, partition) for partition in kinds}
    async with pool.acquire() as conn:
        await sink.release_held(conn)
    for partition, kind in kinds.items():
        now = int(clock.now())
        state = await build(pool, partition, kind, now)
        why_not = None if force else await _needs_restore(control, state)
        if why_not is not None:
            done.append(Restored(partition, why_not, drained=drained[partition].entries))
            continue
        counts = await _write(runner, state)
        mark = await mark_of(pool, partition)  # the drain may have raised it
        reply = await calls.restore_finish(
            runner,
            calls.RestoreFinishKeys.of(Partition(partition)),
            now=now,
            event_id=new_id(),
            operator=operator,
            at_least=mark,
            summary=encode({"at_least": mark, **counts}),
        )
        done.append(Restored(partition, "restored", drained[partition].entries, int(reply[1]), counts))
        if isinstance(state, ActivityState):
            undelivered.extend(state.undelivered)
    # Deliver only into wallets level with the ledger: a deliver bumps the wallet's seq, and must never lift a
    # wallet that is still behind over its mark without its restore (the fence would open on a wallet that lacks
    # coupons). Those are delivered by that wallet's restore or reconcile.
    claims = ClaimService(runner, keyspace, idempotency_ttl)
    now = int(clock.now())
    behind = set(await partitions_behind(control, pool))
    for claim in undelivered:
        if keyspace.wallet(claim.user_id).tag not in behind:
            await claims.deliver(claim.user_id, claim.activity_id, claim.answer, now=now)
    return done
