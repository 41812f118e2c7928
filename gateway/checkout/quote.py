"""What a coupon is worth on a cart, and how its discount splits over the cart's lines (product.md, "Concepts"
and the checkout contract). Pure functions: the quote route, and later lock, use them.

- A line is eligible when its ``category`` or ``business_line`` is in the template's ``scope`` (empty scope:
  every line); the eligible spend is the sum of the eligible lines' amounts.
- cash: ``amount_off``; threshold: ``amount_off`` once the eligible spend reaches ``min_spend``; discount:
  ``percent_off`` percent of the eligible spend (rounded down), at most ``max_off``, once the eligible spend
  reaches ``min_spend`` (if it has one). Never more than the eligible spend.
- The split is proportional to the eligible lines' amounts; what the rounding leaves goes, a cent each, to the
  largest remainders (ties: line order), so it adds up to the discount exactly; lines out of scope get 0.
- Usable coupons rank best first: largest discount, then earliest ``valid_until``, then ``coupon_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgspec
from msgspec import Meta

from gateway.catalog.campaign import Label, Template
from gateway.events import Share

MAX_AMOUNT = 10**12


class Line(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    sku: Label
    category: Label  # any word a template's scope can name
    amount: Annotated[int, Meta(ge=0, le=MAX_AMOUNT)]
    business_line: Label | None = None


@dataclass(frozen=True, slots=True)
class Terms:
    """What a template says a coupon is worth (templates never change once made)."""

    kind: str
    amount_off: int | None
    percent_off: int | None
    max_off: int | None
    min_spend: int | None
    scope: frozenset[str]

    @classmethod
    def of(cls, template: Template) -> Terms:
        return cls(
            template.kind,
            template.amount_off,
            template.percent_off,
            template.max_off,
            template.min_spend,
            frozenset(template.scope or ()),
        )

    def eligible(self, line: Line) -> bool:
        return not self.scope or line.category in self.scope or (line.business_line or "") in self.scope


def eligible_spend(terms: Terms, lines: list[Line]) -> int:
    return sum(line.amount for line in lines if terms.eligible(line))


def worth(terms: Terms, lines: list[Line]) -> int | None:
    """The discount the coupon gives on these lines, or None when the eligible spend misses ``min_spend``."""
    spend = eligible_spend(terms, lines)
    if terms.min_spend is not None and spend < terms.min_spend:
        return None
    if terms.kind == "discount":
        value = spend * (terms.percent_off or 0) // 100
        if terms.max_off is not None:
            value = min(value, terms.max_off)
    else:
        value = terms.amount_off or 0
    return min(value, spend)


def split(terms: Terms, lines: list[Line], discount: int) -> list[int]:
    """Each line's share of ``discount``, in line order (largest remainder; ties by line order)."""
    weights = [line.amount if terms.eligible(line) else 0 for line in lines]
    total = sum(weights)
    if total == 0 or discount == 0:
        return [0] * len(lines)
    shares = [discount * weight // total for weight in weights]
    remainders = [discount * weight % total for weight in weights]
    left = discount - sum(shares)
    for index in sorted(range(len(lines)), key=lambda i: (-remainders[i], i))[:left]:
        shares[index] += 1
    return shares


class Usable(msgspec.Struct):
    coupon_id: str
    discount: int
    split: list[Share]


class Unusable(msgspec.Struct):
    coupon_id: str
    reason: str  # scope, threshold, expired or locked


class Quote(msgspec.Struct):
    usable: list[Usable]
    unusable: list[Unusable]


@dataclass(frozen=True, slots=True)
class Held:
    """A coupon of the caller's wallet as the quote sees it."""

    coupon_id: str
    status: str  # as it shows now: available, locked, redeemed or expired
    valid_from: int
    valid_until: int
    terms: Terms


def quote(coupons: list[Held], lines: list[Line], *, now: int) -> Quote:
    """Coupons not yet valid (an absolute window that has not opened) are in neither list: the contract's
    reasons do not name that state, and the coupon is no reason to change the cart."""
    usable: list[tuple[Usable, int]] = []
    unusable: list[Unusable] = []
    for coupon in coupons:
        if coupon.status in ("expired", "locked"):
            unusable.append(Unusable(coupon.coupon_id, coupon.status))
            continue
        if coupon.status != "available" or coupon.valid_from > now:
            continue  # redeemed, or not yet valid: not the cart's concern
        if not any(coupon.terms.eligible(line) for line in lines):
            unusable.append(Unusable(coupon.coupon_id, "scope"))
            continue
        discount = worth(coupon.terms, lines)
        if discount is None:
            unusable.append(Unusable(coupon.coupon_id, "threshold"))
            continue
        shares = split(coupon.terms, lines, discount)
        usable.append(
            (
                Usable(
                    coupon.coupon_id,
                    discount,
                    [Share(line.sku, s) for line, s in zip(lines, shares, strict=True)],
                ),
                coupon.valid_until,
            )
        )
    usable.sort(key=lambda pair: (-pair[0].discount, pair[1], pair[0].coupon_id))
    unusable.sort(key=lambda item: item.coupon_id)
    return Quote([item for item, _ in usable], unusable)
