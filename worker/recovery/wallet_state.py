"""A wallet bucket ``{w:n}`` as Redis should hold it, from the ledger alone: every coupon the ledger holds for the
bucket and Redis still should (the retention sweep's removals, ``archived_at``, excepted), with its lock or
redemption; each user's index; the orders and the finished ones' index (``done``); the locks; the per-activity
checkout counters (archived coupons included: Redis never takes them back); the expiry indexes (``expiring``:
coupons not final, at their validity's end; ``finished``: the final ones); unexpired code-redeem idempotency
records; and the ledger's own faults (coupons without their claim, entries held too long)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway.catalog.rebuild import idempotency_records
from gateway.keys import order_field
from worker.recovery.wallet_records import coupon_record, is_final, order_record

# An entry held this long for its claim is reported: a claim's own event reaches the ledger within seconds
# unless Redis lost it (or the ledger refused it as a conflict).
HELD_GRACE_SECONDS = 60


def finished_at(status: str, updated_at: int, valid_until: int) -> int:
    """When a finished order finished, as the checkout scripts score it in ``done``: a redeemed one when its
    coupon's validity ends (a refund may return the coupon until then), any other at its last change."""
    return max(updated_at, valid_until) if status == "redeemed" else updated_at


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
    expiring: dict[str, int] = field(default_factory=dict)  # coupon id not final -> its valid_until
    finished: dict[str, int] = field(default_factory=dict)  # final coupon id -> when it became final
    done: dict[str, int] = field(default_factory=dict)  # finished order's field -> when it finished
    now: int = 0  # the time the state was read at: what "past its validity" means here
    # The ledger's own faults: coupons whose claim it lacks (coupon id -> claim id), and entries held longer
    # than HELD_GRACE_SECONDS for a claim it still lacks ("<stream> <entry id>" -> claim id).
    unclaimed: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)


async def wallet_state(pool: asyncpg.Pool, partition: str, mark: int, now: int) -> WalletState:
    """A wallet bucket as Redis should hold it: what the retention sweep removed (``archived_at``) excepted."""
    state = WalletState(partition, mark, now=now)
    rows = await pool.fetch(
        "SELECT coupon_id, user_id, activity_id, template_id, claim_id, status, version, valid_from, valid_until,"
        " order_id, locked_until, discount FROM coupons WHERE partition = $1 AND archived_at IS NULL"
        " ORDER BY coupon_id",
        partition,
    )
    last_change = await _last_changes(pool, partition, now)
    for row in rows:
        coupon_id, valid_until = row["coupon_id"], int(row["valid_until"])
        state.coupons[coupon_id] = coupon_record(row)
        state.indexes.setdefault(row["user_id"], []).append(coupon_id)
        if row["status"] == "locked":
            state.locks[coupon_id] = int(row["locked_until"])
        if is_final(row["status"], valid_until, now):
            state.finished[coupon_id] = max(valid_until, last_change.get(coupon_id, valid_until))
        else:
            state.expiring[coupon_id] = valid_until
    for row in await pool.fetch(
        "SELECT o.user_id, o.order_id, o.coupon_id, o.status, o.discount, o.split, o.locked_until, o.returned,"
        " o.version, o.updated_at, c.valid_until FROM orders AS o LEFT JOIN coupons AS c USING (coupon_id)"
        " WHERE o.partition = $1 AND o.archived_at IS NULL ORDER BY o.user_id, o.order_id",
        partition,
    ):
        field = order_field(row["user_id"], row["order_id"])
        state.orders[field] = order_record(row)
        if row["status"] != "locked":
            state.done[field] = finished_at(
                row["status"], int(row["updated_at"]), int(row["valid_until"] or 0)
            )
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


async def _last_changes(pool: asyncpg.Pool, partition: str, now: int) -> dict[str, int]:
    """Each final coupon's last change but ``expired``: one a lock held past its validity became final when the
    lock ended (released, lapsed, redeemed), the later of that and its validity's end."""
    return {
        row["coupon_id"]: int(row["at"])
        for row in await pool.fetch(
            "SELECT e.coupon_id, max(e.at) AS at FROM coupon_events e JOIN coupons c USING (coupon_id)"
            " WHERE c.partition = $1 AND e.type <> 'expired'"
            " AND (c.status = 'expired' OR (c.status = 'redeemed' AND c.valid_until <= $2))"
            " GROUP BY e.coupon_id",
            partition,
            now,
        )
    }


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
