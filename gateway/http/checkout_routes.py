"""Checkout routes: the user's app (token) or the order service (``X-Service-Key`` + ``user_id``)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath
from msgspec import Meta

from gateway import clock
from gateway.checkout.quote import Held, Line, Quote, quote
from gateway.checkout.service import OrderView
from gateway.events import Share
from gateway.http import auth, bodies
from gateway.http.errors import JSON
from gateway.http.openapi import USER_ID, USER_OR_SERVICE, documented
from gateway.outcomes import DomainError, Outcome
from gateway.tokens import ID_PATTERN

CHECKOUT_BODY_LIMIT = 16 * 1024  # product.md: user routes take 16 KiB

OrderId = Annotated[str, Meta(pattern=f"^{ID_PATTERN.pattern}$")]
CouponId = Annotated[str, Meta(pattern=f"^{bodies.COUPON_ID.pattern}$")]
Lines = Annotated[list[Line], Meta(min_length=1, max_length=100)]


def _distinct_skus(lines: list[Line]) -> None:
    skus = [line.sku for line in lines]
    if len(set(skus)) != len(skus):
        raise bodies.invalid_request("lines: each sku at most once.", "lines")


class QuoteBody(msgspec.Struct, forbid_unknown_fields=True):
    lines: Lines
    user_id: str | None = None  # the order service names the user; a user token must leave it out


class LockBody(msgspec.Struct, forbid_unknown_fields=True):
    order_id: OrderId
    coupon_id: CouponId
    lines: Lines
    user_id: str | None = None


class OrderBody(msgspec.Struct, forbid_unknown_fields=True):
    order_id: OrderId
    user_id: str | None = None


class LockAnswer(msgspec.Struct):
    order_id: str
    coupon_id: str
    discount: int
    split: list[Share]
    locked_until: int


class OrderAnswer(msgspec.Struct):
    order_id: str
    coupon_id: str
    status: str  # redeemed after a redeem; available after a release (else the coupon's state)


class RefundAnswer(msgspec.Struct):
    order_id: str
    coupon_id: str
    status: str  # available when returned, else redeemed
    returned: bool


@post(
    "/v1/checkout/quote",
    status_code=200,
    opt=documented(
        callers=USER_OR_SERVICE,
        description="The user's coupons on a cart: the usable ones best first with their discount and its split "
        "over the lines, the unusable ones with the reason.",
        body=QuoteBody,
        answer=Quote,
        scripts=True,
    ),
)
async def checkout_quote(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The caller's coupons on this cart: usable ones with their discount and its split over the lines, best
    first; unusable ones with the reason (scope, threshold, expired, locked)."""
    who = auth.caller(request)
    bodies.only_query(request)
    body = await bodies.body(request, QuoteBody)
    user_id = who.acting_for(body.user_id)
    _distinct_skus(body.lines)
    services = auth.services(request)
    now = int(clock.now())
    coupons = await services.wallet.coupons(user_id, now=now)
    terms = await services.terms.of({c.template_id for c in coupons})
    held = [
        Held(c.coupon_id, c.status, c.valid_from, c.valid_until, terms[c.template_id])
        for c in coupons
        if c.template_id in terms
    ]
    return Response(msgspec.json.encode(quote(held, body.lines, now=now)), media_type=JSON)


@post(
    "/v1/checkout/lock",
    status_code=200,
    opt=documented(
        callers=USER_OR_SERVICE,
        description="Lock one of the user's coupons to an order until locked_until.",
        body=LockBody,
        answer=LockAnswer,
        refusals=(Outcome.COUPON_UNAVAILABLE, Outcome.NOT_APPLICABLE),
        scripts=True,
    ),
)
async def checkout_lock(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Lock one of the user's coupons to an order until ``locked_until``; the same lock again answers the
    existing one. Another coupon for an order holding one, or a coupon another order holds: coupon_unavailable."""
    who = auth.caller(request)
    bodies.only_query(request)
    body = await bodies.body(request, LockBody)
    user_id = who.acting_for(body.user_id)
    _distinct_skus(body.lines)
    answer = await auth.services(request).checkout.lock(
        user_id, body.order_id, body.coupon_id, body.lines, now=int(clock.now())
    )
    return Response(answer.encode(), media_type=JSON)


async def _order_call(request: Request[Any, Any, Any], action: str) -> Response[bytes]:
    who = auth.caller(request)
    bodies.only_query(request)
    body = await bodies.body(request, OrderBody)
    user_id = who.acting_for(body.user_id)
    checkout = auth.services(request).checkout
    call = {"redeem": checkout.redeem, "release": checkout.release, "refund": checkout.refund}[action]
    answer = await call(user_id, body.order_id, now=int(clock.now()))
    return Response(answer.encode(), media_type=JSON)


_UNAVAILABLE = (Outcome.COUPON_UNAVAILABLE,)


@post(
    "/v1/checkout/redeem",
    status_code=200,
    opt=documented(
        callers=USER_OR_SERVICE,
        description="The order is paid: the coupon locked to it is redeemed.",
        body=OrderBody,
        answer=OrderAnswer,
        refusals=_UNAVAILABLE,
        scripts=True,
    ),
)
async def checkout_redeem(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The order is paid: its coupon is redeemed. After the lock's deadline only if the coupon is still free
    and valid."""
    return await _order_call(request, "redeem")


@post(
    "/v1/checkout/release",
    status_code=200,
    opt=documented(
        callers=USER_OR_SERVICE,
        description="The order was cancelled before payment: its coupon is available again.",
        body=OrderBody,
        answer=OrderAnswer,
        refusals=_UNAVAILABLE,
        scripts=True,
    ),
)
async def checkout_release(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Cancelled before payment: the coupon is available again. After the lock lapsed, the coupon's state."""
    return await _order_call(request, "release")


@post(
    "/v1/checkout/refund",
    status_code=200,
    opt=documented(
        callers=USER_OR_SERVICE,
        description="The order was refunded in full: its coupon comes back while it is still valid.",
        body=OrderBody,
        answer=RefundAnswer,
        refusals=_UNAVAILABLE,
        scripts=True,
    ),
)
async def checkout_refund(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Refunded in full: the coupon comes back while still valid; past its validity it stays redeemed and
    ``returned`` is false."""
    return await _order_call(request, "refund")


@get(
    "/v1/checkout/orders/{order_id:str}",
    opt=documented(
        callers=USER_OR_SERVICE,
        description="The coupon locked to an order, with its status and discount.",
        query=(USER_ID,),
        answer=OrderView,
        scripts=True,
    ),
)
async def checkout_order(request: Request[Any, Any, Any], order_id: FromPath[str]) -> Response[bytes]:
    """The order's coupon: ``{order_id, coupon_id, status, discount, locked_until?}``; a service names the
    user with ``?user_id=``."""
    who = auth.caller(request)
    bodies.only_query(request)
    user_id = who.acting_for(request.query_params.get("user_id"))
    if not ID_PATTERN.fullmatch(order_id):
        raise DomainError(Outcome.NOT_FOUND, "No coupon is locked to this order.")
    view = await auth.services(request).checkout.order(user_id, order_id, now=int(clock.now()))
    return Response(msgspec.json.encode(view), media_type=JSON)


ROUTES = [checkout_quote, checkout_lock, checkout_redeem, checkout_release, checkout_refund, checkout_order]
