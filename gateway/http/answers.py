"""Success bodies as the OpenAPI document describes them; tests decode real answers into these types."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from gateway.catalog.campaign import Activity, Template
from gateway.events import ClaimAnswer
from gateway.events import GrantAnswer as GrantResults
from gateway.events import GrantResult as GrantOutcome

__all__ = ["ClaimAnswer", "GrantOutcome", "GrantResults"]


class ActivityRecord(Activity, kw_only=True, forbid_unknown_fields=True):
    """An activity as it stands now: ``status`` live (``ended`` once ``ends_at`` has passed, whatever else it
    was), ``stock`` the packs made available in all (created, plus restocks, minus removals; restocks may take it
    past the figure a create allows), ``stock_left`` the packs not yet handed out or held by code batches."""

    stock: Annotated[int, Meta(ge=0)]
    stock_left: int


class TemplatePage(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    items: list[Template]
    next_cursor: str | None = None


class ActivityPage(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    items: list[ActivityRecord]
    next_cursor: str | None = None


class ActivityStats(msgspec.Struct, forbid_unknown_fields=True):
    stock_left: int
    claimed: int
    persisted: int
    face_value_out: int
    lag: int  # this activity's events not yet persisted (its stream: undelivered + unacknowledged)
    conflicts: int  # entries of this activity the ledger's checks refused (table conflicts)
    locked: int  # coupons locked to orders now
    redeemed: int  # coupons redeemed
    redeemed_value: int  # the discounts redeemed coupons gave, in cents


class LedgerStats(msgspec.Struct, forbid_unknown_fields=True):
    """``GET /v1/admin/stats``: the whole deployment's persistence and load figures."""

    lag: int  # stream entries not yet persisted, over every stream (as last measured for shedding)
    lag_limit: int
    memory_used: int  # Redis bytes
    memory_max: int  # Redis maxmemory (0: none)
    memory_limit: float  # the fraction of maxmemory past which claims are shed
    shedding: str  # why claims are shed now; "" when they are not
    conflicts: int  # entries the ledger's checks refused, kept in table conflicts
    dead_letters: int  # entries in the dead-letter streams, waiting for a fix and `claimgate replay-dead`
    fence: str  # "open", or why state changes are paused
    measured_at: float


class BlocklistItem(msgspec.Struct, forbid_unknown_fields=True):
    kind: str
    id: str
    added_at: int
    by: str


class BlocklistPage(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    items: list[BlocklistItem]
    next_cursor: str | None = None


class BlocklistChanged(msgspec.Struct, forbid_unknown_fields=True):
    changed: int


class Health(msgspec.Struct):
    status: str


class Durability(msgspec.Struct, omit_defaults=True):
    setting: str  # fast or safe (CLAIMGATE_DURABILITY)
    wait_replicas: int
    redis: str  # what Redis runs: "appendonly yes, appendfsync everysec", or unknown
    problem: str | None = None  # Redis runs weaker than the setting asks, and what that can cost


class PublicReadiness(msgspec.Struct, omit_defaults=True):
    status: str  # ready, not ready
    missing: list[str] | None = None  # of redis, scripts, fence


class Readiness(msgspec.Struct, omit_defaults=True):
    status: str
    redis: str
    postgres: str
    fence: str
    durability: Durability | None = None
    missing: list[str] | None = None


class WalletItem(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    coupon_id: str
    template_id: str
    activity_id: str
    status: str  # available, locked, redeemed or expired (available past its validity)
    valid_from: int
    valid_until: int
    order_id: str | None = None  # the order holding it (locked, redeemed)


class WalletPage(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    items: list[WalletItem]
    next_cursor: str | None = None
