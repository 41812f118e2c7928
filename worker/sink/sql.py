"""The sink's statements. Writes take their rows as one array per column (``rows.unnest``), in the order of the
row's named tuple."""

from __future__ import annotations

from worker.sink.rows import (
    AuditRow,
    BatchChangeRow,
    BlocklistRow,
    ClaimRow,
    ConflictRow,
    CouponArchivedRow,
    CouponEventRow,
    CouponRow,
    HeldRow,
    IdempotencyRow,
    MarkRow,
    OrderArchivedRow,
    OrderRow,
    RedeemedCodeRow,
    columns,
    unnest,
)

INSERT_CLAIMS = f"""
INSERT INTO claims ({columns(ClaimRow)})
SELECT * FROM {unnest(ClaimRow)}
ON CONFLICT (claim_id) DO NOTHING
"""
UPSERT_IDEMPOTENCY = f"""
INSERT INTO idempotency_records ({columns(IdempotencyRow)})
SELECT * FROM {unnest(IdempotencyRow)}
ON CONFLICT (redis_key) DO UPDATE SET body_hash = excluded.body_hash, answer = excluded.answer,
    expires_at = excluded.expires_at
WHERE idempotency_records.expires_at < excluded.expires_at
"""
UPSERT_COUPONS = f"""
INSERT INTO coupons AS c ({columns(CouponRow)})
SELECT * FROM {unnest(CouponRow)}
ON CONFLICT (coupon_id) DO UPDATE SET status = excluded.status, version = excluded.version,
    updated_at = excluded.updated_at, order_id = excluded.order_id, locked_until = excluded.locked_until,
    discount = excluded.discount
WHERE c.version < excluded.version
"""
INSERT_COUPON_EVENTS = f"""
INSERT INTO coupon_events ({columns(CouponEventRow)})
SELECT * FROM {unnest(CouponEventRow)}
ON CONFLICT (coupon_id, version) DO NOTHING
"""
UPSERT_ORDERS = f"""
INSERT INTO orders AS o ({columns(OrderRow)})
SELECT * FROM {unnest(OrderRow)}
ON CONFLICT (user_id, order_id) DO UPDATE SET coupon_id = excluded.coupon_id, status = excluded.status,
    discount = excluded.discount, split = excluded.split, locked_until = excluded.locked_until,
    returned = excluded.returned, version = excluded.version, updated_at = excluded.updated_at
WHERE o.version < excluded.version
"""
INSERT_AUDIT = f"""
INSERT INTO audit ({columns(AuditRow)})
SELECT u.event_id, u.partition, u.seq, u.at, u.operator, u.action, u.target, nullif(u.before, '')::jsonb,
    nullif(u.after, '')::jsonb
FROM {unnest(AuditRow)} AS u({columns(AuditRow)})
ON CONFLICT DO NOTHING
"""
INSERT_CONFLICTS = f"""
INSERT INTO conflicts ({columns(ConflictRow)})
SELECT * FROM {unnest(ConflictRow)}
ON CONFLICT (partition, entry_id) DO NOTHING
"""
# The ledger's own checks, each independent of the order in which two workers commit a stream's batches:
# an id already held for another claim, an ordinal (a pack's place in its activity's sales) held by another
# claim, a coupon version already held by another event.
# Three index lookups, not one OR: Postgres cannot combine the row comparison with the others in a bitmap OR, and
# scanned the whole table for every batch (a batch's write grew from 10 ms to 140 ms over the first 15,000 rows).
CLAIMS_HOLDING = """
SELECT claim_id, event_id, activity_id, ordinal FROM claims WHERE claim_id = ANY($1::text[])
UNION
SELECT claim_id, event_id, activity_id, ordinal FROM claims WHERE event_id = ANY($2::text[])
UNION
SELECT c.claim_id, c.event_id, c.activity_id, c.ordinal
FROM claims AS c JOIN unnest($3::text[], $4::bigint[]) AS u(activity_id, ordinal)
  ON c.activity_id = u.activity_id AND c.ordinal = u.ordinal
"""
CLAIMS_HELD = """
SELECT claim_id FROM claims WHERE claim_id = ANY($1::text[])
"""
HOLD = f"""
INSERT INTO held_entries ({columns(HeldRow)})
SELECT * FROM {unnest(HeldRow)}
ON CONFLICT (stream, entry_id) DO NOTHING
"""
# What waits for these claims, where the ledger holds them (by the claim's index: the batch's own cost, whatever
# else waits); a row another transaction is releasing is skipped, not waited for (and not taken twice).
RELEASE_FOR = """
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
RELEASE_ALL = """
DELETE FROM held_entries AS h
WHERE (h.stream, h.entry_id) IN (
    SELECT w.stream, w.entry_id FROM held_entries AS w JOIN claims AS c ON c.claim_id = w.claim_id
    ORDER BY w.stream, w.entry_id FOR UPDATE OF w SKIP LOCKED
)
RETURNING h.stream, h.entry_id, h.fields
"""
CLAIMS_WITH_COUPONS = """
SELECT DISTINCT claim_id FROM coupons WHERE claim_id = ANY($1::text[])
"""
VERSIONS_HOLDING = """
SELECT coupon_id, version, event_id FROM coupon_events
WHERE (coupon_id, version) IN (SELECT * FROM unnest($1::text[], $2::int[]))
"""
REDEEM_CODES = f"""
UPDATE codes AS k SET redeemed_by = u.user_id, claim_id = u.claim_id, redeemed_at = u.at
FROM {unnest(RedeemedCodeRow)} AS u({columns(RedeemedCodeRow)})
WHERE k.code_hash = u.code_hash AND k.redeemed_by IS NULL
"""
BATCH_CHANGES = f"""
UPDATE code_batches AS b SET reserved = b.reserved OR u.reserved, voided = b.voided OR u.voided,
    state = CASE WHEN u.voided THEN 'void' ELSE b.state END
FROM {unnest(BatchChangeRow)} AS u({columns(BatchChangeRow)})
WHERE b.batch_id = u.batch_id
"""
# A coupon or order that left Redis (retain_orders, retain_coupons), at the version it left with: a row already
# archived, or moved on since (a restore that brought it back and changed it), keeps what it has.
ARCHIVE_COUPONS = f"""
UPDATE coupons AS c SET archived_at = u.at
FROM {unnest(CouponArchivedRow)} AS u({columns(CouponArchivedRow)})
WHERE c.coupon_id = u.coupon_id AND c.version = u.version AND c.archived_at IS NULL
"""
ARCHIVE_ORDERS = f"""
UPDATE orders AS o SET archived_at = u.at
FROM {unnest(OrderArchivedRow)} AS u({columns(OrderArchivedRow)})
WHERE o.user_id = u.user_id AND o.order_id = u.order_id AND o.version = u.version AND o.archived_at IS NULL
"""
UPSERT_MARKS = f"""
INSERT INTO partition_marks AS m ({columns(MarkRow)})
SELECT * FROM {unnest(MarkRow)}
ON CONFLICT (partition) DO UPDATE SET seq = greatest(m.seq, excluded.seq)
"""
UPSERT_BLOCKLIST = f"""
INSERT INTO blocklist AS b ({columns(BlocklistRow)})
SELECT * FROM {unnest(BlocklistRow)}
ON CONFLICT (kind, id) DO UPDATE SET present = excluded.present, added_at = excluded.added_at, by = excluded.by,
    seq = excluded.seq
WHERE b.seq < excluded.seq
"""
