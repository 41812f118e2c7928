"""What Redis should hold for a partition, rebuilt from the ledger alone: restore writes it, reconcile compares
Redis with it.

- activity ``{a:X}``: as ``gateway/catalog/rebuild.py`` builds it (a revival of a retired activity writes the same),
  the config from the definition and every operator's change, the counts from ``claims``, the allow-list,
  unexpired idempotency records and code batches; for a retired partition, nothing in Redis but its marker;
- wallet ``{w:n}``: as ``worker/recovery/wallet_state.py`` builds it: every coupon and order the ledger holds for
  the bucket and Redis still should (what the retention sweep archived excepted), each user's index, the locks,
  the per-activity checkout counters, the expiry indexes, the finished orders' index and unexpired code-redeem
  idempotency records;
- blocklist: the entries present;
- code ``{c:n}``: the codes of its ready batches (with the redeemer and answer of each redeemed one), those
  batches' records and the per-activity redeemed counters; a retired batch (``retired_at``: the code retention
  sweep removed it) has neither codes nor record here, though its redeemed codes still count.

Not rebuilt, by design: failed code attempts (``{w:n}:fails:*``, rate-limit state without events).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from gateway.catalog.rebuild import ActivityState, activity_state, mark_of
from gateway.codes.batches import batch_record
from worker.recovery.wallet_state import WalletState, wallet_state

KINDS = ("activity", "wallet", "code", "blocklist")


@dataclass
class CodeState:
    partition: str
    mark: int
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)  # code hash -> record
    batches: dict[str, str] = field(default_factory=dict)  # batch id -> batch_record JSON (ready batches)
    counters: dict[str, str] = field(default_factory=dict)  # activity id -> codes redeemed here
    # Batches with codes here whose state is not ready: what Redis holds of them is not the ledger's to judge
    # (a batch being made; a voided batch's record, which put_codes' drop leaves) beyond the unredeemed codes
    # of a voided one, which must be gone.
    unsettled: dict[str, str] = field(default_factory=dict)  # batch id -> state


@dataclass
class BlocklistState:
    partition: str
    mark: int
    users: set[str] = field(default_factory=set)
    devices: set[str] = field(default_factory=set)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # "user:<id>" -> {added_at, by}


@dataclass
class BareState:
    """A partition with nothing to rebuild but its seq (a kind the ledger knows nothing more of)."""

    partition: str
    mark: int


PartitionState = ActivityState | WalletState | BlocklistState | CodeState | BareState


async def partitions(pool: asyncpg.Pool, named: list[str] | None = None) -> dict[str, str]:
    """Registered partitions (partition -> kind), or the named ones; an unknown name raises ValueError."""
    rows = await pool.fetch("SELECT partition, kind FROM streams ORDER BY kind, partition")
    known = {row["partition"]: row["kind"] for row in rows}
    if named is None:
        return known
    unknown = [name for name in named if name not in known]
    if unknown:
        raise ValueError(f"not a registered partition: {', '.join(unknown)}")
    return {name: known[name] for name in named}


async def build(pool: asyncpg.Pool, partition: str, kind: str, now: int) -> PartitionState:
    mark = await mark_of(pool, partition)
    if kind == "activity":
        return await activity_state(pool, partition, mark, now)
    if kind == "wallet":
        return await wallet_state(pool, partition, mark, now)
    if kind == "blocklist":
        return await _blocklist(pool, partition, mark)
    if kind == "code":
        return await _code(pool, partition, mark)
    return BareState(partition, mark)


async def _code(pool: asyncpg.Pool, partition: str, mark: int) -> CodeState:
    state = CodeState(partition, mark)
    batches = await pool.fetch(
        "SELECT batch_id, activity_id, starts_at, ends_at, pack, state FROM code_batches b"
        " WHERE EXISTS (SELECT 1 FROM codes k WHERE k.batch_id = b.batch_id AND k.partition = $1)"
        " AND retired_at IS NULL ORDER BY batch_id",
        partition,
    )
    for row in batches:
        if row["state"] == "ready":
            state.batches[row["batch_id"]] = batch_record(
                row["activity_id"], row["starts_at"], row["ends_at"], row["pack"]
            )
        else:
            state.unsettled[row["batch_id"]] = row["state"]
    # A ready batch's codes, and any redeemed code (as redeem_code recorded it, the answer from its claim), but
    # a retired batch's.
    for row in await pool.fetch(
        "SELECT k.code_hash, k.batch_id, k.redeemed_by, k.claim_id, k.redeemed_at, b.activity_id, c.answer"
        " FROM codes k JOIN code_batches b USING (batch_id) LEFT JOIN claims c ON c.claim_id = k.claim_id"
        " WHERE k.partition = $1 AND b.retired_at IS NULL AND (b.state = 'ready' OR k.redeemed_by IS NOT NULL)"
        " ORDER BY k.code_hash",
        partition,
    ):
        record: dict[str, Any] = {"batch": row["batch_id"]}
        if row["redeemed_by"] is not None:
            record.update(
                user=row["redeemed_by"],
                claim=row["claim_id"],
                answer=row["answer"],
                activity=row["activity_id"],
                at=row["redeemed_at"],
            )
        state.codes[row["code_hash"]] = record
    # Every code redeemed from the bucket counts, a retired batch's too (the counters stay with the activity).
    state.counters = {
        row["activity_id"]: str(row["n"])
        for row in await pool.fetch(
            "SELECT b.activity_id, count(*) AS n FROM codes k JOIN code_batches b USING (batch_id)"
            " WHERE k.partition = $1 AND k.redeemed_by IS NOT NULL GROUP BY b.activity_id ORDER BY b.activity_id",
            partition,
        )
    }
    return state


async def _blocklist(pool: asyncpg.Pool, partition: str, mark: int) -> BlocklistState:
    state = BlocklistState(partition, mark)
    for row in await pool.fetch(
        "SELECT kind, id, added_at, by FROM blocklist WHERE present ORDER BY kind, id"
    ):
        (state.users if row["kind"] == "user" else state.devices).add(row["id"])
        state.entries[f"{row['kind']}:{row['id']}"] = {"added_at": row["added_at"], "by": row["by"]}
    return state


def encode(value: object) -> str:
    return msgspec.json.encode(value).decode()
