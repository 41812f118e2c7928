"""Each event type's rows: one small function per type (the table ``APPLY``), fed the decoded event and its raw
entry. Text the ledger keeps byte for byte (answers a replay returns, a split, an audit's before and after) is
taken from the entry's fields as the script wrote it; everything else from the event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from gateway.events import (
    ActivityCreated,
    ActivityPatched,
    BlocklistChanged,
    Claimed,
    CodeBatchChanged,
    CodeRedeemed,
    CodesDropped,
    CodesReserved,
    CodesRetired,
    CodesStored,
    CodesVoided,
    CouponArchived,
    CouponChanged,
    Delivered,
    Event,
    Expired,
    GrantCallRecorded,
    IdempotencyRecorded,
    Locked,
    LockExpired,
    OrderArchived,
    Redeemed,
    Refunded,
    Released,
    Restored,
    StatusChanged,
    StockChanged,
    type_of,
)
from worker.events import Entry
from worker.sink.rows import (
    AuditRow,
    BatchChangeRow,
    BlocklistRow,
    ClaimRow,
    CouponArchivedRow,
    CouponEventRow,
    CouponRow,
    IdempotencyRow,
    OrderArchivedRow,
    OrderRow,
    RedeemedCodeRow,
    Rows,
)

# Events whose coupons the worker delivers into the wallet (idempotent) unless the ledger already holds them.
DELIVERING = (Claimed, CodeRedeemed)


class EntryFault(Exception):
    """An entry the sink cannot take on its own account (undecodable, an unknown type)."""

    def __init__(self, entry: Entry, reason: str) -> None:
        super().__init__(reason)
        self.entry = entry
        self.reason = reason


def collect(entries: list[Entry]) -> Rows:
    rows = Rows()
    for entry in entries:
        try:
            event = entry.event  # msgspec.ValidationError when the fields do not fit the schema
            APPLY[type(event)](rows, entry, event)
            partition = entry.partition
        except (KeyError, ValueError, msgspec.DecodeError) as exc:
            raise EntryFault(entry, f"undecodable: {exc!r}") from exc
        rows.marks[partition] = max(rows.marks.get(partition, 0), event.seq)
    return rows


def _claimed(rows: Rows, entry: Entry, event: Claimed) -> None:
    answer = entry.fields["answer"]
    claim = ClaimRow(
        event.claim_id,
        event.activity_id,
        event.user_id,
        event.device_id,
        event.channel,
        event.mode,
        event.operator,
        answer,
        event.at,
        event.event_id,
        entry.partition,
        event.seq,
        event.ordinal,
    )
    rows.claims.append((entry, claim))
    if event.idem_key is not None and event.idem_expires is not None:
        record = IdempotencyRow(event.idem_key, entry.partition, event.idem_hash, answer, event.idem_expires)
        rows.idempotency.append((entry, record))


def _code_redeemed(rows: Rows, entry: Entry, event: CodeRedeemed) -> None:
    claim = ClaimRow(
        event.claim_id,
        event.activity_id,
        event.user_id,
        event.device_id,
        "",
        "code",
        None,
        entry.fields["answer"],
        event.at,
        event.event_id,
        entry.partition,
        event.seq,
        None,
    )
    rows.claims.append((entry, claim))
    rows.redeemed_codes.append(
        (entry, RedeemedCodeRow(event.code_hash, event.user_id, event.claim_id, event.at))
    )


def _delivered(rows: Rows, entry: Entry, event: Delivered) -> None:
    answer, partition, kind = event.answer, entry.partition, type_of(event)
    rows.claim_of[entry.key] = (entry, answer.claim_id)
    for coupon in answer.coupons:
        row = CouponRow(
            coupon.coupon_id,
            event.user_id,
            event.activity_id,
            coupon.template_id,
            answer.claim_id,
            "available",
            event.version,
            coupon.valid_from,
            coupon.valid_until,
            event.at,
            partition,
            None,
            None,
            None,
        )
        rows.coupons.append((entry, row))
        history = CouponEventRow(
            coupon.coupon_id, event.version, event.event_id, kind, event.at, "available", None
        )
        rows.coupon_events.append((entry, history))


def _coupon_changed(rows: Rows, entry: Entry, event: CouponChanged) -> None:
    """Checkout's transitions, each on one coupon (its version moves, except a refund that returns nothing) and
    one order (its own version)."""
    rows.claim_of[entry.key] = (entry, event.claim_id)
    if event.version is not None:
        held = event.status in ("locked", "redeemed")
        coupon = CouponRow(
            event.coupon_id,
            event.user_id,
            event.activity_id,
            event.template_id,
            event.claim_id,
            event.status,
            event.version,
            event.valid_from,
            event.valid_until,
            event.at,
            entry.partition,
            event.order_id if held else None,
            event.locked_until,
            event.discount if held else None,
        )
        rows.coupons.append((entry, coupon))
        history = CouponEventRow(
            event.coupon_id,
            event.version,
            event.event_id,
            type_of(event),
            event.at,
            event.status,
            event.order_id,
        )
        rows.coupon_events.append((entry, history))
    if event.order_status is not None:
        assert event.discount is not None and event.order_version is not None  # the schema's rule
        order = OrderRow(
            event.user_id,
            event.order_id,
            event.coupon_id,
            event.order_status,
            event.discount,
            entry.fields["split"],
            event.locked_until,
            event.returned,
            event.order_version,
            entry.partition,
            event.at,
        )
        rows.orders.append((entry, order))


def _archived(rows: Rows, entry: Entry, event: CouponArchived | OrderArchived) -> None:
    """A final coupon or a finished order left Redis: the ledger answers for it from now on."""
    if isinstance(event, CouponArchived):
        rows.coupons_archived.append((entry, CouponArchivedRow(event.coupon_id, event.version, event.at)))
    else:
        order = OrderArchivedRow(event.user_id, event.order_id, event.order_version, event.at)
        rows.orders_archived.append((entry, order))


def _expired(rows: Rows, entry: Entry, event: Expired) -> None:
    """The expiry sweep's: the coupon expired at its new version (a coupon the claim of which the ledger lacks
    waits for it, as a checkout change does)."""
    rows.claim_of[entry.key] = (entry, event.claim_id)
    coupon = CouponRow(
        event.coupon_id,
        event.user_id,
        event.activity_id,
        event.template_id,
        event.claim_id,
        "expired",
        event.version,
        event.valid_from,
        event.valid_until,
        event.at,
        entry.partition,
        None,
        None,
        None,
    )
    rows.coupons.append((entry, coupon))
    history = CouponEventRow(
        event.coupon_id, event.version, event.event_id, type_of(event), event.at, "expired", None
    )
    rows.coupon_events.append((entry, history))


def _recorded(rows: Rows, entry: Entry, event: GrantCallRecorded | IdempotencyRecorded) -> None:
    record = IdempotencyRow(
        event.idem_key, entry.partition, event.idem_hash, entry.fields["answer"], event.idem_expires
    )
    rows.idempotency.append((entry, record))


def _marks_only(rows: Rows, entry: Entry, event: CodesStored | CodesDropped | CodesRetired) -> None:
    """Writes to code buckets whose rows the gateway wrote to Postgres first (or, retired codes, whose retirement the
    sweep records once every bucket is done): only their seq is the ledger's news."""


