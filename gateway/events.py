"""The events the scripts append to their partitions' streams: one declared shape per event type, versioned.

A script's ``XADD`` writes flat string fields: the envelope (``type``, ``v``, ``id``, ``seq``, ``at``) and the
type's own fields. ``decode`` turns them into its event, checked: integers become integers, JSON fields (answers,
id lists, before and after) their structs, a field missing or unknown fails, and "" is None in a field declared
``X | None``, elsewhere an empty string (or a failure: an integer). docs/events.md is this schema for people and
outbound events' payload contract; a test keeps the two in step, another decodes what every script appends.

Versions (docs/events.md, "Versions"): an event carries ``v``, its script's ``SCHEMA_VERSION``; a reader accepts
it and ``PREVIOUS_VERSION`` (1: version 2's fields, written before ``v``), so a gateway and a worker one version
apart run side by side. A change to an event's fields bumps the version (``decode`` turns the previous one's into
the current shape); a newer version, or a new type (which keeps the version), fails an older reader's decode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec
from msgspec import Meta

SCHEMA_VERSION = 2
PREVIOUS_VERSION = 1


# --- JSON payloads the events carry (and the gateway answers with) ----------------------------------------------


class Coupon(msgspec.Struct, forbid_unknown_fields=True):
    """A coupon as a claim's answer names it."""

    coupon_id: str
    template_id: str
    valid_from: int
    valid_until: int


class ClaimAnswer(msgspec.Struct, forbid_unknown_fields=True):
    """A claim's (or a code redeem's) answer: the pack's coupons, as the claim script builds it."""

    claim_id: str
    coupons: list[Coupon]


