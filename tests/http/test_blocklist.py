"""The blocklist over HTTP: operators add and remove, every gateway enforces it within its refresh interval,
and the ledger records who did what."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from gateway.keys import BLOCKLIST
from gateway.scripts.runner import RedisClient
from gateway.settings import Settings
from tests.conftest import OTHER_API_KEY
from tests.helpers import ADMIN, bearer, create_activity
from tests.worker.conftest import persist

BOB = {"X-API-Key": OTHER_API_KEY}


async def claim_status(client: AsyncTestClient[Any], activity_id: str, user: str, device: str) -> int:
    reply = await client.post(f"/v1/activities/{activity_id}/claim", headers=bearer(user, device))
    return reply.status_code


async def until_status(
    client: AsyncTestClient[Any], activity_id: str, user: str, device: str, wanted: int
) -> float:
    """Seconds until a claim answers ``wanted`` (the contract: within a second of the change)."""
    started = time.monotonic()
    while time.monotonic() - started < 3:
        if await claim_status(client, activity_id, user, device) == wanted:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    last = await client.post(f"/v1/activities/{activity_id}/claim", headers=bearer(user, device))
    raise AssertionError(f"no {wanted} within 3 s: {last.status_code} {last.text}")


async def test_blocked_users_and_devices_are_refused_until_removed(
    client: AsyncTestClient[Any], redis_client: RedisClient
) -> None:
    activity = await create_activity(
        client, stock=1000, per_user_limit=1000
    )  # polls may claim before the refresh
    aid = activity["id"]
    added = await client.post(
        "/v1/admin/blocklist", headers=ADMIN, json={"users": ["bad"], "devices": ["dev-x"]}
    )
    assert added.status_code == 200, added.text
    assert added.json() == {"changed": 2}
    assert await redis_client.smembers(BLOCKLIST.users) == {"bad"}
    assert await redis_client.smembers(BLOCKLIST.devices) == {"dev-x"}
    assert await redis_client.get(BLOCKLIST.version) == "1"

    assert await until_status(client, aid, "bad", "dev-ok", 403) < 1.5
    refused = await client.post(f"/v1/activities/{aid}/claim", headers=bearer("bad", "dev-ok"))
    assert refused.json()["error"] == "blocked"
    assert await claim_status(client, aid, "good", "dev-x") == 403  # the device alone blocks
    assert await claim_status(client, aid, "good", "dev-ok") == 201

    again = await client.post("/v1/admin/blocklist", headers=ADMIN, json={"users": ["bad"]})
    assert again.json() == {"changed": 0}  # already there: nothing written
    assert await redis_client.get(BLOCKLIST.version) == "1"

    removed = await client.post("/v1/admin/blocklist/remove", headers=BOB, json={"users": ["bad"]})
    assert removed.json() == {"changed": 1}
    assert await until_status(client, aid, "bad", "dev-ok", 201) < 1.5
    assert await claim_status(client, aid, "good2", "dev-x") == 403  # the device is still blocked


async def test_list_is_newest_first_and_pages(client: AsyncTestClient[Any]) -> None:
    await client.post("/v1/admin/blocklist", headers=ADMIN, json={"users": ["u1", "u2"]})
    await asyncio.sleep(1.1)  # added_at is in seconds
    await client.post("/v1/admin/blocklist", headers=BOB, json={"devices": ["d1"]})
    first = (await client.get("/v1/admin/blocklist?limit=2", headers=ADMIN)).json()
    assert [(i["kind"], i["id"], i["by"]) for i in first["items"]] == [
        ("device", "d1", "bob"),
        ("user", "u1", "alice"),
    ]
    second = (
        await client.get(f"/v1/admin/blocklist?limit=2&cursor={first['next_cursor']}", headers=ADMIN)
    ).json()
    assert [(i["kind"], i["id"]) for i in second["items"]] == [("user", "u2")]
    assert "next_cursor" not in second
    assert all(isinstance(i["added_at"], int) for i in first["items"] + second["items"])


async def test_bad_blocklist_requests(client: AsyncTestClient[Any], redis_client: RedisClient) -> None:
    cases: list[tuple[dict[str, str], Any, int, str]] = [
        ({}, {"users": ["x"]}, 401, "unauthorized"),
        (ADMIN, {}, 400, "invalid_request"),
        (ADMIN, {"users": ["a b"]}, 400, "invalid_request"),
        (ADMIN, {"users": "x"}, 400, "invalid_request"),
        (ADMIN, {"people": ["x"]}, 400, "invalid_request"),
    ]
    for headers, body, status, code in cases:
        reply = await client.post("/v1/admin/blocklist", headers=headers, json=body)
        assert (reply.status_code, reply.json()["error"]) == (status, code), body
    for query in ("cursor=nope", "limit=0", "colour=red"):
        reply = await client.get(f"/v1/admin/blocklist?{query}", headers=ADMIN)
        assert reply.status_code == 400, query
    assert await redis_client.exists(BLOCKLIST.users, BLOCKLIST.version) == 0


async def test_the_ledger_records_each_change(client: AsyncTestClient[Any], settings: Settings) -> None:
    await client.post("/v1/admin/blocklist", headers=ADMIN, json={"users": ["u1"], "devices": ["d1"]})
    await client.post("/v1/admin/blocklist/remove", headers=BOB, json={"users": ["u1"]})
    await client.post("/v1/admin/blocklist/remove", headers=BOB, json={"users": ["u1"]})  # nothing to do
    await persist(settings)
    conn = await asyncpg.connect(settings.postgres.url)
    try:
        audit = await conn.fetch(
            "SELECT operator, action, target, after FROM audit WHERE target = 'blocklist' ORDER BY seq"
        )
        rows = await conn.fetch("SELECT kind, id, present, by FROM blocklist ORDER BY kind, id")
    finally:
        await conn.close()
    assert [(a["operator"], a["action"]) for a in audit] == [
        ("alice", "blocklist_add"),
        ("bob", "blocklist_remove"),
    ]
    assert json.loads(audit[0]["after"]) == {"users": ["u1"], "devices": ["d1"]}
    assert [(r["kind"], r["id"], r["present"], r["by"]) for r in rows] == [
        ("device", "d1", True, "alice"),
        ("user", "u1", False, "bob"),
    ]
