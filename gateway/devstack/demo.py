"""A small flash sale against a running gateway: many users race for a few packs; prints what happened."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass

import asyncpg
import httpx

from gateway import clock
from gateway.tokens import mint_user_token


@dataclass
class SaleReport:
    activity_id: str
    granted: int
    refused: dict[str, int]
    claims_rows: int
    coupon_rows: int
    seconds: float

    def lines(self) -> list[str]:
        refused = ", ".join(f"{code} {n}" for code, n in sorted(self.refused.items())) or "none"
        return [
            f"flash sale on activity {self.activity_id}: {self.granted + sum(self.refused.values())} claims"
            f" in {self.seconds:.2f}s",
            f"  granted: {self.granted}",
            f"  refused: {refused}",
            f"  Postgres: {self.claims_rows} claims rows, {self.coupon_rows} coupon rows",
        ]


async def run_flash_sale(
    base_url: str,
    api_key: str,
    jwt_secret: str,
    database_url: str,
    *,
    users: int = 1000,
    stock: int = 100,
    devices: int | None = None,
    concurrency: int = 200,
    drain_timeout: float = 30.0,
) -> SaleReport:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        activity_id = await _open_sale(http, {"X-API-Key": api_key}, stock)
        tokens = [
            mint_user_token(jwt_secret, f"demo-user-{i}", f"demo-device-{i % (devices or users)}")
            for i in range(users)
        ]
        started = time.monotonic()
        outcomes = await _race(http, activity_id, tokens, concurrency)
        seconds = time.monotonic() - started
    granted = outcomes.pop("granted", 0)
    claims_rows, coupon_rows = await _wait_for_ledger(database_url, activity_id, granted, drain_timeout)
    return SaleReport(activity_id, granted, dict(outcomes), claims_rows, coupon_rows, seconds)


async def _open_sale(http: httpx.AsyncClient, admin: dict[str, str], stock: int) -> str:
    """A template and an activity open now, one pack per user: the activity's id."""
    now = int(clock.now())
    template = (
        await http.post(
            "/v1/admin/templates",
            headers=admin,
            json={"name": "demo 5 off", "kind": "cash", "amount_off": 500, "valid_days": 7},
        )
    ).raise_for_status()
    activity = (
        await http.post(
            "/v1/admin/activities",
            headers=admin,
            json={
                "name": "demo flash sale",
                "pack": [{"template_id": template.json()["id"], "count": 1}],
                "starts_at": now - 1,
                "ends_at": now + 3600,
                "stock": stock,
                "per_user_limit": 1,
            },
        )
    ).raise_for_status()
    return str(activity.json()["id"])


async def _race(
    http: httpx.AsyncClient, activity_id: str, tokens: list[str], concurrency: int
) -> collections.Counter[str]:
    """Every token claims once, ``concurrency`` at a time: how many were granted, and each refusal's code."""
    outcomes: collections.Counter[str] = collections.Counter()
    gate = asyncio.Semaphore(concurrency)

    async def one(token: str) -> None:
        async with gate:
            reply = await http.post(
                f"/v1/activities/{activity_id}/claim", headers={"Authorization": f"Bearer {token}"}
            )
        outcomes["granted" if reply.status_code == 201 else reply.json()["error"]] += 1

    await asyncio.gather(*(one(t) for t in tokens))
    return outcomes


async def _wait_for_ledger(database_url: str, activity_id: str, granted: int, wait: float) -> tuple[int, int]:
    """The activity's claims and coupon rows in Postgres, once they reach ``granted`` or ``wait`` seconds pass."""
    claims_rows = coupon_rows = 0
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            claims_rows = await conn.fetchval(
                "SELECT count(*) FROM claims WHERE activity_id = $1", activity_id
            )
            coupon_rows = await conn.fetchval(
                "SELECT count(*) FROM coupons WHERE activity_id = $1", activity_id
            )
            if claims_rows >= granted and coupon_rows >= granted:
                break
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    return claims_rows, coupon_rows
