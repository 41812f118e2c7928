"""The Postgres sink: one transaction per batch, each event applied at most once and in a safe order.

- claims are unique on claim id (and event id): a redelivered ``claimed`` changes nothing;
- coupons are upserted only where the stored version is older, after the batch keeps each coupon's newest
  event, in coupon-id order so two workers never deadlock; ``coupon_events`` keeps the history once per version;
- no coupon without its claim (design.md): an entry about a claim's coupons (``delivered``, a checkout change)
  whose claim the ledger does not hold, in this batch or before, waits in ``held_entries`` (acknowledged, its
  seq counted) and reaches ``coupons`` in the transaction that finds its claim committed: the one that commits
  the claim, or any later batch (two lanes may commit a claim and its delivery at the same instant, each unseen
  by the other). A Redis that lost both then restores the wallet without the coupon, the activity without the
  claim, and sells the unit once;
- ``partition_marks`` keeps the highest seq persisted per partition;
- an entry that cannot be taken on its own account (undecodable, an unknown type, data Postgres refuses) is
  found by applying the batch entry by entry; the consumer dead-letters it after repeated failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import msgspec

from gateway import clock
from worker.events import Entry, decode_answer
from worker.faults import crash_point

_INSERT_CLAIMS = """
INSERT INTO claims (claim_id, activity_id, user_id, device_id, channel, mode, operator, answer, claimed_at,
                    event_id, partition, seq, ordinal)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::bigint[], $10::text[], $11::text[], $12::bigint[], $13::bigint[])
ON CONFLICT (claim_id) DO NOTHING
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
                          valid_until, updated_at, partition, order_id, locked_until, discount)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[],
                     $8::bigint[], $9::bigint[], $10::bigint[], $11::text[], $12::text[], $13::bigint[],
                     $14::bigint[])
ON CONFLICT (coupon_id) DO UPDATE SET status = excluded.status, version = excluded.version,
    updated_at = excluded.updated_at, order_id = excluded.order_id, locked_until = excluded.locked_until,
    discount = excluded.discount
WHERE c.version < excluded.version
"""
_INSERT_COUPON_EVENTS = """
INSERT INTO coupon_events (coupon_id, version, event_id, type, at, status, order_id)
SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[])
ON CONFLICT (coupon_id, version) DO NOTHING
"""
_UPSERT_ORDERS = """
INSERT INTO orders AS o (user_id, order_id, coupon_id, status, discount, split, locked_until, returned, version,
                         partition, updated_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bigint[],
                     $8::boolean[], $9::int[], $10::text[], $11::bigint[])
ON CONFLICT (user_id, order_id) DO UPDATE SET coupon_id = excluded.coupon_id, status = excluded.status,
    discount = excluded.discount, split = excluded.split, locked_until = excluded.locked_until,
    returned = excluded.returned, version = excluded.version, updated_at = excluded.updated_at
WHERE o.version < excluded.version
"""
_INSERT_AUDIT = """
INSERT INTO audit (event_id, partition, seq, at, operator, action, target, before, after)
SELECT e, p, s, a, o, ac, t, nullif(b, '')::jsonb, nullif(af, '')::jsonb
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[]) AS u(e, p, s, a, o, ac, t, b, af)
ON CONFLICT DO NOTHING
"""
_INSERT_CONFLICTS = """
INSERT INTO conflicts (event_id, partition, entry_id, reason, entry, activity)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
ON CONFLICT (partition, entry_id) DO NOTHING
"""
# The ledger's own checks, each independent of the order in which two workers commit a stream's batches:
# an id already held for another claim, an ordinal (a pack's place in its activity's sales) held by another
# claim, a coupon version already held by another event.
# Three index lookups, not one OR: Postgres cannot combine the row comparison with the others in a bitmap OR, and
# scanned the whole table for every batch (a batch's write grew from 10 ms to 140 ms over the first 15,000 rows).
_CLAIMS_HOLDING = """
SELECT claim_id, event_id, activity_id, ordinal FROM claims WHERE claim_id = ANY($1::text[])
UNION
SELECT claim_id, event_id, activity_id, ordinal FROM claims WHERE event_id = ANY($2::text[])
UNION
SELECT c.claim_id, c.event_id, c.activity_id, c.ordinal
FROM claims AS c JOIN unnest($3::text[], $4::bigint[]) AS u(activity_id, ordinal)
  ON c.activity_id = u.activity_id AND c.ordinal = u.ordinal
