"""The wallet: ``GET /v1/coupons`` for a user (token) or for the user the order service names (service key)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from gateway import clock
from gateway.checkout.wallet import STATUSES
from gateway.http import auth, bodies
from gateway.http.answers import WalletPage
from gateway.http.errors import JSON
from gateway.http.openapi import USER_ID, USER_OR_SERVICE, Query, documented

STATUS = Query(
    "status",
    "Only the coupons in this state (absent: all the coupons still in the hot set). Redeemed and expired also "
    "list those final for longer than the retention, from the ledger.",
    {"type": "string", "enum": list(STATUSES)},
)


@get(
    "/v1/coupons",
    opt=documented(
        callers=USER_OR_SERVICE,
        description="The caller's coupons (or, for the order service, the named user's), newest first, "
        "a page at a time.",
        query=(STATUS, bodies.LIMIT, bodies.cursor_query(bodies.COUPON_ID), USER_ID),
        answer=WalletPage,
        scripts=True,
    ),
)
async def wallet(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The caller's coupons, newest first: ``?status=`` one of available, locked, redeemed, expired (absent:
    every coupon Redis holds; redeemed and expired also those the retention moved to the ledger), ``limit``
    ≤ 100, ``cursor``; a service names the user with ``?user_id=``."""
    who = auth.caller(request)
    bodies.only_query(request)
    user_id = who.acting_for(request.query_params.get("user_id"))
    status = request.query_params.get("status", "")
    if status and status not in STATUSES:
        raise bodies.invalid_request(f"status must be one of {', '.join(STATUSES)}.", "status")
    cursor = request.query_params.get("cursor", "")
    if cursor and not bodies.COUPON_ID.fullmatch(cursor):
        raise bodies.invalid_request("cursor is malformed.", "cursor")
    page = await auth.services(request).wallet.page(
        user_id, status=status, cursor=cursor, limit=bodies.list_limit(request), now=int(clock.now())
    )
    return Response(page, media_type=JSON)


ROUTES = [wallet]
