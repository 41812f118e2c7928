"""Helpers for the HTTP tests: refusal checks, claim URLs, the admin view of stock, a keyspace snapshot."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from gateway.services import Services
from tests.helpers import ADMIN


def claim_url(activity_id: str) -> str:
    return f"/v1/activities/{activity_id}/claim"


def assert_refusal(reply: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """The contract's refusal: the status, JSON ``{"error": code, "message": <non-empty str>}``."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    body: dict[str, Any] = reply.json()
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    if field is not None:
        assert body.get("field") == field, body
    return body


def assert_claim_answer(reply: httpx.Response, template_ids: list[str]) -> dict[str, Any]:
    """201 ``{claim_id, coupons:[{coupon_id, template_id, valid_from, valid_until}]}``, in pack order."""
    assert reply.status_code == 201, reply.text
    body: dict[str, Any] = reply.json()
    assert set(body) == {"claim_id", "coupons"}, body
    assert isinstance(body["claim_id"], str) and body["claim_id"]
    assert [c["template_id"] for c in body["coupons"]] == template_ids
    for n, coupon in enumerate(body["coupons"], start=1):
        assert set(coupon) == {"coupon_id", "template_id", "valid_from", "valid_until"}, coupon
        assert coupon["coupon_id"] == f"{body['claim_id']}.{n}"
        assert isinstance(coupon["valid_from"], int) and isinstance(coupon["valid_until"], int)
        assert coupon["valid_until"] > coupon["valid_from"]
    return body


async def admin_activity(client: AsyncTestClient[Any], activity_id: str) -> dict[str, Any]:
    reply = await client.get(f"/v1/admin/activities/{activity_id}", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    found: dict[str, Any] = reply.json()
    return found


async def stock_left(client: AsyncTestClient[Any], activity_id: str) -> int:
    return int((await admin_activity(client, activity_id))["stock_left"])


async def wait_until(predicate: Any, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(0.05)


async def wait_blocked(services: Services, user_id: str, device_id: str) -> None:
    """Wait for the gateway's in-process blocklist copy (refreshed each second) to name the user or device."""
    await wait_until(lambda: services.blocklist.blocks(user_id, device_id))


Snapshot = dict[bytes, tuple[bytes, bytes | None, int | None]]


async def keyspace(plain: Redis) -> tuple[Snapshot, dict[bytes, int]]:
    """Every key on the node: (TYPE, DUMP, XLEN for streams), and PTTL in ms separately (it ticks)."""
    values: Snapshot = {}
    ttls: dict[bytes, int] = {}
    async for key in plain.scan_iter(count=1000):
        kind = await plain.type(key)
        dumped = await plain.dump(key)
        length = await plain.xlen(key) if kind == b"stream" else None
        values[key] = (kind, dumped, length)
        ttls[key] = await plain.pttl(key)
    return values, ttls


def assert_same_keyspace(
    before: tuple[Snapshot, dict[bytes, int]], after: tuple[Snapshot, dict[bytes, int]]
) -> None:
    values_before, ttls_before = before
    values_after, ttls_after = after
    assert sorted(values_after) == sorted(values_before), "keys were added or removed"
    for key, value in values_before.items():
        assert values_after[key] == value, f"{key!r} changed"
        old, new = ttls_before[key], ttls_after[key]
        if old < 0 or new < 0:
            assert old == new, f"{key!r}: PTTL {old} -> {new}"
        else:  # a TTL only counts down: equal to the second, give or take the time the test took
            assert 0 <= old - new <= 5_000, f"{key!r}: PTTL {old} -> {new}"