"""
_CLAIMS_HELD = """
SELECT claim_id FROM claims WHERE claim_id = ANY($1::text[])
"""
_HOLD = """
INSERT INTO held_entries (stream, entry_id, claim_id, partition, fields, held_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::bigint[])
ON CONFLICT (stream, entry_id) DO NOTHING
"""
# What waits for these claims, where the ledger holds them (by the claim's index: the batch's own cost, whatever
# else waits); a row another transaction is releasing is skipped, not waited for (and not taken twice).
_RELEASE_FOR = """
DELETE FROM held_entries AS h
WHERE (h.stream, h.entry_id) IN (
    SELECT w.stream, w.entry_id FROM held_entries AS w
    WHERE w.claim_id = ANY($1::text[]) AND EXISTS (SELECT 1 FROM claims AS c WHERE c.claim_id = w.claim_id)
    ORDER BY w.stream, w.entry_id FOR UPDATE OF w SKIP LOCKED
)
RETURNING h.stream, h.entry_id, h.fields
"""
# What waits for any claim the ledger holds (committed unseen by the batch that held it, two lanes racing): taken
# out by one transaction at a time (a row another is releasing is skipped, never taken twice).
_RELEASE_ALL = """
DELETE FROM held_entries AS h
WHERE (h.stream, h.entry_id) IN (
    SELECT w.stream, w.entry_id FROM held_entries AS w JOIN claims AS c ON c.claim_id = w.claim_id
    ORDER BY w.stream, w.entry_id FOR UPDATE OF w SKIP LOCKED
)
RETURNING h.stream, h.entry_id, h.fields
"""
_CLAIMS_WITH_COUPONS = """
SELECT DISTINCT claim_id FROM coupons WHERE claim_id = ANY($1::text[])
"""
_VERSIONS_HOLDING = """
SELECT coupon_id, version, event_id FROM coupon_events
WHERE (coupon_id, version) IN (SELECT * FROM unnest($1::text[], $2::int[]))
"""
_REDEEM_CODES = """
UPDATE codes AS k SET redeemed_by = u.user_id, claim_id = u.claim_id, redeemed_at = u.at
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(code_hash, user_id, claim_id, at)
WHERE k.code_hash = u.code_hash AND k.redeemed_by IS NULL
"""
_BATCH_CHANGES = """
UPDATE code_batches AS b SET reserved = b.reserved OR u.reserved, voided = b.voided OR u.voided,
    state = CASE WHEN u.voided THEN 'void' ELSE b.state END
FROM unnest($1::text[], $2::boolean[], $3::boolean[]) AS u(batch_id, reserved, voided)
WHERE b.batch_id = u.batch_id
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


# Operators' events -> the audit action they record (target: the activity, or the partition restored).
AUDITED = {
    "activity_created": "create_activity",
    "status_changed": "set_status",
    "stock_changed": "change_stock",
    "activity_patched": "patch_activity",
    "restored": "restore",
    "codes_reserved": "reserve_codes",
    "codes_voided": "void_codes",
}
# Writes to code buckets whose rows the gateway wrote to Postgres first: only their seq is the ledger's news.
MARKS_ONLY = frozenset({"codes_stored", "codes_dropped"})
# Events whose coupons the worker delivers into the wallet (idempotent) unless the ledger already holds them.
DELIVERING = frozenset({"claimed", "code_redeemed"})
# Checkout's transitions, each on one coupon (its version moves, except a refund that returns nothing) and one
# order (its own version).
CHECKOUT = frozenset({"locked", "redeemed", "released", "refunded", "lock_expired"})


