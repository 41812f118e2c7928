"""The Postgres sink: one transaction per batch, each event applied at most once and in a safe order.

- claims are unique on claim id (and event id): a redelivered ``claimed`` changes nothing;
- coupons are upserted only where the stored version is older, after the batch keeps each coupon's newest
  event, in coupon-id order so two workers never deadlock; ``coupon_events`` keeps the history once per version;
- ``partition_marks`` keeps the highest seq persisted per partition;
- an entry that cannot be taken on its own account (undecodable, an unknown type, data Postgres refuses) is
  found by applying the batch entry by entry; the consumer dead-letters it after repeated failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import msgspec

from worker.events import Entry, decode_answer
from worker.faults import crash_point

_INSERT_CLAIMS = """
INSERT INTO claims (claim_id, activity_id, user_id, device_id, channel, mode, operator, answer, claimed_at,
                    event_id, partition, seq)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::bigint[], $10::text[], $11::text[], $12::bigint[])
ON CONFLICT DO NOTHING
"""
_UPSERT_IDEMPOTENCY = """
INSERT INTO idempotency_records (redis_key, partition, body_hash, answer, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
ON CONFLICT (redis_key) DO UPDATE SET body_hash = excluded.body_hash, answer = excluded.answer,
    expires_at = excluded.expires_at
WHERE idempotency_records.expires_at < excluded.expires_at
"""
_UPSERT_COUPONS = """
INSERT INTO coupons AS c (coupon_id, user_id, activity_id, template_id, claim_id, status, version, valid_from,
                          valid_until, updated_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[],
                     $8::bigint[], $9::bigint[], $10::bigint[])
ON CONFLICT (coupon_id) DO UPDATE SET status = excluded.status, version = excluded.version,
    updated_at = excluded.updated_at
WHERE c.version < excluded.version
"""
_INSERT_COUPON_EVENTS = """
INSERT INTO coupon_events (coupon_id, version, event_id, type, at, status)
SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bigint[], $6::text[])
ON CONFLICT DO NOTHING
"""
_INSERT_AUDIT = """
INSERT INTO audit (event_id, partition, seq, at, operator, action, target, before, after)
SELECT e, p, s, a, o, ac, t, nullif(b, '')::jsonb, nullif(af, '')::jsonb
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[]) AS u(e, p, s, a, o, ac, t, b, af)
ON CONFLICT DO NOTHING
"""
_UPSERT_MARKS = """
INSERT INTO partition_marks AS m (partition, seq)
SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT (partition) DO UPDATE SET seq = greatest(m.seq, excluded.seq)
"""
_UPSERT_BLOCKLIST = """
INSERT INTO blocklist AS b (kind, id, present, added_at, by, seq)
SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[], $4::bigint[], $5::text[], $6::bigint[])
ON CONFLICT (kind, id) DO UPDATE SET present = excluded.present, added_at = excluded.added_at, by = excluded.by,
    seq = excluded.seq