def _blocklist_changed(rows: Rows, entry: Entry, event: BlocklistChanged) -> None:
    present = event.action == "add"
    for who, ids in (("user", event.users), ("device", event.devices)):
        for ident in ids:
            held = rows.blocklist.get((who, ident))
            if held is None or held.seq < event.seq:
                rows.blocklist[(who, ident)] = BlocklistRow(
                    who, ident, present, event.at, event.operator, event.seq
                )
    change = msgspec.json.encode({"users": event.users, "devices": event.devices}).decode()
    action = f"blocklist_{event.action}"
    rows.audit.append(
        AuditRow(
            event.event_id,
            entry.partition,
            event.seq,
            event.at,
            event.operator,
            action,
            "blocklist",
            "",
            change,
        )
    )


Audited = ActivityCreated | ActivityPatched | StatusChanged | StockChanged | CodeBatchChanged | Restored


def _audited(action: str) -> Callable[[Rows, Entry, Audited], None]:
    """An operator's event, recorded in ``audit`` as ``action`` (target: the activity, or the partition restored)."""

    def add(rows: Rows, entry: Entry, event: Audited) -> None:
        target = entry.partition if isinstance(event, Restored) else event.activity_id
        fields = entry.fields
        before, after = fields.get("before", ""), fields.get("after", "")
        rows.audit.append(
            AuditRow(
                event.event_id,
                entry.partition,
                event.seq,
                event.at,
                event.operator,
                action,
                target,
                before,
                after,
            )
        )

    return add


def _batch_changed(action: str) -> Callable[[Rows, Entry, CodeBatchChanged], None]:
    """A code batch's packs taken from the activity's stock, or given back: the batch's flags, and the audit."""
    audit = _audited(action)

    def add(rows: Rows, entry: Entry, event: CodeBatchChanged) -> None:
        change = rows.batch_changes.get(event.batch_id, BatchChangeRow(event.batch_id, False, False))
        rows.batch_changes[event.batch_id] = BatchChangeRow(
            event.batch_id,
            change.reserved or isinstance(event, CodesReserved),
            change.voided or isinstance(event, CodesVoided),
        )
        audit(rows, entry, event)

    return add


APPLY: dict[type[Event], Callable[[Rows, Entry, Any], None]] = {
    Claimed: _claimed,
    CodeRedeemed: _code_redeemed,
    Delivered: _delivered,
    Locked: _coupon_changed,
    Redeemed: _coupon_changed,
    Released: _coupon_changed,
    Refunded: _coupon_changed,
    LockExpired: _coupon_changed,
    CouponArchived: _archived,
    OrderArchived: _archived,
    Expired: _expired,
    GrantCallRecorded: _recorded,
    IdempotencyRecorded: _recorded,
    CodesStored: _marks_only,
    CodesDropped: _marks_only,
    CodesRetired: _marks_only,
    BlocklistChanged: _blocklist_changed,
    ActivityCreated: _audited("create_activity"),
    StatusChanged: _audited("set_status"),
    StockChanged: _audited("change_stock"),
    ActivityPatched: _audited("patch_activity"),
    Restored: _audited("restore"),
    CodesReserved: _batch_changed("reserve_codes"),
    CodesVoided: _batch_changed("void_codes"),
}
