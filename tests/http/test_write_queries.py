"""Unknown query parameters on every write route (product.md's error table: 400 invalid_request naming them),
admin and user alike, with a body the route would otherwise take: refused, naming the parameter, before
anything is done; the same request without the parameter then succeeds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from gateway.http.openapi import contracts
from tests.helpers import ADMIN, bearer, create_activity, create_template
from tests.http.support import assert_refusal, assert_same_keyspace, claim_url, keyspace

CART = [{"sku": "apple", "category": "food", "amount": 2_000}]


@dataclass
class World:
    template_id: str
    activity_id: str
    paused_id: str
    coupons: list[str]  # alice's: [0] free, [1] locked to o-1, [2] locked to o-2, [3] redeemed on o-3
    code: str


async def world(client: AsyncTestClient[Any]) -> World:
    template = await create_template(client)
    activity = await create_activity(client, template_id=template["id"], per_user_limit=10, stock=50)
    paused = await create_activity(client, template_id=template["id"])
    assert (await client.post(f"/v1/admin/activities/{paused['id']}/pause", headers=ADMIN)).status_code == 200
    coupons = []
    for _ in range(4):
        reply = await client.post(claim_url(activity["id"]), headers=bearer("alice"))
        coupons.append(reply.json()["coupons"][0]["coupon_id"])
    for n, coupon in enumerate(coupons[1:], start=1):
        body = {"order_id": f"o-{n}", "coupon_id": coupon, "lines": CART}
        assert (await client.post("/v1/checkout/lock", json=body, headers=bearer("alice"))).status_code == 200
    paid = await client.post("/v1/checkout/redeem", json={"order_id": "o-3"}, headers=bearer("alice"))
    assert paid.status_code == 200, paid.text
    batch = await client.post(
        f"/v1/admin/activities/{activity['id']}/codes", json={"count": 1}, headers=ADMIN
    )
    assert (
        await client.post("/v1/admin/blocklist", json={"users": ["eve"]}, headers=ADMIN)
    ).status_code == 200
    return World(template["id"], activity["id"], paused["id"], coupons, batch.json()["codes"][0])


def write(route: str, w: World) -> tuple[str, str, Any, dict[str, str]]:
    """(method, url, body, headers) of a request ``route`` takes in world ``w``."""
    act = f"/v1/admin/activities/{w.activity_id}"
    pack = [{"template_id": w.template_id, "count": 1}]
    activity = {
        "name": "more",
        "pack": pack,
        "starts_at": 1,
        "ends_at": 2**31,
        "stock": 1,
        "per_user_limit": 1,
    }
    user = bearer("alice")
    return {
        "POST /v1/admin/templates": ("POST", "/v1/admin/templates", {"name": "t", "kind": "cash",
                                     "amount_off": 100, "valid_days": 1}, ADMIN),
        "POST /v1/admin/activities": ("POST", "/v1/admin/activities", activity, ADMIN),
        "PATCH /v1/admin/activities/{activity_id}": ("PATCH", act, {"name": "renamed"}, ADMIN),
        "POST /v1/admin/activities/{activity_id}/pause": ("POST", f"{act}/pause", None, ADMIN),
        "POST /v1/admin/activities/{activity_id}/resume": (
            "POST", f"/v1/admin/activities/{w.paused_id}/resume", None, ADMIN),
        "POST /v1/admin/activities/{activity_id}/end": ("POST", f"{act}/end", None, ADMIN),
        "POST /v1/admin/activities/{activity_id}/stock": ("POST", f"{act}/stock", {"delta": 1}, ADMIN),
        "POST /v1/admin/activities/{activity_id}/grants": ("POST", f"{act}/grants", {"user_ids": ["bob"]}, ADMIN),
        "POST /v1/admin/activities/{activity_id}/codes": ("POST", f"{act}/codes", {"count": 1}, ADMIN),
        "POST /v1/admin/blocklist": ("POST", "/v1/admin/blocklist", {"users": ["mallory"]}, ADMIN),
        "POST /v1/admin/blocklist/remove": ("POST", "/v1/admin/blocklist/remove", {"users": ["eve"]}, ADMIN),
        "POST /v1/activities/{activity_id}/claim": ("POST", claim_url(w.activity_id), None, bearer("bob")),
        "POST /v1/codes/redeem": ("POST", "/v1/codes/redeem", {"code": w.code}, bearer("bob")),
        "POST /v1/checkout/quote": ("POST", "/v1/checkout/quote", {"lines": CART}, user),
        "POST /v1/checkout/lock": ("POST", "/v1/checkout/lock",
                                   {"order_id": "o-9", "coupon_id": w.coupons[0], "lines": CART}, user),
        "POST /v1/checkout/redeem": ("POST", "/v1/checkout/redeem", {"order_id": "o-1"}, user),
        "POST /v1/checkout/release": ("POST", "/v1/checkout/release", {"order_id": "o-2"}, user),
        "POST /v1/checkout/refund": ("POST", "/v1/checkout/refund", {"order_id": "o-3"}, user),
    }[route]  # fmt: skip


ADMIN_WRITES = [
    "POST /v1/admin/templates",
    "POST /v1/admin/activities",
    "PATCH /v1/admin/activities/{activity_id}",
    "POST /v1/admin/activities/{activity_id}/pause",
    "POST /v1/admin/activities/{activity_id}/resume",
    "POST /v1/admin/activities/{activity_id}/end",
    "POST /v1/admin/activities/{activity_id}/stock",
    "POST /v1/admin/activities/{activity_id}/grants",
    "POST /v1/admin/activities/{activity_id}/codes",
    "POST /v1/admin/blocklist",
    "POST /v1/admin/blocklist/remove",
]
USER_WRITES = [
    "POST /v1/activities/{activity_id}/claim",
    "POST /v1/codes/redeem",
    "POST /v1/checkout/quote",
    "POST /v1/checkout/lock",
    "POST /v1/checkout/redeem",
    "POST /v1/checkout/release",
    "POST /v1/checkout/refund",
]


def test_these_are_every_write_route(client: AsyncTestClient[Any]) -> None:
    writes = {f"{method.upper()} {path}" for path, method, _, _ in contracts(client.app) if method != "get"}
    assert writes == {*ADMIN_WRITES, *USER_WRITES}


async def ledger(db: asyncpg.Pool) -> dict[str, int]:
    """Rows per table of the ledger."""
    async with db.acquire() as conn:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {
            t["tablename"]: await conn.fetchval(f'SELECT count(*) FROM "{t["tablename"]}"') for t in tables
        }


@pytest.mark.parametrize("route", ADMIN_WRITES + USER_WRITES)
@pytest.mark.parametrize("query", ["dry_run=", "user_id=alice&x=1"])
async def test_an_unknown_query_parameter_on_a_write_is_refused_naming_it_and_nothing_is_done(
    client: AsyncTestClient[Any], raw_redis: Redis, db: asyncpg.Pool, route: str, query: str
) -> None:
    w = await world(client)
    method, url, body, headers = write(route, w)
    unknown = sorted(name.split("=")[0] for name in query.split("&"))[0]
    before, rows = await keyspace(raw_redis), await ledger(db)
    reply = await client.request(method, f"{url}?{query}", json=body, headers=headers)
    assert_refusal(reply, 400, "invalid_request", unknown)
    assert unknown in reply.json()["message"]
    assert_same_keyspace(before, await keyspace(raw_redis))
    assert await ledger(db) == rows
    done = await client.request(method, url, json=body, headers=headers)
    assert done.status_code in (200, 201), done.text  # the request was good but for the parameter
