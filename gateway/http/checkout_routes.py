"""Checkout routes: the user's app (token) or the order service (``X-Service-Key`` + ``user_id``)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, post
from msgspec import Meta

from gateway.http import auth, bodies
from gateway.http.errors import JSON
from gateway.http.openapi import documented
from gateway.quote import Held, Line, Quote, quote

CHECKOUT_BODY_LIMIT = 16 * 1024  # product.md: user routes take 16 KiB


class QuoteBody(msgspec.Struct, forbid_unknown_fields=True):
    lines: Annotated[list[Line], Meta(min_length=1, max_length=100)]
    user_id: str | None = None  # the order service names the user; a user token must leave it out

    def check(self) -> None:
        skus = [line.sku for line in self.lines]
        if len(set(skus)) != len(skus):
            raise bodies.invalid_request("lines: each sku at most once.", "lines")


@post("/v1/checkout/quote", status_code=200, opt=documented(body=QuoteBody, answer=Quote, scripts=True))
async def checkout_quote(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The caller's coupons on this cart: usable ones with their discount and its split over the lines, best
    first; unusable ones with the reason (scope, threshold, expired, locked)."""
    who = auth.caller(request)
    bodies.only_query(request, frozenset())
    body = await bodies.body(request, QuoteBody)
    user_id = who.acting_for(body.user_id)
    body.check()
    services = auth.services(request)
    now = int(time.time())
    coupons = await services.wallet.coupons(user_id, now=now)
    terms = await services.terms.of({c.template_id for c in coupons})
    held = [
        Held(c.coupon_id, c.status, c.valid_from, c.valid_until, terms[c.template_id])
        for c in coupons
        if c.template_id in terms
    ]
    return Response(msgspec.json.encode(quote(held, body.lines, now=now)), media_type=JSON)


ROUTES = [checkout_quote]
