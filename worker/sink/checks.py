"""The ledger's checks on a batch, before its rows are written: unique claims, units and coupon versions (a
breach goes to ``conflicts``), and no coupon without its claim (what waits for a claim the ledger lacks is held)."""

from __future__ import annotations

import asyncpg
import msgspec

from gateway import clock
from worker.sink import sql
from worker.sink.rows import HeldRow, Rows, arrays


async def check_claims(conn: asyncpg.Connection, rows: Rows) -> None:
    """Unique ids: a claim id or event id the ledger holds for another claim, or an ordinal another claim of
    the activity holds (a unit sold twice), is a conflict; a redelivered claim (same ids) is not."""
    if not rows.claims:
        return
    sold = [row for _, row in rows.claims if row.ordinal is not None]
    held = await conn.fetch(
        sql.CLAIMS_HOLDING,
        [row.claim_id for _, row in rows.claims],
        [row.event_id for _, row in rows.claims],
        [row.activity_id for row in sold],
        [row.ordinal for row in sold],
    )
    # What the ledger holds, then what the batch adds as it goes (a batch can hold a conflict of its own).
    event_of_claim: dict[object, object] = {r["claim_id"]: r["event_id"] for r in held}
    claim_of_event: dict[object, object] = {r["event_id"]: r["claim_id"] for r in held}
    claim_of_unit: dict[tuple[object, object], object] = {
        (r["activity_id"], r["ordinal"]): r["claim_id"] for r in held
    }
    for entry, row in rows.claims:
        claim_id, activity_id, event_id, ordinal = row.claim_id, row.activity_id, row.event_id, row.ordinal
        holder = event_of_claim.setdefault(claim_id, event_id)
        if holder != event_id:
            rows.reject(entry, f"claim id {claim_id} already held for event {holder}")
        holder = claim_of_event.setdefault(event_id, claim_id)
        if holder != claim_id:
            rows.reject(entry, f"event id {event_id} already held for claim {holder}")
        if ordinal is not None:
            holder = claim_of_unit.setdefault((activity_id, ordinal), claim_id)
            if holder != claim_id:
                rows.reject(entry, f"unit {ordinal} of activity {activity_id} already sold to claim {holder}")


async def hold(conn: asyncpg.Connection, rows: Rows) -> None:
    """After the batch's claims are inserted: hold the batch's entries whose claim the ledger still lacks."""
    if not rows.claim_of:
        return
    wanted = sorted({claim_id for _, claim_id in rows.claim_of.values()})
    present = {r["claim_id"] for r in await conn.fetch(sql.CLAIMS_HELD, wanted)}
    waiting = [
        (entry, claim_id)
        for entry, claim_id in rows.claim_of.values()
        if claim_id not in present and entry.key not in rows.conflicts
    ]
    if not waiting:
        return
    now = int(clock.now())
    held: list[HeldRow] = []
    for entry, claim_id in waiting:
        rows.hold(entry)
        fields = msgspec.json.encode(entry.fields).decode()
        held.append(HeldRow(entry.stream, entry.entry_id, claim_id, entry.partition, fields, now))
    await conn.execute(sql.HOLD, *arrays(held, HeldRow))


async def check_versions(conn: asyncpg.Connection, rows: Rows) -> None:
    """A coupon's versions in order: each version is one event; another event claiming a version the ledger
    (or the batch) already holds for the coupon is a conflict, and none of its coupons is written. The same event
    again is none: a ``delivered`` (``<claim>.d``) or an ``expired`` (``expired:<coupon>``) repeated after a Redis
    rollback carries the id the ledger holds."""
    events = [(entry, row) for entry, row in rows.coupon_events if entry.key not in rows.held]
    if not events:
        return
    held = await conn.fetch(
        sql.VERSIONS_HOLDING,
        [row.coupon_id for _, row in events],
        [row.version for _, row in events],
    )
    holders: dict[tuple[object, object], object] = {
        (r["coupon_id"], r["version"]): r["event_id"] for r in held
    }
    for entry, row in events:
        holder = holders.setdefault((row.coupon_id, row.version), row.event_id)
        if holder != row.event_id:
            rows.reject(entry, f"coupon {row.coupon_id} version {row.version} already held by event {holder}")
