"""An activity partition's state as the ledger alone rebuilds it: what restore writes and reconcile compares
(``worker/recovery/ledger_state.py``), what a revival of a retired activity writes back
(``gateway/catalog/retirement.py``), and what the reads of a retired activity answer from.

The config from the definition, then every operator's change in seq order (status, stock, window, limits, codes
reserved); taken and per-user / per-device counts from ``claims``; stock left = stock plus the changes minus taken;
the allow-list from the definition; unexpired idempotency records; its code batches (``code_batches``: packs
reserved, or ``void``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import msgspec

from gateway.catalog import store
from gateway.catalog.campaign import hot_config
from gateway.events import ActivityStatus, ConfigFields, StockLeft
from gateway.keys import activity_of_partition


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
    retired: bool = False  # the ledger records the partition as retired (activities.retired_at)


async def mark_of(pool: asyncpg.Pool, partition: str) -> int:
    mark = await pool.fetchval("SELECT seq FROM partition_marks WHERE partition = $1", partition)
    return int(mark or 0)


async def activity_state(pool: asyncpg.Pool, partition: str, mark: int, now: int) -> ActivityState:
    activity_id = activity_of_partition(partition)
    activity = await store.get_activity(pool, activity_id)
    state = ActivityState(partition, activity_id, mark, defined=activity is not None)
    if activity is None:
        return state
    state.retired = bool(
        await pool.fetchval(
            "SELECT retired_at IS NOT NULL FROM activities WHERE activity_id = $1", activity_id
        )
    )
    templates = await store.templates_by_id(pool, [item.template_id for item in activity.pack])
    config = {
        name: stored(value) for name, value in hot_config(activity, templates).items() if name != "stock"
    }
    stock, state.ever_stocked = await _changes(pool, partition, config, activity.stock)
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


async def _changes(pool: asyncpg.Pool, partition: str, config: dict[str, str], stock: int) -> tuple[int, int]:
    """Every operator's change in seq order applied to ``config`` (status, patches, packs reserved); the stock
    after the changes (before claims) and the stock ever made available (the definition's plus every addition).
    Each audit row's before and after are its event's (gateway/events.py): decoded as the schema types them."""
    ever = stock
    changes = await pool.fetch(
        "SELECT action, before::text AS before, after::text AS after FROM audit WHERE partition = $1 ORDER BY seq",
        partition,
    )
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
            config["reserved"] = str(int(config.get("reserved", "0")) - delta)
        elif change["action"] == "patch_activity":
            patched = msgspec.json.decode(change["after"], type=ConfigFields)
            config.update({name: stored(value) for name, value in patched.items()})
    return stock, ever


def _stock_delta(change: asyncpg.Record) -> int:
    """A stock change's packs (negative: taken away), from its audit row."""
    before = msgspec.json.decode(change["before"], type=StockLeft)
    return msgspec.json.decode(change["after"], type=StockLeft).stock_left - before.stock_left


async def idempotency_records(pool: asyncpg.Pool, partition: str, now: int) -> dict[str, tuple[str, int]]:
    """The partition's unexpired idempotency records: key -> ("<body hash>|<answer>", expires at)."""
    return {
        row["redis_key"]: (f"{row['body_hash']}|{row['answer']}", int(row["expires_at"]))
        for row in await pool.fetch(
            "SELECT redis_key, body_hash, answer, expires_at FROM idempotency_records"
            " WHERE partition = $1 AND expires_at > $2",
            partition,
            now,
        )
    }


PART_SIZE = 2000  # fields per script call: a large partition is written in parts, each one short for Redis


def parts_of(flat: list[str], size: int = PART_SIZE) -> list[list[str]]:
    return [flat[i : i + size] for i in range(0, len(flat), size)] or [[]]


def pairs(mapping: dict[str, str]) -> list[str]:
    """``{name: value}`` as the flat ``[name, value, ...]`` the scripts read, sorted by name."""
    return [item for pair in sorted(mapping.items()) for item in pair]


def in_parts(**lists: list[str]) -> list[dict[str, list[str]]]:
    """Payloads of at most PART_SIZE items per list, the lists side by side: part i holds each one's i-th part."""
    parts = {name: parts_of(flat) for name, flat in lists.items()}
    count = max(len(p) for p in parts.values())
    return [{name: p[i] if i < len(p) else [] for name, p in parts.items()} for i in range(count)]
