"""The rows a batch writes: one named tuple per table, its fields the columns in the order its statement's
``unnest`` takes them (the statements are built from these, so the order is written once), and ``Rows``, what a
batch collects before its checks and writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import NoneType, UnionType
from typing import Annotated, Any, NamedTuple, TypeVar, get_args, get_origin, get_type_hints

from worker.events import Entry

# Postgres types of columns that are not a Python type's default (str text, int bigint, bool boolean).
INT4 = "int"
JSONB = "jsonb"
_PG_TYPES: dict[object, str] = {str: "text", int: "bigint", bool: "boolean"}


class ClaimRow(NamedTuple):
    claim_id: str
    activity_id: str
    user_id: str
    device_id: str
    channel: str
    mode: str
    operator: str | None
    answer: str
    claimed_at: int
    event_id: str
    partition: str
    seq: int
    ordinal: int | None


class IdempotencyRow(NamedTuple):
    redis_key: str
    partition: str
    body_hash: str
    answer: str
    expires_at: int


class CouponRow(NamedTuple):
    coupon_id: str
    user_id: str
    activity_id: str
    template_id: str
    claim_id: str
    status: str
    version: Annotated[int, INT4]
    valid_from: int
    valid_until: int
    updated_at: int
    partition: str
    order_id: str | None
    locked_until: int | None
    discount: int | None


class CouponEventRow(NamedTuple):
    coupon_id: str
    version: Annotated[int, INT4]
    event_id: str
    type: str
    at: int
    status: str
    order_id: str | None


class OrderRow(NamedTuple):
    user_id: str
    order_id: str
    coupon_id: str
    status: str
    discount: int
    split: str
    locked_until: int | None
    returned: bool | None
    version: Annotated[int, INT4]
    partition: str
    updated_at: int


class AuditRow(NamedTuple):
    event_id: str
    partition: str
    seq: int
    at: int
    operator: str
    action: str
    target: str
    before: str  # JSON text, "" for none
    after: str


class ConflictRow(NamedTuple):
    event_id: str | None
    partition: str
    entry_id: str
    reason: str
    entry: str  # the entry's fields as JSON
    activity: str | None


class HeldRow(NamedTuple):
    stream: str
    entry_id: str
    claim_id: str
    partition: str
    fields: Annotated[str, JSONB]
    held_at: int


class RedeemedCodeRow(NamedTuple):
    code_hash: str
    user_id: str
    claim_id: str
    at: int


class BatchChangeRow(NamedTuple):
    batch_id: str
    reserved: bool
    voided: bool


class BlocklistRow(NamedTuple):
    kind: str
    id: str
    present: bool
    added_at: int
    by: str
    seq: int


class CouponArchivedRow(NamedTuple):
    coupon_id: str
    version: int
    at: int


class OrderArchivedRow(NamedTuple):
    user_id: str
    order_id: str
    version: int
    at: int


class MarkRow(NamedTuple):
    partition: str
    seq: int


def _pg_type(annotation: object) -> str:
    if get_origin(annotation) is Annotated:
        return str(get_args(annotation)[1])
    if isinstance(annotation, UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not NoneType]
    return _PG_TYPES[annotation]


def columns(row: type[tuple[Any, ...]]) -> str:
    """The row's columns, in order: ``claim_id, activity_id, ...``."""
    return ", ".join(row._fields)  # type: ignore[attr-defined]


def unnest(row: type[tuple[Any, ...]]) -> str:
    """``unnest($1::text[], $2::text[], ...)``: one typed array parameter per column of the row."""
    hints = get_type_hints(row, include_extras=True)
    arrays = [f"${i}::{_pg_type(hints[name])}[]" for i, name in enumerate(row._fields, start=1)]  # type: ignore[attr-defined]
    return f"unnest({', '.join(arrays)})"


def arrays(rows: Sequence[tuple[Any, ...]], row: type[tuple[Any, ...]]) -> list[list[Any]]:
    """The rows as ``unnest``'s parameters: one list per column."""
    if not rows:
        return [[] for _ in row._fields]  # type: ignore[attr-defined]
    return [list(column) for column in zip(*rows, strict=True)]


R = TypeVar("R")


@dataclass
class Rows:
    """What a batch writes, each row with the entry it comes from (a rejected or held entry writes none)."""

    claims: list[tuple[Entry, ClaimRow]] = field(default_factory=list)
    idempotency: list[tuple[Entry, IdempotencyRow]] = field(default_factory=list)
    coupons: list[tuple[Entry, CouponRow]] = field(default_factory=list)
    coupon_events: list[tuple[Entry, CouponEventRow]] = field(default_factory=list)
    orders: list[tuple[Entry, OrderRow]] = field(default_factory=list)
    redeemed_codes: list[tuple[Entry, RedeemedCodeRow]] = field(default_factory=list)
    coupons_archived: list[tuple[Entry, CouponArchivedRow]] = field(default_factory=list)
    orders_archived: list[tuple[Entry, OrderArchivedRow]] = field(default_factory=list)
    batch_changes: dict[str, BatchChangeRow] = field(default_factory=dict)
    audit: list[AuditRow] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)
    blocklist: dict[tuple[str, str], BlocklistRow] = field(default_factory=dict)  # newest per entry
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

    def kept(self, rows: list[tuple[Entry, R]]) -> list[R]:
        return [row for entry, row in rows if entry.key not in self.conflicts and entry.key not in self.held]