WHERE b.seq < excluded.seq
"""


# Operators' events -> the audit action they record (target: the activity).
AUDITED = {
    "activity_created": "create_activity",
    "status_changed": "set_status",
    "stock_changed": "change_stock",
    "activity_patched": "patch_activity",
}


@dataclass
class _Rows:
    claims: list[tuple[object, ...]] = field(default_factory=list)
    idempotency: list[tuple[object, ...]] = field(default_factory=list)
    coupons: dict[str, tuple[object, ...]] = field(default_factory=dict)  # coupon id -> newest row
    coupon_events: list[tuple[object, ...]] = field(default_factory=list)
    audit: list[tuple[object, ...]] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)
    blocklist: dict[tuple[str, str], tuple[object, ...]] = field(default_factory=dict)  # newest per entry


def _columns(rows: list[tuple[object, ...]], width: int) -> list[list[object]]:
    return [[row[i] for row in rows] for i in range(width)]


def _add(rows: _Rows, entry: Entry) -> None:
    f = entry.fields
    kind = entry.type
    if kind == "claimed":
        decode_answer(f["answer"])  # deliver will need it whole
        rows.claims.append(
            (
                f["claim_id"],
                f["activity"],
                f["user"],
                f["device"],
                f["channel"],
                f["mode"],
                f["by"] or None,
                f["answer"],
                int(f["at"]),
                f["id"],
                entry.partition,
                entry.seq,
            )
        )
        if f.get("idem"):
            rows.idempotency.append(
                (f["idem"], entry.partition, f["idem_hash"], f["answer"], int(f["idem_expires"]))
            )
    elif kind == "delivered":
        version, at = int(f["version"]), int(f["at"])
        answer = decode_answer(f["answer"])
        for coupon in answer.coupons:
            row = (
                coupon.coupon_id,
                f["user"],
                f["activity"],
                coupon.template_id,
                answer.claim_id,
                "available",
                version,
                coupon.valid_from,
                coupon.valid_until,
                at,
            )
            held = rows.coupons.get(coupon.coupon_id)
            if held is None or int(held[6]) < version:  # type: ignore[call-overload]
                rows.coupons[coupon.coupon_id] = row
            rows.coupon_events.append((coupon.coupon_id, version, f["id"], kind, at, "available"))
    elif kind == "grant_call_recorded":
        rows.idempotency.append(
            (f["idem"], entry.partition, f["idem_hash"], f["answer"], int(f["idem_expires"]))
        )
    elif kind == "blocklist_changed":
        present, at, seq = f["action"] == "add", int(f["at"]), entry.seq
        users = msgspec.json.decode(f["users"], type=list[str])
        devices = msgspec.json.decode(f["devices"], type=list[str])
        for who, ids in (("user", users), ("device", devices)):
            for ident in ids:
                held = rows.blocklist.get((who, ident))
                if held is None or int(held[5]) < seq:  # type: ignore[call-overload]
                    rows.blocklist[(who, ident)] = (who, ident, present, at, f["by"], seq)
        change = msgspec.json.encode({"users": users, "devices": devices}).decode()
        rows.audit.append(
            (f["id"], entry.partition, seq, at, f["by"], f"blocklist_{f['action']}", "blocklist", "", change)
        )
    elif kind in AUDITED:
        rows.audit.append(
            (
                f["id"],
                entry.partition,
                entry.seq,
                int(f["at"]),
                f["by"],
                AUDITED[kind],
                f["activity"],
                f.get("before", ""),
                f.get("after", ""),
            )
        )
    else:
        raise ValueError(f"unknown event type {kind!r}")


class EntryFault(Exception):
    """An entry the sink cannot take on its own account (undecodable, an unknown type)."""

    def __init__(self, entry: Entry, reason: str) -> None:
        super().__init__(reason)
        self.entry = entry
        self.reason = reason


# An entry's own fault (undecodable; Postgres refusing its data or a constraint only it breaks): found by
# applying the batch entry by entry, never a reason to hold back the rest of it.
ENTRY_FAULTS = (EntryFault, asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


def collect(entries: list[Entry]) -> _Rows:
    rows = _Rows()
    for entry in entries:
        try:
            _add(rows, entry)
        except (KeyError, ValueError, msgspec.DecodeError) as exc:
            raise EntryFault(entry, f"undecodable: {exc!r}") from exc
        if "seq" in entry.fields and entry.fields["seq"].isdigit():
            rows.marks[entry.partition] = max(rows.marks.get(entry.partition, 0), entry.seq)
    return rows


async def apply(conn: asyncpg.Connection, entries: list[Entry]) -> None:
    """Write a batch in one transaction; raises (and writes nothing) if an entry cannot be taken
    (``ENTRY_FAULTS``) or Postgres is away."""
    rows = collect(entries)
    async with conn.transaction():
        if rows.claims:
            await conn.execute(_INSERT_CLAIMS, *_columns(rows.claims, 12))
        if rows.idempotency:
            await conn.execute(_UPSERT_IDEMPOTENCY, *_columns(rows.idempotency, 5))
        if rows.coupons:
            ordered = [rows.coupons[k] for k in sorted(rows.coupons)]
            await conn.execute(_UPSERT_COUPONS, *_columns(ordered, 10))
        if rows.coupon_events:
            await conn.execute(
                _INSERT_COUPON_EVENTS, *_columns(sorted(rows.coupon_events, key=lambda r: (r[0], r[1])), 6)
            )
        if rows.audit:
            await conn.execute(_INSERT_AUDIT, *_columns(rows.audit, 9))
        if rows.blocklist:
            ordered_blocklist = [rows.blocklist[k] for k in sorted(rows.blocklist)]
            await conn.execute(_UPSERT_BLOCKLIST, *_columns(ordered_blocklist, 6))
        if rows.marks:
            names = sorted(rows.marks)
            await conn.execute(_UPSERT_MARKS, names, [rows.marks[n] for n in names])
        crash_point("before_commit")


async def apply_one_by_one(conn: asyncpg.Connection, entries: list[Entry]) -> dict[tuple[str, str], str]:
    """After a batch failed on an entry's account: apply each entry alone. Returns the entries that failed on
    their own ((stream, entry id) -> reason: an id is unique only within its stream); every other one is
    written."""
    failed: dict[tuple[str, str], str] = {}
    for entry in entries:
        try:
            await apply(conn, [entry])
        except EntryFault as fault:
            failed[entry.stream, entry.entry_id] = fault.reason
        except ENTRY_FAULTS as exc:
            failed[entry.stream, entry.entry_id] = f"refused by Postgres: {exc!r}"
    return failed
