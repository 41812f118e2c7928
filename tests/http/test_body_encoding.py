"""Bytes that are not UTF-8 inside a JSON body (in a string value or in a key) are the contract's 400
``invalid_request`` on every route that takes a JSON body, never a 500 (issue 19)."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.http.app import create_app
from gateway.http.openapi import contracts
from gateway.settings import Settings
from tests.helpers import ADMIN, bearer
from tests.http.support import assert_refusal

USER = "user"
ADMIN_CALLER = "admin"
AID = "act1"  # the shape is judged before the activity is looked up: no such activity is needed

# (method, path, caller, a body with a bad byte inside a string value)
JSON_ROUTES = [
    ("POST", f"/v1/activities/{AID}/claim", USER, b'{"channel":"\xff"}'),
    ("POST", "/v1/codes/redeem", USER, b'{"code":"\xc3"}'),
    ("POST", "/v1/checkout/quote", USER, b'{"lines":[{"sku":"\xff","category":"c","amount":1}]}'),
    ("POST", "/v1/checkout/lock", USER, b'{"order_id":"o\xe2\x82","coupon_id":"c.1","lines":[]}'),
    ("POST", "/v1/checkout/redeem", USER, b'{"order_id":"\xff"}'),
    ("POST", "/v1/checkout/release", USER, b'{"order_id":"\xff"}'),
    ("POST", "/v1/checkout/refund", USER, b'{"order_id":"\xff"}'),
    ("POST", "/v1/admin/templates", ADMIN_CALLER, b'{"name":"\xff","kind":"cash"}'),
    ("POST", "/v1/admin/activities", ADMIN_CALLER, b'{"name":"\xc0\xaf"}'),
    ("PATCH", f"/v1/admin/activities/{AID}", ADMIN_CALLER, b'{"name":"\xff"}'),
    ("POST", f"/v1/admin/activities/{AID}/stock", ADMIN_CALLER, b'{"delta":1,"\xff":1}'),
    ("POST", f"/v1/admin/activities/{AID}/grants", ADMIN_CALLER, b'{"user_ids":["\xff"]}'),
    ("POST", f"/v1/admin/activities/{AID}/codes", ADMIN_CALLER, b'{"\xff":1}'),
    ("POST", "/v1/admin/blocklist", ADMIN_CALLER, b'{"users":["\xff"]}'),
    ("POST", "/v1/admin/blocklist/remove", ADMIN_CALLER, b'{"devices":["\xed\xa0\x80"]}'),  # a surrogate
]


def _headers(caller: str) -> dict[str, str]:
    credential = bearer("u1") if caller == USER else dict(ADMIN)
    return {**credential, "Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "caller", "raw"), JSON_ROUTES, ids=[f"{m} {p}" for m, p, _, _ in JSON_ROUTES]
)
async def test_invalid_utf8_in_a_string_is_invalid_request(
    client: AsyncTestClient[Any], method: str, path: str, caller: str, raw: bytes
) -> None:
    reply = await client.request(method, path, content=raw, headers=_headers(caller))
    assert_refusal(reply, 400, "invalid_request")


@pytest.mark.parametrize(
    ("method", "path", "caller"),
    [(m, p, c) for m, p, c, _ in JSON_ROUTES],
    ids=[f"{m} {p}" for m, p, _, _ in JSON_ROUTES],
)
async def test_invalid_utf8_in_a_key_is_invalid_request(
    client: AsyncTestClient[Any], method: str, path: str, caller: str
) -> None:
    reply = await client.request(method, path, content=b'{"\xc3":1}', headers=_headers(caller))
    assert_refusal(reply, 400, "invalid_request")


def test_every_json_route_is_covered(settings: Settings) -> None:
    """A new route with a body joins the list above: the routes' declared bodies are the reference."""
    with_body = {(m.upper(), p) for p, m, _, c in contracts(create_app(settings)) if c.body is not None}
    covered = {(m, p.replace(AID, "{activity_id}")) for m, p, _, _ in JSON_ROUTES}
    assert with_body == covered
