"""What Redis should hold for a partition, rebuilt from the ledger alone: restore writes it, reconcile compares
Redis with it.

- activity ``{a:X}``: the config from the definition, then every operator's change in seq order (status,
  stock, window, limits, codes reserved); taken and per-user / per-device counts from ``claims``; stock left =
  stock plus the changes minus taken; the allow-list from the definition; unexpired idempotency records; its
  code batches (``code_batches``: packs reserved, or ``void``);
- wallet ``{w:n}``: every coupon the ledger holds for the bucket (with its lock or redemption), each user's
  index, the orders, the locks, the per-activity checkout counters, the expiry indexes (``expiring``: coupons not
  final, at their validity's end; ``finished``: the final ones) and unexpired code-redeem idempotency records;
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

from gateway.catalog import store
from gateway.catalog.campaign import hot_config
from gateway.codes.batches import batch_record
from gateway.events import ActivityStatus, ConfigFields, StockLeft
from gateway.keys import activity_of_partition
from worker.recovery.wallet_state import WalletState, idempotency_records, wallet_state

KINDS = ("activity", "wallet", "code", "blocklist")


def stored(value: object) -> str:
    """A value as the scripts store it in a hash (integers whole, as put_activity writes them)."""
    if isinstance(value, bool):
        raise TypeError("no hot config field is a boolean")
    if isinstance(value, int | float):
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class Undelivered:
    """A claim the ledger holds whose coupons it does not: a deliver a crash left undone."""

    claim_id: str
    user_id: str
    activity_id: str
    answer: str


@dataclass
class ActivityState:
    partition: str
    activity_id: str
    mark: int
    defined: bool  # the definition is in Postgres
    config: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)
    allow: set[str] = field(default_factory=set)
    records: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (value, expires at)
    undelivered: list[Undelivered] = field(default_factory=list)
    batches: dict[str, str] = field(default_factory=dict)  # code batch id -> packs reserved, or "void"
    ever_stocked: int = 0  # the definition's stock plus every addition
    highest_unit: int = 0  # the highest ordinal a claim holds


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


async def mark_of(pool: asyncpg.Pool, partition: str) -> int:
    mark = await pool.fetchval("SELECT seq FROM partition_marks WHERE partition = $1", partition)
    return int(mark or 0)


async def build(pool: asyncpg.Pool, partition: str, kind: str, now: int) -> PartitionState:
    mark = await mark_of(pool, partition)
    if kind == "activity":
        return await _activity(pool, partition, mark, now)
    if kind == "wallet":
        return await wallet_state(pool, partition, mark, now)
    if kind == "blocklist":
        return await _blocklist(pool, partition, mark)
    if kind == "code":
        return await _code(pool, partition, mark)
    return BareState(partition, mark)


async def _activity(pool: asyncpg.Pool, partition: str, mark: int, now: int) -> ActivityState:
    activity_id = activity_of_partition(partition)
    activity = await store.get_activity(pool, activity_id)
    state = ActivityState(partition, activity_id, mark, defined=activity is not None)
    if activity is None:
        return state
    templates = await store.templates_by_id(pool, [item.template_id for item in activity.pack])
    config = {
        name: stored(value) for name, value in hot_config(activity, templates).items() if name != "stock"
    }
    stock = ever = activity.stock
    changes = await pool.fetch(
        "SELECT action, before::text AS before, after::text AS after FROM audit WHERE partition = $1 ORDER BY seq",
        partition,
    )
    # Each audit row's before and after are its event's (gateway/events.py): decoded as the schema types them.
    for change in changes:
        if change["action"] == "set_status":
            config["status"] = msgspec.json.decode(change["after"], type=ActivityStatus).status
        elif change["action"] == "change_stock":
            delta = _stock_delta(change)
            stock += delta
            ever += max(delta, 0)
        elif change["action"] in ("reserve_codes", "void_codes"):
            delta = _stock_delta(change)
            stock += delta
            reserved = int(config.get("reserved", "0")) - delta
            config["reserved"] = str(reserved)
        elif change["action"] == "patch_activity":
            patched = msgspec.json.decode(change["after"], type=ConfigFields)
            config.update({name: stored(value) for name, value in patched.items()})
    state.users = {
        row["user_id"]: str(row["n"])
        for row in await pool.fetch(
            "SELECT user_id, count(*) AS n FROM claims WHERE activity_id = $1 AND mode <> 'code'"
            " GROUP BY user_id",
            activity_id,
        )
    }
    state.devices = {
        row["device_id"]: str(row["n"])
        for row in await pool.fetch(
            "SELECT device_id, count(*) AS n FROM claims WHERE activity_id = $1 AND device_id <> ''"
            " AND mode <> 'code'"
            " GROUP BY device_id",
            activity_id,
        )
    }
    taken = sum(int(n) for n in state.users.values())
    config["stock_left"] = str(stock - taken)
    config["taken"] = str(taken)
    state.config = config
    state.ever_stocked = ever
    state.highest_unit = int(
        await pool.fetchval(
            "SELECT coalesce(max(ordinal), 0) FROM claims WHERE activity_id = $1", activity_id
        )
    )
    if activity.eligibility and activity.eligibility.users:
        state.allow = set(activity.eligibility.users)
    state.records = await idempotency_records(pool, partition, now)
    state.batches = {
        row["batch_id"]: "void" if row["voided"] else str(row["count"])
        for row in await pool.fetch(
            "SELECT batch_id, count, voided FROM code_batches WHERE activity_id = $1 AND (reserved OR voided)"
            " ORDER BY batch_id",
            activity_id,
        )
    }
    state.undelivered = [
        Undelivered(row["claim_id"], row["user_id"], activity_id, row["answer"])
        for row in await pool.fetch(
            "SELECT c.claim_id, c.user_id, c.answer FROM claims c WHERE c.activity_id = $1"
            " AND NOT EXISTS (SELECT 1 FROM coupons k WHERE k.claim_id = c.claim_id) ORDER BY c.claim_id",
            activity_id,
        )
    ]
    return state


def _stock_delta(change: asyncpg.Record) -> int:
    """A stock change's packs (negative: taken away), from its audit row."""
    before = msgspec.json.decode(change["before"], type=StockLeft)
    return msgspec.json.decode(change["after"], type=StockLeft).stock_left - before.stock_left


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