@dataclass
class _Rows:
    claims: list[tuple[Entry, tuple[object, ...]]] = field(default_factory=list)
    idempotency: list[tuple[Entry, tuple[object, ...]]] = field(default_factory=list)
    coupons: list[tuple[Entry, tuple[object, ...]]] = field(default_factory=list)
    coupon_events: list[tuple[Entry, tuple[object, ...]]] = field(default_factory=list)
    orders: list[tuple[Entry, tuple[object, ...]]] = field(default_factory=list)
    redeemed_codes: list[tuple[Entry, tuple[object, ...]]] = field(default_factory=list)
    batch_changes: dict[str, tuple[bool, bool]] = field(
        default_factory=dict
    )  # batch id -> (reserved, voided)
    audit: list[tuple[object, ...]] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)
    blocklist: dict[tuple[str, str], tuple[object, ...]] = field(default_factory=dict)  # newest per entry
    conflicts: dict[tuple[str, str], tuple[Entry, str]] = field(default_factory=dict)  # key -> (entry, why)
    # Entries about a claim's coupons -> that claim; those whose claim the ledger lacks are held.
    claim_of: dict[tuple[str, str], tuple[Entry, str]] = field(default_factory=dict)
    held: dict[tuple[str, str], Entry] = field(default_factory=dict)

    def reject(self, entry: Entry, reason: str) -> None:
        """Keep the entry out of every table but ``conflicts``."""
        self.conflicts.setdefault(entry.key, (entry, reason))

    def hold(self, entry: Entry) -> None:
        """Keep the entry out of every table but ``held_entries``."""
        self.held[entry.key] = entry

    def kept(self, rows: list[tuple[Entry, tuple[object, ...]]]) -> list[tuple[object, ...]]:
        return [row for entry, row in rows if entry.key not in self.conflicts and entry.key not in self.held]


def _columns(rows: list[tuple[object, ...]], width: int) -> list[list[object]]:
    return [[row[i] for row in rows] for i in range(width)]


