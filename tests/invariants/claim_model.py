"""A plain Python model of claiming and granting, written from docs/product.md (not from the Lua).

The contract, as this model reads it:

- Idempotency-Key: scoped to the caller and the target (user and activity for a claim; for a grant the script
  sees one key per operator, activity and granted user). Checked before anything else. The same key with the
  same body answers the first success again and takes nothing, even after sell-out, a pause or the end; the same
  key with another body is ``idempotency_conflict``. Only successes are kept.
- Then the domain, in this order: blocklist, status and window, stock, eligibility, limits. Status before window
  ("status and window"): a paused or ended activity says so whatever the clock. The window is ``starts_at``
  inclusive, ``ends_at`` exclusive; before it ``not_started``, from ``ends_at`` on ``ended``.
- Eligibility: every rule given must hold. ``new_within_days``: ``reg`` within N days before the claim (a token
  registered exactly N days before still qualifies); ``first_order``: ``orders == 0``; ``min_orders``:
  ``orders >= min_orders``; ``tags``: any of them; ``users``: the allow-list. A token that lacks the fact a rule
  needs fails that rule.
- Limits: the user's packs for this activity below ``per_user_limit``; the device's below ``per_device_limit``
  when it has one.
- A grant (an operator's push) skips the window, eligibility and the device limit (it has no device); pause, end,
  blocklist, stock and the per-user limit hold, and the pack counts toward the user's packs.
- A success takes one pack: stock left - 1, taken + 1, the user's count + 1, the device's count + 1 (claims).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

DAY = 86_400

# The contract's domain checks, in its order; each entry is (check, refusal code).
BLOCKLIST, STATUS, WINDOW, STOCK, ELIGIBILITY, USER_LIMIT, DEVICE_LIMIT = (
    "blocklist",
    "status",
    "window",
    "stock",
    "eligibility",
    "user_limit",
    "device_limit",
)


@dataclass(frozen=True)
class Rules:
    new_within_days: int | None = None
    first_order: bool = False
    min_orders: int | None = None
    tags: tuple[str, ...] | None = None
    users: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Facts:
    """What a user's token says; None: the token lacks the fact."""

    reg: int | None = None
    orders: int | None = None
    tags: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PackEntry:
    template_id: str
    count: int
    valid_days: int | None = None
    valid_from: int | None = None
    valid_until: int | None = None

    def validity(self, now: int) -> tuple[int, int]:
        if self.valid_days is not None:
            return now, now + self.valid_days * DAY
        assert self.valid_from is not None and self.valid_until is not None
        return self.valid_from, self.valid_until


@dataclass(frozen=True)
class Request:
    user: str
    now: int
    blocked: bool
    key: str | None
    body: str  # what the same-body comparison is about (a claim's channel, a grant call's user list)
    facts: Facts = Facts()
    device: str = ""
    mode: str = "claim"  # or "grant"
    operator: str = ""

    @property
    def scope(self) -> tuple[str, ...]:
        return ("grant", self.operator, self.user) if self.mode == "grant" else ("claim", self.user)


@dataclass(frozen=True)
class Verdict:
    code: str  # ok, replay or a refusal code
    answer: str | None = None  # the kept answer, for a replay
    applicable: tuple[tuple[str, str], ...] = ()  # every domain refusal that applies, in contract order


def eligible(rules: Rules, facts: Facts, user: str, now: int) -> bool:
    if rules.new_within_days is not None and (
        facts.reg is None or not (now - rules.new_within_days * DAY <= facts.reg <= now)
    ):
        return False
    if rules.first_order and facts.orders != 0:
        return False
    if rules.min_orders is not None and (facts.orders is None or facts.orders < rules.min_orders):
        return False
    if rules.tags is not None and not (set(facts.tags or ()) & set(rules.tags)):
        return False
    return not (rules.users is not None and user not in rules.users)


@dataclass
class ActivityModel:
    activity_id: str
    status: str
    starts_at: int
    ends_at: int
    stock: int
    per_user_limit: int
    per_device_limit: int | None
    rules: Rules
    pack: tuple[PackEntry, ...]
    taken: int = 0
    users: Counter[str] = field(default_factory=Counter)
    devices: Counter[str] = field(default_factory=Counter)
    kept: dict[tuple[tuple[str, ...], str], tuple[str, str]] = field(
        default_factory=dict
    )  # -> (body, answer)
    events: int = 1  # the stream holds activity_created

    @property
    def stock_left(self) -> int:
        return self.stock - self.taken

    def refusals(self, req: Request) -> tuple[tuple[str, str], ...]:
        """Every domain refusal that applies to ``req``, in the contract's order."""
        grant = req.mode == "grant"
        found: list[tuple[str, str]] = []
        if req.blocked:
            found.append((BLOCKLIST, "blocked"))
        if self.status in ("paused", "ended"):
            found.append((STATUS, self.status))
        if not grant:
            if req.now < self.starts_at:
                found.append((WINDOW, "not_started"))
            elif req.now >= self.ends_at:
                found.append((WINDOW, "ended"))
        if self.stock_left <= 0:
            found.append((STOCK, "sold_out"))
        if not grant and not eligible(self.rules, req.facts, req.user, req.now):
            found.append((ELIGIBILITY, "not_eligible"))
        if self.users[req.user] >= self.per_user_limit:
            found.append((USER_LIMIT, "limit_reached"))
        if not grant and self.per_device_limit and self.devices[req.device] >= self.per_device_limit:
            found.append((DEVICE_LIMIT, "limit_reached"))
        return tuple(found)

    def judge(self, req: Request) -> Verdict:
        if req.key is not None:
            kept = self.kept.get((req.scope, req.key))
            if kept is not None:
                body, answer = kept
                if body != req.body:
                    return Verdict("idempotency_conflict")
                return Verdict("replay", answer)
        applicable = self.refusals(req)
        if applicable:
            return Verdict(applicable[0][1], applicable=applicable)
        return Verdict("ok")

    def take(self, req: Request, answer: str) -> None:
        """Record the success ``judge`` predicted."""
        self.taken += 1
        self.users[req.user] += 1
        if req.mode == "claim":
            self.devices[req.device] += 1
        if req.key is not None:
            self.kept[(req.scope, req.key)] = (req.body, answer)
        self.events += 1

    def expected_coupons(self, claim_id: str, now: int) -> list[dict[str, object]]:
        coupons: list[dict[str, object]] = []
        for entry in self.pack:
            valid_from, valid_until = entry.validity(now)
            for _ in range(entry.count):
                coupons.append(
                    {
                        "coupon_id": f"{claim_id}.{len(coupons) + 1}",
                        "template_id": entry.template_id,
                        "valid_from": valid_from,
                        "valid_until": valid_until,
                    }
                )
        return coupons

    def change_status(self, action: str) -> str:
        """An operator's pause / resume / end: the reply code; ended is final."""
        if self.status == "ended":
            return "state_conflict"
        after = {"pause": "paused", "resume": "active", "end": "ended"}[action]
        if after == self.status:
            return "replay"
        self.status = after
        self.events += 1
        return "ok"
