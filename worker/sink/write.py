"""Every table's rows of what the checks kept, and the conflicts they found: each table in one statement, its
rows in key order (two workers never deadlock), a coupon's or an order's newest version in the batch only."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import asyncpg
import msgspec

from worker.sink import sql
from worker.sink.rows import (
    AuditRow,
    BatchChangeRow,
    BlocklistRow,
    ConflictRow,
    CouponArchivedRow,
    CouponEventRow,
    CouponRow,
    IdempotencyRow,
    MarkRow,
    OrderArchivedRow,
    OrderRow,
    RedeemedCodeRow,
    Rows,
    arrays,
)

Versioned = TypeVar("Versioned", CouponRow, OrderRow)


def newest(rows: list[Versioned], key: Callable[[Versioned], tuple[str, ...]]) -> list[Versioned]:
    """Each row's newest version in the batch, in key order."""
    found: dict[tuple[str, ...], Versioned] = {}
    for row in rows:
        held = found.get(key(row))
        if held is None or held.version < row.version:
            found[key(row)] = row
    return [found[k] for k in sorted(found)]


def conflict_rows(rows: Rows) -> list[ConflictRow]:
    return [
        ConflictRow(
            entry.fields.get("id"),
            entry.partition,
            entry.entry_id,
            reason,
            msgspec.json.encode(entry.fields).decode(),
            entry.fields.get("activity"),
        )
        for entry, reason in rows.conflicts.values()
    ]


async def write(conn: asyncpg.Connection, rows: Rows) -> None:
    """Every table's rows of what the checks kept, and the conflicts they found."""
    if rows.conflicts:
        await conn.execute(sql.INSERT_CONFLICTS, *arrays(conflict_rows(rows), ConflictRow))
    idempotency = rows.kept(rows.idempotency)
    if idempotency:
        await conn.execute(sql.UPSERT_IDEMPOTENCY, *arrays(idempotency, IdempotencyRow))
    coupons = newest(rows.kept(rows.coupons), lambda row: (row.coupon_id,))
    if coupons:
        await conn.execute(sql.UPSERT_COUPONS, *arrays(coupons, CouponRow))
    coupon_events = sorted(rows.kept(rows.coupon_events), key=lambda row: (row.coupon_id, row.version))
    if coupon_events:
        await conn.execute(sql.INSERT_COUPON_EVENTS, *arrays(coupon_events, CouponEventRow))
    redeemed_codes = sorted(rows.kept(rows.redeemed_codes), key=lambda row: row.code_hash)
    if redeemed_codes:
        await conn.execute(sql.REDEEM_CODES, *arrays(redeemed_codes, RedeemedCodeRow))
    if rows.batch_changes:
        changes = [rows.batch_changes[batch] for batch in sorted(rows.batch_changes)]
        await conn.execute(sql.BATCH_CHANGES, *arrays(changes, BatchChangeRow))
    orders = newest(rows.kept(rows.orders), lambda row: (row.user_id, row.order_id))
    if orders:
        await conn.execute(sql.UPSERT_ORDERS, *arrays(orders, OrderRow))
    archived_coupons = sorted(rows.kept(rows.coupons_archived))
    if archived_coupons:
        await conn.execute(sql.ARCHIVE_COUPONS, *arrays(archived_coupons, CouponArchivedRow))
    archived_orders = sorted(rows.kept(rows.orders_archived))
    if archived_orders:
        await conn.execute(sql.ARCHIVE_ORDERS, *arrays(archived_orders, OrderArchivedRow))
    if rows.audit:
        await conn.execute(sql.INSERT_AUDIT, *arrays(rows.audit, AuditRow))
    if rows.blocklist:
        blocklist = [rows.blocklist[key] for key in sorted(rows.blocklist)]
        await conn.execute(sql.UPSERT_BLOCKLIST, *arrays(blocklist, BlocklistRow))
    if rows.marks:
        marks = [MarkRow(partition, rows.marks[partition]) for partition in sorted(rows.marks)]
        await conn.execute(sql.UPSERT_MARKS, *arrays(marks, MarkRow))
