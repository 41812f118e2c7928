"""What Redis should hold for a partition, rebuilt from the ledger alone: restore writes it, reconcile compares
Redis with it.

- activity ``{a:X}``: as ``gateway/catalog/rebuild.py`` builds it (a revival of a retired activity writes the same),
  the config from the definition and every operator's change, the counts from ``claims``, the allow-list,
  unexpired idempotency records and code batches; for a retired partition, nothing in Redis but its marker;
- wallet ``{w:n}``: every coupon the ledger holds for the bucket (with its lock or redemption), each user's
  index, the orders, the locks, the per-activity checkout counters and unexpired code-redeem idempotency
  records;
- blocklist: the entries present;
- code ``{c:n}``: the codes of its ready batches (with the redeemer and answer of each redeemed one), those
  batches' records and the per-activity redeemed counters.

Not rebuilt, by design: failed code attempts (``{w:n}:fails:*``, rate-limit state without events).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from gateway.catalog.rebuild import (
    ActivityState,
    activity_state,
    idempotency_records,
    mark_of,
)
from gateway.codes.batches import batch_record
from gateway.keys import order_field
from worker.recovery.wallet_records import coupon_record, order_record

KINDS = ("activity", "wallet", "code", "blocklist")


@dataclass
class WalletState:
    partition: str
    mark: int
    coupons: dict[str, dict[str, Any]] = field(default_factory=dict)  # coupon id -> record
    indexes: dict[str, list[str]] = field(default_factory=dict)  # user -> coupon ids, sorted
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # "<user>/<order>" -> record
    locks: dict[str, int] = field(default_factory=dict)  # locked coupon id -> its deadline
    counters: dict[str, str] = field(default_factory=dict)  # "<activity>|locked" ... -> figure
    records: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (value, expires at)
    # The ledger's own faults: coupons whose claim it lacks (coupon id -> claim id), and entries held longer
    # than HELD_GRACE_SECONDS for a claim it still lacks ("<stream> <entry id>" -> claim id).
    unclaimed: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)


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


# An entry held this long for its claim is reported: a claim's own event reaches the ledger within seconds
# unless Redis lost it (or the ledger refused it as a conflict).
HELD_GRACE_SECONDS = 60


async def build(pool: asyncpg.Pool, partition: str, kind: str, now: int) -> PartitionState:
    mark = await mark_of(pool, partition)
    if kind == "activity":
        return await activity_state(pool, partition, mark, now)
    if kind == "wallet":
        return await _wallet(pool, partition, mark, now)
    if kind == "blocklist":
        return await _blocklist(pool, partition, mark)
    if kind == "code":
        return await _code(pool, partition, mark)
    return BareState(partition, mark)


async def _wallet(pool: asyncpg.Pool, partition: str, mark: int, now: int) -> WalletState:
    state = WalletState(partition, mark)
    rows = await pool.fetch(
        "SELECT coupon_id, user_id, activity_id, template_id, claim_id, status, version, valid_from, valid_until,"
        " order_id, locked_until, discount FROM coupons WHERE partition = $1 ORDER BY coupon_id",
        partition,
    )
    for row in rows:
        state.coupons[row["coupon_id"]] = coupon_record(row)
        state.indexes.setdefault(row["user_id"], []).append(row["coupon_id"])
        if row["status"] == "locked":
            state.locks[row["coupon_id"]] = int(row["locked_until"])
    state.orders = {
        order_field(row["user_id"], row["order_id"]): order_record(row)
        for row in await pool.fetch(
            "SELECT user_id, order_id, coupon_id, status, discount, split, locked_until, returned, version"
            " FROM orders WHERE partition = $1 ORDER BY user_id, order_id",
            partition,
        )
    }
    state.counters = await _checkout_counters(pool, partition)
    state.records = await idempotency_records(pool, partition, now)
    state.unclaimed = {
        row["coupon_id"]: row["claim_id"]
        for row in await pool.fetch(
            "SELECT c.coupon_id, c.claim_id FROM coupons AS c WHERE c.partition = $1"
            " AND NOT EXISTS (SELECT 1 FROM claims AS k WHERE k.claim_id = c.claim_id) ORDER BY c.coupon_id",
            partition,
        )
    }
    state.waiting = {
        f"{row['stream']} {row['entry_id']}": row["claim_id"]
        for row in await pool.fetch(
            "SELECT stream, entry_id, claim_id FROM held_entries WHERE partition = $1 AND held_at < $2"
            " ORDER BY stream, entry_id",
            partition,
            now - HELD_GRACE_SECONDS,
        )
    }
    return state


async def _checkout_counters(pool: asyncpg.Pool, partition: str) -> dict[str, str]:
    """``<activity>|locked`` = coupons locked, ``|redeemed`` = coupons redeemed, ``|redeemed_value`` = their
    discounts. The scripts only add to a field, so it exists (perhaps "0") once its first change happened:
    ``|locked`` after the activity's first lock in the bucket, the other two after its first redeem."""
    figures = {
        row["activity_id"]: row
        for row in await pool.fetch(
            "SELECT activity_id, count(*) FILTER (WHERE status = 'locked') AS locked,"
            " count(*) FILTER (WHERE status = 'redeemed') AS redeemed,"
            " coalesce(sum(discount) FILTER (WHERE status = 'redeemed'), 0)::bigint AS redeemed_value"
            " FROM coupons WHERE partition = $1 GROUP BY activity_id",
            partition,
        )
    }
    counters: dict[str, str] = {}
    for row in await pool.fetch(
        "SELECT DISTINCT c.activity_id, e.type FROM coupon_events e JOIN coupons c USING (coupon_id)"
        " WHERE c.partition = $1 AND e.type IN ('locked', 'redeemed') ORDER BY 1, 2",
        partition,
    ):
        activity, figure = row["activity_id"], figures[row["activity_id"]]
        if row["type"] == "locked":
            counters[f"{activity}|locked"] = str(figure["locked"])
        else:
            counters[f"{activity}|redeemed"] = str(figure["redeemed"])
            counters[f"{activity}|redeemed_value"] = str(figure["redeemed_value"])
    return counters


async def _code(pool: asyncpg.Pool, partition: str, mark: int) -> CodeState:
    state = CodeState(partition, mark)
    batches = await pool.fetch(
        "SELECT batch_id, activity_id, starts_at, ends_at, pack, state FROM code_batches b"
        " WHERE EXISTS (SELECT 1 FROM codes k WHERE k.batch_id = b.batch_id AND k.partition = $1)"
        " ORDER BY batch_id",
        partition,
    )
    for row in batches:
        if row["state"] == "ready":
            state.batches[row["batch_id"]] = batch_record(
                row["activity_id"], row["starts_at"], row["ends_at"], row["pack"]
            )
        else:
            state.unsettled[row["batch_id"]] = row["state"]
    # A ready batch's codes, and any redeemed code (as redeem_code recorded it, the answer from its claim).
    for row in await pool.fetch(
        "SELECT k.code_hash, k.batch_id, k.redeemed_by, k.claim_id, k.redeemed_at, b.activity_id, c.answer"
        " FROM codes k JOIN code_batches b USING (batch_id) LEFT JOIN claims c ON c.claim_id = k.claim_id"
        " WHERE k.partition = $1 AND (b.state = 'ready' OR k.redeemed_by IS NOT NULL) ORDER BY k.code_hash",
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
            state.counters[row["activity_id"]] = str(int(state.counters.get(row["activity_id"], "0")) + 1)
        state.codes[row["code_hash"]] = record
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
