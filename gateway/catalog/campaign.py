"""Templates and activities: the admin bodies, their validation, and the hot config an activity mirrors."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from gateway.outcomes import DomainError, Outcome

NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"
Money = Annotated[int, Meta(ge=0, le=10**12)]
Time = Annotated[int, Meta(ge=0, le=2**40)]
Name = Annotated[str, Meta(min_length=1, max_length=128, pattern=NO_CONTROL_CHARACTERS)]
Label = Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_CONTROL_CHARACTERS)]
UserId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


def invalid(field: str, message: str) -> DomainError:
    return DomainError(Outcome.INVALID_REQUEST, f"{field}: {message}", extra={"field": field})


class TemplateIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: Name
    kind: Literal["cash", "threshold", "discount"]
    amount_off: Money | None = None
    percent_off: Annotated[int, Meta(ge=1, le=100)] | None = None
    max_off: Money | None = None
    min_spend: Money | None = None
    scope: Annotated[list[Label], Meta(max_length=100)] = []
    valid_from: Time | None = None
    valid_until: Time | None = None
    valid_days: Annotated[int, Meta(ge=1, le=3650)] | None = None

    def check(self) -> None:
        """The rules msgspec's types cannot say; raise ``invalid_request`` naming the field."""
        if self.kind in ("cash", "threshold"):
            if self.amount_off is None or self.amount_off == 0:
                raise invalid("amount_off", f"a {self.kind} template needs a positive amount_off")
            if self.percent_off is not None or self.max_off is not None:
                field = "percent_off" if self.percent_off is not None else "max_off"
                raise invalid(field, f"not allowed on a {self.kind} template")
            if self.kind == "threshold" and not self.min_spend:
                raise invalid("min_spend", "a threshold template needs a positive min_spend")
            if self.kind == "cash" and self.min_spend is not None:
                raise invalid("min_spend", "a cash template has no threshold")
        else:
            if self.percent_off is None:
                raise invalid("percent_off", "a discount template needs percent_off (1-100)")
            if self.amount_off is not None:
                raise invalid("amount_off", "not allowed on a discount template")
        window = self.valid_from is not None or self.valid_until is not None
        if window == (self.valid_days is not None):
            raise invalid("valid_days", "give exactly one of valid_days or valid_from with valid_until")
        if window:
            if self.valid_from is None or self.valid_until is None:
                raise invalid(
                    "valid_until" if self.valid_until is None else "valid_from", "both ends are needed"
                )
            if self.valid_until <= self.valid_from:
                raise invalid("valid_until", "must be after valid_from")

    def face_value(self) -> int | None:
        """What one coupon counts against a budget; None for a discount without a cap."""
        return self.amount_off if self.kind != "discount" else self.max_off


class Template(TemplateIn, kw_only=True):
    id: str
    created_by: str
    created_at: int


class PackItem(msgspec.Struct, forbid_unknown_fields=True):
    template_id: Label
    count: Annotated[int, Meta(ge=1, le=100)]