class GrantResult(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    user_id: str
    claim_id: str | None = None
    error: str | None = None


class GrantAnswer(msgspec.Struct, forbid_unknown_fields=True):
    results: list[GrantResult]


class Share(msgspec.Struct):
    """One cart line's part of a coupon's discount."""

    sku: str
    amount: int


# An activity's hot config as put_activity mirrors it (or the fields a patch set): strings and whole numbers.
ConfigFields = dict[str, str | int]


class StockLeft(msgspec.Struct, forbid_unknown_fields=True):
    stock_left: int


class ActivityStatus(msgspec.Struct, forbid_unknown_fields=True):
    status: str


# --- the envelope -------------------------------------------------------------------------------------------


class Event(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    """What every event carries; ``type`` is the tag (each subclass's ``tag``)."""

    # An entry without ``v`` is version 1, written before the version was.
    v: Annotated[int, Meta(ge=PREVIOUS_VERSION, le=SCHEMA_VERSION)] = 1
    event_id: str = msgspec.field(name="id")  # gateway-made, unique per event
    seq: int  # the partition's sequence, bumped by the same script
    at: int  # unix seconds (the ARGV ``now``)


# --- activities' streams ({a:X}) ----------------------------------------------------------------------------


class ActivityCreated(Event, tag="activity_created"):
    activity_id: str = msgspec.field(name="activity")
    operator: str = msgspec.field(name="by")
    before: None  # always ""
    after: ConfigFields  # the hot config mirrored
    allow: list[str]


class ActivityPatched(Event, tag="activity_patched"):
    activity_id: str = msgspec.field(name="activity")
    operator: str = msgspec.field(name="by")
    before: dict[str, str | int | None]  # None: the field was not set
    after: ConfigFields


class StatusChanged(Event, tag="status_changed"):
    activity_id: str = msgspec.field(name="activity")
    operator: str = msgspec.field(name="by")
    before: ActivityStatus
    after: ActivityStatus


class StockChanged(Event, tag="stock_changed"):
    activity_id: str = msgspec.field(name="activity")
    operator: str = msgspec.field(name="by")
    before: StockLeft
    after: StockLeft
    delta: int


class CodeBatchChanged(Event):
    activity_id: str = msgspec.field(name="activity")
    operator: str = msgspec.field(name="by")
    batch_id: str = msgspec.field(name="batch")
    count: int
    before: StockLeft
    after: StockLeft


class CodesReserved(CodeBatchChanged, tag="codes_reserved"):
    pass


class CodesVoided(CodeBatchChanged, tag="codes_voided"):
    pass


class Claimed(Event, tag="claimed"):
    activity_id: str = msgspec.field(name="activity")
    claim_id: str
    user_id: str = msgspec.field(name="user")
    device_id: str = msgspec.field(name="device")  # "" for a grant
    channel: str
    mode: str  # claim or grant
    operator: str | None = msgspec.field(name="by")  # a grant's operator
    answer: ClaimAnswer
    ordinal: int  # the pack's place in the activity's sales
    idem_key: str | None = msgspec.field(name="idem")  # the idempotency record's Redis key, when keyed
    idem_hash: str
    idem_expires: int | None

    def __post_init__(self) -> None:
        if (self.idem_key is None) != (self.idem_expires is None):
            raise ValueError("idem and idem_expires are written together")


class GrantCallRecorded(Event, tag="grant_call_recorded"):
    activity_id: str = msgspec.field(name="activity")
    operator: str = msgspec.field(name="by")
    idem_key: str = msgspec.field(name="idem")
    idem_hash: str
    idem_expires: int
    answer: GrantAnswer


# --- wallets' streams ({w:n}) -------------------------------------------------------------------------------


class Delivered(Event, tag="delivered"):
    activity_id: str = msgspec.field(name="activity")
    claim_id: str
    user_id: str = msgspec.field(name="user")
    version: int  # the coupons' version (1)
    answer: ClaimAnswer


class CouponChanged(Event):
    """A checkout change: one coupon (its record after the change) and the order holding it."""

    user_id: str = msgspec.field(name="user")
    activity_id: str = msgspec.field(name="activity")
    coupon_id: str = msgspec.field(name="coupon")
    template_id: str = msgspec.field(name="template")
    claim_id: str = msgspec.field(name="claim")
    valid_from: int
    valid_until: int
    status: str
    version: int | None  # None: the coupon did not change (a refund that returns nothing)
    order_id: str = msgspec.field(name="order")
    order_status: str | None  # None: the order did not change (lock_expired of an order since moved on)
    order_version: int | None
    discount: int | None
    split: list[Share] | None
    locked_until: int | None
    returned: bool | None  # refunded only

    def __post_init__(self) -> None:
        if self.order_status is not None and None in (self.order_version, self.discount, self.split):
            raise ValueError("an order's change carries its order_version, discount and split")


class Locked(CouponChanged, tag="locked"):
    pass


class Redeemed(CouponChanged, tag="redeemed"):
    pass


class Released(CouponChanged, tag="released"):
    pass


class Refunded(CouponChanged, tag="refunded"):
    pass


class LockExpired(CouponChanged, tag="lock_expired"):
    pass


class OrderArchived(Event, tag="order_archived"):
    """A finished order left Redis (the retention passed): the ledger answers for it from now on."""

    user_id: str = msgspec.field(name="user")
    order_id: str = msgspec.field(name="order")
    status: str  # the order's final status
    order_version: int


class CouponArchived(Event, tag="coupon_archived"):
    """A final coupon left Redis and its owner's index (the retention passed)."""

    user_id: str = msgspec.field(name="user")
    activity_id: str = msgspec.field(name="activity")
    coupon_id: str = msgspec.field(name="coupon")
    status: str  # the coupon's final status
    version: int


class Expired(Event, tag="expired"):
    """An available coupon past its validity, recorded by the expiry sweep; its id is ``expired:<coupon id>``, so
    a repeat is the same event."""

    user_id: str = msgspec.field(name="user")
    activity_id: str = msgspec.field(name="activity")
    coupon_id: str = msgspec.field(name="coupon")
    template_id: str = msgspec.field(name="template")
    claim_id: str = msgspec.field(name="claim")
    valid_from: int
    valid_until: int
    version: int  # the coupon's version after the change


class IdempotencyRecorded(Event, tag="idempotency_recorded"):
    idem_key: str = msgspec.field(name="idem")
    idem_hash: str
    answer: ClaimAnswer
    idem_expires: int


# --- code buckets' streams ({c:n}) --------------------------------------------------------------------------


class CodeBucketChanged(Event):
    batch_id: str = msgspec.field(name="batch")
    count: int  # codes written, dropped or retired now


class CodesStored(CodeBucketChanged, tag="codes_stored"):
    pass


class CodesDropped(CodeBucketChanged, tag="codes_dropped"):
    pass


class CodesRetired(CodeBucketChanged, tag="codes_retired"):
    """A batch's codes (redeemed ones' tombstones too) left the bucket, its window ended the retention ago."""


class CodeRedeemed(Event, tag="code_redeemed"):
    code_hash: str = msgspec.field(name="code")
    batch_id: str = msgspec.field(name="batch")
    activity_id: str = msgspec.field(name="activity")
    claim_id: str
    user_id: str = msgspec.field(name="user")
    device_id: str = msgspec.field(name="device")
    answer: ClaimAnswer


# --- the blocklist's stream, and any partition's --------------------------------------------------------------


class BlocklistChanged(Event, tag="blocklist_changed"):
    operator: str = msgspec.field(name="by")
    action: Literal["add", "remove"]
    users: list[str]  # the user ids this change added or removed
    devices: list[str]


class Restored(Event, tag="restored"):
    operator: str = msgspec.field(name="by")
    after: dict[str, int]  # what the restore wrote: at_least (the ledger's mark) and counts


AnyEvent = (
    ActivityCreated
    | ActivityPatched
    | StatusChanged
    | StockChanged
    | CodesReserved
    | CodesVoided
    | Claimed
    | GrantCallRecorded
    | Delivered
    | Locked
    | Redeemed
    | Released
    | Refunded
    | LockExpired
    | Expired
    | OrderArchived
    | CouponArchived
    | IdempotencyRecorded
    | CodesStored
    | CodesDropped
    | CodesRetired
    | CodeRedeemed
    | BlocklistChanged
    | Restored
)
EVENT_TYPES: tuple[type[Event], ...] = get_args(AnyEvent)


def type_of(kind: type[Event] | Event) -> str:
    """The event's ``type`` as the scripts write it."""
    cls = kind if isinstance(kind, type) else type(kind)
    return _TAGS.get(cls) or str(cls.__struct_config__.tag)


_TAGS = {kind: str(kind.__struct_config__.tag) for kind in EVENT_TYPES}


# --- decoding -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shape:
    """How one type's stream fields become its struct's input."""

    kind: type[Event]
    empty_is_none: tuple[str, ...]  # fields whose "" means None
    json: tuple[tuple[str, msgspec.json.Decoder[Any]], ...]  # fields holding JSON, with a decoder for each


def _shape(kind: type[Event]) -> _Shape:
    empty: list[str] = []
    json: list[tuple[str, msgspec.json.Decoder[Any]]] = []
    for field in msgspec.structs.fields(kind):
        alternatives = get_args(field.type) if get_origin(field.type) in (Union, UnionType) else (field.type,)
        if NoneType in alternatives or None in alternatives:
            empty.append(field.encode_name)
        value = [a for a in alternatives if a not in (NoneType, None)]
        if len(value) == 1 and (
            get_origin(value[0]) in (list, dict)
            or (isinstance(value[0], type) and issubclass(value[0], msgspec.Struct))
        ):
            json.append((field.encode_name, msgspec.json.Decoder(value[0])))
    return _Shape(kind, tuple(empty), tuple(json))


_SHAPES = {type_of(kind): _shape(kind) for kind in EVENT_TYPES}


def optional_fields(kind: type[Event] | Event) -> tuple[str, ...]:
    """The type's fields a script writes as "" when they have no value (declared ``X | None``)."""
    return _SHAPES[type_of(kind)].empty_is_none


def decode(fields: Mapping[str, str]) -> Event:
    """A stream entry's fields as its event; raises ``msgspec.ValidationError`` when they do not fit it."""
    kind = fields.get("type", "")
    shape = _SHAPES.get(kind)
    if shape is None:
        raise msgspec.ValidationError(f"unknown event type {kind!r}")
    given: dict[str, Any] = dict(fields)
    for name in shape.empty_is_none:
        if given.get(name) == "":
            given[name] = None
    for name, decoder in shape.json:
        raw = given.get(name)
        if isinstance(raw, str):  # a missing field is reported by convert; None is the field's empty value
            try:
                given[name] = decoder.decode(raw)
            except msgspec.DecodeError as exc:
                raise msgspec.ValidationError(f"{exc} - in the JSON of `{name}`") from exc
    return msgspec.convert(given, shape.kind, strict=False)
