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

A retired activity's partition (its marker in Redis at or above the ledger's mark) is left as it is, ``force`` or
not: it holds nothing but the marker, which the fence reads. One the ledger records as retired whose marker Redis
lost (or that is behind it: changed after a revival) is rebuilt like any other and recorded live again; the retire
sweep retires it again later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from gateway import clock
from gateway.catalog.rebuild import ActivityState, in_parts, mark_of, pairs, parts_of
from gateway.catalog.retirement import record_live
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
    BareState,
    BlocklistState,
    CodeState,
    PartitionState,
    build,
    encode,
    partitions,
)
from worker.recovery.wallet_state import WalletState


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


STILL_RETIRED = "retired (left as it is: nothing but its marker belongs in Redis)"


async def _retired(control: RedisClient, state: PartitionState) -> bool:
    """An activity's partition retired level with the ledger (its marker at or above the mark, no config): it
    stays retired, whatever ``force`` says; a revival brings it back when a late change needs it."""
    if not isinstance(state, ActivityState):
        return False
    keys = ActivityKeys(state.partition)
    marker, config = await control.get(keys.retired), await control.exists(keys.config)
    return marker is not None and int(marker) >= state.mark and not config


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


def _nonzero(**counts: int) -> dict[str, int]:
    return {name: n for name, n in counts.items() if n}


async def _write_records(runner: ScriptRunner, records: dict[str, tuple[str, int]]) -> None:
    now = int(clock.now())
    for key, (value, expires_at) in records.items():
        if expires_at > now:
            await calls.restore_record(runner, calls.RestoreRecordKeys(key), value=value, expires=expires_at)


async def _write_activity(runner: ScriptRunner, state: ActivityState) -> dict[str, int]:
    keys = calls.RestoreActivityKeys.of(ActivityKeys(state.partition))
    payloads = in_parts(
        users=pairs(state.users),
        devices=pairs(state.devices),
        allow=sorted(state.allow),
        batches=pairs(state.batches),
    )
    for i, part in enumerate(payloads):
        payload: dict[str, object] = dict(part)
        if i == 0:
            payload["config"] = pairs(state.config) if state.defined else []
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
        for payload in in_parts(
            orders=[item for name in sorted(state.orders) for item in (name, encode(state.orders[name]))],
            locks=_scored(state.locks),
            counters=pairs(state.counters),
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
    payloads = in_parts(
        codes=[item for code in sorted(state.codes) for item in (code, encode(state.codes[code]))],
        batches=pairs(state.batches),
        counters=pairs(state.counters),
    )
    for i, payload in enumerate(payloads):
        await calls.restore_codes(runner, keys, step="reset" if i == 0 else "more", payload=encode(payload))
    return {"codes": len(state.codes), "batches": len(state.batches)}


async def _write_blocklist(runner: ScriptRunner, state: BlocklistState) -> dict[str, int]:
    keys = calls.RestoreBlocklistKeys.of(BLOCKLIST)
    entries = parts_of(
        [item for name in sorted(state.entries) for item in (name, encode(state.entries[name]))]
    )
    users, devices = parts_of(sorted(state.users)), parts_of(sorted(state.devices))
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
        if await _retired(control, state):
            done.append(Restored(partition, STILL_RETIRED, drained=drained[partition].entries))
            continue
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
            if state.retired:  # rebuilt (its marker lost, or behind it): live again, as the ledger now says
                await record_live(pool, state.activity_id, Partition(partition).events)
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