class Eligibility(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    new_within_days: Annotated[int, Meta(ge=1, le=36500)] | None = None
    first_order: bool | None = None
    min_orders: Annotated[int, Meta(ge=0, le=10**9)] | None = None
    tags: Annotated[list[Label], Meta(min_length=1, max_length=100)] | None = None
    users: Annotated[list[UserId], Meta(min_length=1, max_length=100_000)] | None = None

    def hot_rules(self) -> str:
        """The rules the claim script evaluates (the allow-list itself goes to its own set)."""
        rules: dict[str, object] = {}
        if self.new_within_days is not None:
            rules["new_within_days"] = self.new_within_days
        if self.first_order:
            rules["first_order"] = True
        if self.min_orders is not None:
            rules["min_orders"] = self.min_orders
        if self.tags:
            rules["tags"] = self.tags
        if self.users:
            rules["users"] = True
        return msgspec.json.encode(rules).decode() if rules else ""


class ActivityIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: Name
    pack: Annotated[list[PackItem], Meta(min_length=1, max_length=20)]
    starts_at: Time
    ends_at: Time
    stock: Annotated[int, Meta(ge=0, le=10**9)]
    per_user_limit: Annotated[int, Meta(ge=1, le=10**6)]
    per_device_limit: Annotated[int, Meta(ge=1, le=10**6)] | None = None
    eligibility: Eligibility | None = None
    budget: Money | None = None

    def check(self, templates: dict[str, Template]) -> int:
        """Validate against the referenced templates; return the face value of one pack."""
        if self.ends_at <= self.starts_at:
            raise invalid("ends_at", "must be after starts_at")
        seen: set[str] = set()
        face = 0
        uncapped = False
        for i, item in enumerate(self.pack):
            if item.template_id in seen:
                raise invalid(f"pack[{i}].template_id", "each template appears once; use count")
            seen.add(item.template_id)
            template = templates.get(item.template_id)
            if template is None:
                raise invalid(f"pack[{i}].template_id", f"no template {item.template_id!r}")
            value = template.face_value()
            uncapped = uncapped or value is None
            face += (value or 0) * item.count
        if self.budget is not None:
            if uncapped:
                raise DomainError(
                    Outcome.OVER_BUDGET, "A budgeted activity cannot hold a discount without max_off."
                )
            if face * self.stock > self.budget:
                raise DomainError(
                    Outcome.OVER_BUDGET, f"stock x face value {face * self.stock} exceeds the budget."
                )
        return face


class Activity(ActivityIn, kw_only=True):
    id: str
    status: Literal["active", "paused", "ended"]
    face_per_pack: int
    created_by: str
    created_at: int


def hot_config(activity: Activity, templates: dict[str, Template]) -> dict[str, object]:
    """What the claim script reads from ``{a:X}:act``."""
    pack = []
    for item in activity.pack:
        template = templates[item.template_id]
        entry: dict[str, object] = {"template_id": item.template_id, "count": item.count}
        if template.valid_days is not None:
            entry["valid_days"] = template.valid_days
        else:
            entry["valid_from"] = template.valid_from
            entry["valid_until"] = template.valid_until
        pack.append(entry)
    return {
        "name": activity.name,
        "budget": "" if activity.budget is None else activity.budget,
        "status": activity.status,
        "starts_at": activity.starts_at,
        "ends_at": activity.ends_at,
        "stock": activity.stock,
        "per_user_limit": activity.per_user_limit,
        "per_device_limit": activity.per_device_limit or 0,
        "elig": activity.eligibility.hot_rules() if activity.eligibility else "",
        "pack": msgspec.json.encode(pack).decode(),
        "face_per_pack": activity.face_per_pack,
    }


class ActivityPatch(msgspec.Struct, forbid_unknown_fields=True):
    """``PATCH /v1/admin/activities/{id}``: name any time; window and limits only before the start. A field
    left out is unchanged; ``null`` is not a value any of them takes."""

    name: Name | UnsetType = UNSET
    starts_at: Time | UnsetType = UNSET
    ends_at: Time | UnsetType = UNSET
    per_user_limit: Annotated[int, Meta(ge=1, le=10**6)] | UnsetType = UNSET
    per_device_limit: Annotated[int, Meta(ge=1, le=10**6)] | UnsetType = UNSET

    def changes(self) -> dict[str, object]:
        changed = {k: v for k, v in msgspec.structs.asdict(self).items() if v is not UNSET}
        if not changed:
            raise invalid(
                "name", "give at least one of name, starts_at, ends_at, per_user_limit, per_device_limit"
            )
        starts_at, ends_at = changed.get("starts_at"), changed.get("ends_at")
        if isinstance(starts_at, int) and isinstance(ends_at, int) and ends_at <= starts_at:
            raise invalid("ends_at", "must be after starts_at")
        return changed


class StockChange(msgspec.Struct, forbid_unknown_fields=True):
    delta: Annotated[int, Meta(ge=-(10**9), le=10**9)]

    def check(self) -> None:
        if self.delta == 0:
            raise invalid("delta", "must not be 0")


class BlocklistChange(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/admin/blocklist`` and ``/v1/admin/blocklist/remove``."""

    users: Annotated[list[UserId], Meta(max_length=10_000)] = []
    devices: Annotated[list[UserId], Meta(max_length=10_000)] = []

    def check(self) -> None:
        if not self.users and not self.devices:
            raise invalid("users", "give users, devices or both")