def _add(rows: _Rows, entry: Entry) -> None:
    f = entry.fields
    kind = entry.type
    if kind == "claimed":
        decode_answer(f["answer"])  # deliver will need it whole
        ordinal = f.get("ordinal")
        rows.claims.append(
            (
                entry,
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
                    int(ordinal) if ordinal else None,
                ),
            )
        )
        if f.get("idem"):
            rows.idempotency.append(
                (entry, (f["idem"], entry.partition, f["idem_hash"], f["answer"], int(f["idem_expires"])))
            )
    elif kind == "delivered":
        version, at = int(f["version"]), int(f["at"])
        answer = decode_answer(f["answer"])
        rows.claim_of[entry.key] = (entry, answer.claim_id)
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
                entry.partition,
                None,
                None,
                None,
            )
            rows.coupons.append((entry, row))
            rows.coupon_events.append(
                (entry, (coupon.coupon_id, version, f["id"], kind, at, "available", None))
            )
    elif kind in CHECKOUT:
        _add_checkout(rows, entry)
    elif kind == "code_redeemed":
        decode_answer(f["answer"])
        at = int(f["at"])
        claim = (
            f["claim_id"],
            f["activity"],
            f["user"],
            f["device"],
            "",
            "code",
            None,
            f["answer"],
            at,
            f["id"],
        )
        rows.claims.append((entry, (*claim, entry.partition, entry.seq, None)))
        rows.redeemed_codes.append((entry, (f["code"], f["user"], f["claim_id"], at)))
    elif kind in MARKS_ONLY:
        pass
    elif kind in ("grant_call_recorded", "idempotency_recorded"):
        rows.idempotency.append(
            (entry, (f["idem"], entry.partition, f["idem_hash"], f["answer"], int(f["idem_expires"])))
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
        if kind in ("codes_reserved", "codes_voided"):
            reserved, voided = rows.batch_changes.get(f["batch"], (False, False))
            rows.batch_changes[f["batch"]] = (
                reserved or kind == "codes_reserved",
                voided or kind == "codes_voided",
            )
        rows.audit.append(
            (
                f["id"],
                entry.partition,
                entry.seq,
                int(f["at"]),
                f["by"],
                AUDITED[kind],
                f.get("activity") or entry.partition,  # a restore's target is its partition
                f.get("before", ""),
                f.get("after", ""),
            )
        )
    else:
        raise ValueError(f"unknown event type {kind!r}")


def _optional_int(raw: str) -> int | None:
    return int(raw) if raw else None


def _add_checkout(rows: _Rows, entry: Entry) -> None:
    f = entry.fields
    at, status, order_id = int(f["at"]), f["status"], f["order"]
    rows.claim_of[entry.key] = (entry, f["claim"])
    if f["version"]:
        held = status in ("locked", "redeemed")
        version = int(f["version"])
        coupon = (
            f["coupon"],
            f["user"],
            f["activity"],
            f["template"],
            f["claim"],
            status,
            version,
            int(f["valid_from"]),
            int(f["valid_until"]),
            at,
            entry.partition,
            order_id if held else None,
            _optional_int(f["locked_until"]),
            _optional_int(f["discount"]) if held else None,
        )
        rows.coupons.append((entry, coupon))
        rows.coupon_events.append((entry, (f["coupon"], version, f["id"], entry.type, at, status, order_id)))
    if f["order_status"]:
        order = (
            f["user"],
            order_id,
            f["coupon"],
            f["order_status"],
            int(f["discount"]),
            f["split"],
            _optional_int(f["locked_until"]),
            f["returned"] == "1" if f["returned"] else None,
            int(f["order_version"]),
            entry.partition,
            at,
        )
        rows.orders.append((entry, order))


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


async def _check_claims(conn: asyncpg.Connection, rows: _Rows) -> None:
    """Unique ids: a claim id or event id the ledger holds for another claim, or an ordinal another claim of
    the activity holds (a unit sold twice), is a conflict; a redelivered claim (same ids) is not."""
    if not rows.claims:
        return
    held = await conn.fetch(
        _CLAIMS_HOLDING,
        [row[0] for _, row in rows.claims],
        [row[9] for _, row in rows.claims],
        [row[1] for _, row in rows.claims if row[12] is not None],
        [row[12] for _, row in rows.claims if row[12] is not None],
    )
    # What the ledger holds, then what the batch adds as it goes (a batch can hold a conflict of its own).
    event_of_claim: dict[object, object] = {r["claim_id"]: r["event_id"] for r in held}
    claim_of_event: dict[object, object] = {r["event_id"]: r["claim_id"] for r in held}
    claim_of_unit: dict[tuple[object, object], object] = {
        (r["activity_id"], r["ordinal"]): r["claim_id"] for r in held
    }
    for entry, row in rows.claims:
        claim_id, activity_id, event_id, ordinal = row[0], row[1], row[9], row[12]
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


async def _hold(conn: asyncpg.Connection, rows: _Rows) -> None:
    """After the batch's claims are inserted: hold the batch's entries whose claim the ledger still lacks."""
    if not rows.claim_of:
        return
    wanted = sorted({claim_id for _, claim_id in rows.claim_of.values()})
    present = {r["claim_id"] for r in await conn.fetch(_CLAIMS_HELD, wanted)}
    waiting = [
        (entry, claim_id)
        for entry, claim_id in rows.claim_of.values()
        if claim_id not in present and entry.key not in rows.conflicts
    ]
    if not waiting:
        return
    now = int(clock.now())
    held: list[tuple[object, ...]] = []
    for entry, claim_id in waiting:
        rows.hold(entry)
        held.append(
            (
                entry.stream,
                entry.entry_id,
                claim_id,
                entry.partition,
                msgspec.json.encode(entry.fields).decode(),
                now,
            )
        )
    await conn.execute(_HOLD, *_columns(held, 6))


async def _release(conn: asyncpg.Connection, query: str, *args: object) -> int:
    """Take out what ``query`` finds waiting and apply it, in a savepoint: all at once, or, should Postgres refuse
    that, each entry in a savepoint of its own, one it refuses (its data, once its claim came) going to
    ``conflicts`` instead of failing every batch that releases it. How many entries were applied."""
    released = [
        Entry(r["stream"], r["entry_id"], msgspec.json.decode(r["fields"]))
        for r in await conn.fetch(query, *args)
    ]
    if not released:
        return 0
    try:
        async with conn.transaction():
            rows = collect(released)
            await _check_versions(conn, rows)
            await _write(conn, rows)
        return len(released)
    except ENTRY_FAULTS:
        pass
    applied = 0
    for entry in released:
        try:
            async with conn.transaction():
                rows = collect([entry])
                await _check_versions(conn, rows)
                await _write(conn, rows)
            applied += 1
        except ENTRY_FAULTS as exc:
            refused = _Rows()
            refused.reject(entry, f"refused by Postgres when its claim came: {exc!r}")
            await _write(conn, refused)
    return applied


async def _check_versions(conn: asyncpg.Connection, rows: _Rows) -> None:
    """A coupon's versions in order: each version is one event; another event claiming a version the ledger
    (or the batch) already holds for the coupon is a conflict, and none of its coupons is written."""
    events = [(entry, row) for entry, row in rows.coupon_events if entry.key not in rows.held]
    if not events:
        return
    held = await conn.fetch(
        _VERSIONS_HOLDING,
        [row[0] for _, row in events],
        [row[1] for _, row in events],
    )
    holders: dict[tuple[object, object], object] = {
        (r["coupon_id"], r["version"]): r["event_id"] for r in held
    }
    for entry, row in events:
        holder = holders.setdefault((row[0], row[1]), row[2])
        if holder != row[2]:
            rows.reject(entry, f"coupon {row[0]} version {row[1]} already held by event {holder}")


def _newest(rows: list[tuple[object, ...]], key_width: int, version_at: int) -> list[tuple[object, ...]]:
    """Each row's newest version in the batch (the key: its first ``key_width`` columns), in key order (so two
    workers never deadlock)."""
    newest: dict[tuple[str, ...], tuple[object, ...]] = {}
    for row in rows:
        key = tuple(str(part) for part in row[:key_width])
        held = newest.get(key)
        if held is None or int(str(held[version_at])) < int(str(row[version_at])):
            newest[key] = row
    return [newest[k] for k in sorted(newest)]


def _conflict_rows(rows: _Rows) -> list[tuple[object, ...]]:
    return [
        (
            entry.fields.get("id"),
            entry.partition,
            entry.entry_id,
            reason,
            msgspec.json.encode(entry.fields).decode(),
            entry.fields.get("activity"),
        )
        for entry, reason in rows.conflicts.values()
    ]


async def apply(conn: asyncpg.Connection, entries: list[Entry]) -> set[tuple[str, str]]:
    """Write a batch in one transaction; raises (and writes nothing) if an entry cannot be taken
    (``ENTRY_FAULTS``) or Postgres is away. Returns the entries the ledger's checks refused: recorded in
    ``conflicts``, written nowhere else (and not to be delivered)."""
    return await _apply(conn, entries)


async def _apply(conn: asyncpg.Connection, entries: list[Entry]) -> set[tuple[str, str]]:
    """``apply``: the batch, with what waited for the claims it commits; then, committed, what waits for the
    claims it commits or held for. Two transactions committing a claim and its entries at the same instant do
    not see each other's rows; whichever commits last finds the other's once committed."""
    rows = collect(entries)
    async with conn.transaction():
        await _check_claims(conn, rows)
        claims = rows.kept(rows.claims)
        if claims:
            await conn.execute(_INSERT_CLAIMS, *_columns(claims, 13))
        await _hold(conn, rows)
        await _check_versions(conn, rows)
        await _write(conn, rows)
        joined = {str(row[0]) for row in claims}
        if joined:
            await _release(conn, _RELEASE_FOR, sorted(joined))
        crash_point("before_commit")
    joined |= {claim_id for key, (_, claim_id) in rows.claim_of.items() if key in rows.held}
    if joined:
        async with conn.transaction():
            await _release(conn, _RELEASE_FOR, sorted(joined))
    return set(rows.conflicts)


async def _write(conn: asyncpg.Connection, rows: _Rows) -> None:
    """Every table's rows of what the checks kept, and the conflicts they found."""
    if rows.conflicts:
        await conn.execute(_INSERT_CONFLICTS, *_columns(_conflict_rows(rows), 6))
    idempotency = rows.kept(rows.idempotency)
    if idempotency:
        await conn.execute(_UPSERT_IDEMPOTENCY, *_columns(idempotency, 5))
    coupons = _newest(rows.kept(rows.coupons), 1, 6)
    if coupons:
        await conn.execute(_UPSERT_COUPONS, *_columns(coupons, 14))
    coupon_events = rows.kept(rows.coupon_events)
    if coupon_events:
        await conn.execute(
            _INSERT_COUPON_EVENTS, *_columns(sorted(coupon_events, key=lambda r: (str(r[0]), r[1])), 7)
        )
    redeemed_codes = rows.kept(rows.redeemed_codes)
    if redeemed_codes:
        await conn.execute(_REDEEM_CODES, *_columns(sorted(redeemed_codes, key=lambda r: str(r[0])), 4))
    if rows.batch_changes:
        changed = sorted(rows.batch_changes)
        await conn.execute(
            _BATCH_CHANGES,
            changed,
            [rows.batch_changes[b][0] for b in changed],
            [rows.batch_changes[b][1] for b in changed],
        )
    orders = _newest(rows.kept(rows.orders), 2, 8)
    if orders:
        await conn.execute(_UPSERT_ORDERS, *_columns(orders, 11))
    if rows.audit:
        await conn.execute(_INSERT_AUDIT, *_columns(rows.audit, 9))
    if rows.blocklist:
        ordered_blocklist = [rows.blocklist[k] for k in sorted(rows.blocklist)]
        await conn.execute(_UPSERT_BLOCKLIST, *_columns(ordered_blocklist, 6))
    if rows.marks:
        names = sorted(rows.marks)
        await conn.execute(_UPSERT_MARKS, names, [rows.marks[n] for n in names])


@dataclass
class Written:
    """What became of a batch: entries that failed on their own account ((stream, entry id) -> reason: an id
    is unique only within its stream), entries the ledger's checks put into ``conflicts``, and the claims whose
    coupons the ledger already holds (their ``delivered`` event is committed: nothing left to deliver; one held
    for its claim until now is in the wallet too, unless Redis lost it, and then the wallet is behind and its
    restore, which applies what waited first, rebuilds it)."""

    failed: dict[tuple[str, str], str] = field(default_factory=dict)
    conflicts: set[tuple[str, str]] = field(default_factory=set)
    delivered: set[str] = field(default_factory=set)

    def deliverable(self, entries: list[Entry]) -> list[Entry]:
        return [
            e
            for e in entries
            if e.key not in self.failed
            and e.key not in self.conflicts
            and e.fields.get("claim_id") not in self.delivered
        ]

    def settled(self, entries: list[Entry]) -> list[Entry]:
        """Written or recorded as a conflict: to be acknowledged."""
        return [e for e in entries if e.key not in self.failed]


async def write(conn: asyncpg.Connection, entries: list[Entry]) -> Written:
    """The batch in one transaction; if an entry breaks it on its own account, each entry alone."""
    try:
        written = Written(conflicts=await _apply(conn, entries))
    except ENTRY_FAULTS:
        return await apply_one_by_one(conn, entries)
    written.delivered = await delivered_claims(conn, entries)
    return written


async def delivered_claims(conn: asyncpg.Connection, entries: list[Entry]) -> set[str]:
    """The batch's claims whose coupons the ledger holds: their ``delivered`` event, which the same script wrote
    with the coupons, is committed (in this batch or before), so the worker need not deliver them again; if Redis
    later lost them, restore rebuilds them from the ledger. Without this every claim cost a ``deliver`` call
    that changed nothing, since the gateway delivers before it answers."""
    claim_ids = [e.fields["claim_id"] for e in entries if e.type in DELIVERING and "claim_id" in e.fields]
    if not claim_ids:
        return set()
    rows = await conn.fetch(_CLAIMS_WITH_COUPONS, claim_ids)
    return {r["claim_id"] for r in rows}


async def release_held(conn: asyncpg.Connection) -> int:
    """Apply what waits for any claim the ledger now holds: the entries a batch held while another committed
    their claim unseen. The worker calls it every second, reconcile and restore after their drains. How many
    entries it applied."""
    async with conn.transaction():
        return await _release(conn, _RELEASE_ALL)


async def apply_one_by_one(conn: asyncpg.Connection, entries: list[Entry]) -> Written:
    """After a batch failed on an entry's account: apply each entry alone; every entry not failing on its
    own is written."""
    written = Written()
    for entry in entries:
        try:
            written.conflicts |= await apply(conn, [entry])
        except EntryFault as fault:
            written.failed[entry.key] = fault.reason
        except ENTRY_FAULTS as exc:
            written.failed[entry.key] = f"refused by Postgres: {exc!r}"
    return written
