"""What a sample of users and activities answers, read the way clients read it: each user's wallet of expired
coupons (``GET /v1/coupons?status=expired``, every page), each activity's stats (``GET .../stats``), and each
sampled coupon's history (``coupon_events``: the history route is not built yet). Taken before and after the
retention sweeps, the two must be equal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from gateway.tokens import mint_user_token

# Stats fields that describe the moment, not the activity: equal only by chance across a sweep.
MOMENT = ("lag", "dead_letters")


@dataclass
class Snapshot:
    wallets: dict[str, list[dict[str, Any]]]
    stats: dict[str, dict[str, Any]]
    history: dict[str, list[tuple[Any, ...]]]


async def wallet(client: AsyncTestClient[Any], secret: str, user: str) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {mint_user_token(secret, user, f'd-{user}')}"}
    items: list[dict[str, Any]] = []
    cursor = ""
    while True:
        reply = await client.get(f"/v1/coupons?status=expired&limit=100{cursor}", headers=headers)
        if reply.status_code != 200:
            raise RuntimeError(f"wallet of {user}: {reply.status_code} {reply.text}")
        page = reply.json()
        items += page["items"]
        if "next_cursor" not in page:
            return items
        cursor = f"&cursor={page['next_cursor']}"


async def stats(client: AsyncTestClient[Any], api_key: str, activity_id: str) -> dict[str, Any]:
    reply = await client.get(f"/v1/admin/activities/{activity_id}/stats", headers={"X-API-Key": api_key})
    if reply.status_code != 200:
        raise RuntimeError(f"stats of {activity_id}: {reply.status_code} {reply.text}")
    found: dict[str, Any] = {k: v for k, v in reply.json().items() if k not in MOMENT}
    return found


async def take(
    client: AsyncTestClient[Any],
    pool: asyncpg.Pool,
    secret: str,
    api_key: str,
    users: list[str],
    activities: list[str],
) -> Snapshot:
    wallets = {user: await wallet(client, secret, user) for user in users}
    coupons = sorted({item["coupon_id"] for items in wallets.values() for item in items[:3]})
    rows = await pool.fetch(
        "SELECT coupon_id, version, type, status, at FROM coupon_events WHERE coupon_id = ANY($1::text[])"
        " ORDER BY coupon_id, version",
        coupons,
    )
    history: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        history.setdefault(row["coupon_id"], []).append(tuple(row))
    return Snapshot(wallets, {a: await stats(client, api_key, a) for a in activities}, history)
