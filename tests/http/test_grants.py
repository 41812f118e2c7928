"""Grants over HTTP: the pack pushed to a list of users, each user's own refusal, idempotent per call."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from gateway.keys import KeySpace
from gateway.redis_client import RedisClient
from gateway.settings import Settings
from tests.helpers import ADMIN, create_activity
from tests.worker.conftest import persist


def grants_url(activity_id: str) -> str:
    return f"/v1/admin/activities/{activity_id}/grants"


async def grant(
    client: AsyncTestClient[Any],
    activity_id: str,
    users: list[str],
    key: str | None = None,
    headers: dict[str, str] = ADMIN,
) -> Any:
    extra = {"Idempotency-Key": key} if key else {}
    return await client.post(grants_url(activity_id), headers={**headers, **extra}, json={"user_ids": users})


def outcomes(reply: Any) -> dict[str, str]:
    assert reply.status_code == 200, reply.text
    return {
        r["user_id"]: r.get("error") or ("granted" if r.get("claim_id") else "?")
        for r in reply.json()["results"]
    }


async def test_grants_skip_window_and_eligibility_but_hold_stock_and_limits(
    client: AsyncTestClient[Any],
) -> None:
    now = int(time.time())
    activity = await create_activity(
        client,
        stock=3,
        per_user_limit=1,
        starts_at=now - 100,
        ends_at=now - 10,
        eligibility={"users": ["nobody-else"]},
    )
    reply = await grant(client, activity["id"], ["a", "b", "a2", "b2"])
    results = reply.json()["results"]
    assert [r["user_id"] for r in results] == ["a", "b", "a2", "b2"]  # in the order asked
    assert sorted(outcomes(reply).values()) == ["granted", "granted", "granted", "sold_out"]
    granted = [r for r in results if "claim_id" in r]
    assert all(set(r) == {"user_id", "claim_id"} for r in granted)
    again = await grant(client, activity["id"], ["a"])
    assert outcomes(again) in ({"a": "limit_reached"}, {"a": "sold_out"})


async def test_grants_hold_pause_end_and_the_blocklist(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=10, per_user_limit=3)
    aid = activity["id"]
    await client.post("/v1/admin/blocklist", headers=ADMIN, json={"users": ["blocked-user"]})
    await asyncio.sleep(1.2)  # the gateway's copy refreshes within a second
    assert outcomes(await grant(client, aid, ["ok-user", "blocked-user"])) == {
        "ok-user": "granted",
        "blocked-user": "blocked",
    }
    await client.post(f"/v1/admin/activities/{aid}/pause", headers=ADMIN)
    assert outcomes(await grant(client, aid, ["ok-user"])) == {"ok-user": "paused"}
    await client.post(f"/v1/admin/activities/{aid}/resume", headers=ADMIN)
    assert outcomes(await grant(client, aid, ["ok-user"])) == {"ok-user": "granted"}
    await client.post(f"/v1/admin/activities/{aid}/end", headers=ADMIN)
    assert outcomes(await grant(client, aid, ["ok-user"])) == {"ok-user": "ended"}


async def test_a_keyed_grant_is_idempotent_per_call(
    client: AsyncTestClient[Any], redis_client: RedisClient
) -> None:
    activity = await create_activity(client, stock=5, per_user_limit=1)
    aid = activity["id"]
    users = ["u1", "u2", "u3"]
    first = await grant(client, aid, users, key="push-1")
    retries = await asyncio.gather(*(grant(client, aid, users, key="push-1") for _ in range(10)))
    assert all(r.json() == first.json() for r in retries)
    keys = KeySpace(8, 4).activity(aid)
    assert await redis_client.hget(keys.config, "taken") == "3"  # nothing more taken
    conflict = await grant(client, aid, ["u1", "u4"], key="push-1")
    assert conflict.status_code == 422 and conflict.json()["error"] == "idempotency_conflict"
    assert await redis_client.hget(keys.config, "taken") == "3"
    other_operator = await grant(
        client, aid, ["u4"], key="push-1", headers={"X-API-Key": "bob-key-0123456789abcdef01"}
    )
    assert outcomes(other_operator) == {"u4": "granted"}  # the key is scoped to the operator


async def test_ten_thousand_users_in_one_call(
    client: AsyncTestClient[Any], redis_client: RedisClient
) -> None:
    activity = await create_activity(client, stock=9_000, per_user_limit=1)
    users = [f"mass-{i}" for i in range(10_000)]
    reply = await grant(client, activity["id"], users)
    counts: dict[str, int] = {}
    for outcome in outcomes(reply).values():
        counts[outcome] = counts.get(outcome, 0) + 1
    assert counts == {"granted": 9_000, "sold_out": 1_000}
    keys = KeySpace(8, 4).activity(activity["id"])
    assert await redis_client.hget(keys.config, "stock_left") == "0"
    too_many = await grant(client, activity["id"], [*users, "one-more"])
    assert too_many.status_code == 400


async def test_bad_grant_requests(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client)
    url = grants_url(activity["id"])
    for body, status in (
        ({"user_ids": []}, 400),
        ({"user_ids": ["a", "a"]}, 400),
        ({"user_ids": ["a b"]}, 400),
        ({"users": ["a"]}, 400),
        ({}, 400),
    ):
        reply = await client.post(url, headers=ADMIN, json=body)
        assert (reply.status_code, reply.json()["error"]) == (status, "invalid_request"), body
    assert (await client.post(url, json={"user_ids": ["a"]})).status_code == 401
    assert (
        await client.post(grants_url("missing"), headers=ADMIN, json={"user_ids": ["a"]})
    ).status_code == 404


async def test_grants_reach_the_ledger_with_their_operator(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    activity = await create_activity(client, stock=5)
    await grant(client, activity["id"], ["g1", "g2"], key="k")
    await persist(settings)
    conn = await asyncpg.connect(settings.postgres.url)
    try:
        rows = await conn.fetch("SELECT user_id, mode, operator, device_id FROM claims ORDER BY user_id")
        coupons = await conn.fetchval("SELECT count(*) FROM coupons")
        records = await conn.fetchval("SELECT count(*) FROM idempotency_records")
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [("g1", "grant", "alice", ""), ("g2", "grant", "alice", "")]
    assert coupons == 2
    assert records == 3  # the call's record and each user's


async def test_a_keyed_retry_replays_the_whole_answer_refusals_included(
    client: AsyncTestClient[Any], redis_client: RedisClient
) -> None:
    activity = await create_activity(client, stock=5)
    aid = activity["id"]
    await client.post(f"/v1/admin/activities/{aid}/pause", headers=ADMIN)
    first = await grant(client, aid, ["p1", "p2"], key="while-paused")
    assert outcomes(first) == {"p1": "paused", "p2": "paused"}
    await client.post(f"/v1/admin/activities/{aid}/resume", headers=ADMIN)
    retry = await grant(client, aid, ["p1", "p2"], key="while-paused")
    assert retry.content == first.content  # the call's answer, not a fresh judgement
    assert await redis_client.hget(KeySpace(8, 4).activity(aid).config, "taken") == "0"
    fresh = await grant(client, aid, ["p1", "p2"], key="after-resume")
    assert outcomes(fresh) == {"p1": "granted", "p2": "granted"}


async def test_a_user_shed_mid_call_is_that_users_result(
    client: AsyncTestClient[Any], monkeypatch: Any
) -> None:
    from gateway.outcomes import DomainError, Outcome

    activity = await create_activity(client, stock=10)
    claims = client.app.state.services.claims
    real = claims.claim

    async def shed_one(activity_id: str, who: Any, **kwargs: Any) -> Any:
        if who.user_id == "s2":
            raise DomainError(Outcome.OVERLOADED, "Redis is unreachable; retry shortly.", retry_after=1)
        return await real(activity_id, who, **kwargs)

    monkeypatch.setattr(claims, "claim", shed_one)
    reply = await grant(client, activity["id"], ["s1", "s2", "s3"])
    assert outcomes(reply) == {"s1": "granted", "s2": "overloaded", "s3": "granted"}


async def test_a_grant_mirrors_an_unmirrored_activity_first(
    client: AsyncTestClient[Any], redis_client: RedisClient
) -> None:
    activity = await create_activity(client, stock=3)
    keys = KeySpace(8, 4).activity(activity["id"])
    await redis_client.delete(keys.config)  # as a crash between the Postgres write and the mirror leaves it
    assert outcomes(await grant(client, activity["id"], ["m1"])) == {"m1": "granted"}
    assert await redis_client.hget(keys.config, "stock_left") == "2"


async def test_request_shape_is_judged_before_the_activity(client: AsyncTestClient[Any]) -> None:
    reply = await client.post(grants_url("no-such-activity"), headers=ADMIN, json={"user_ids": ["a", "a"]})
    assert (reply.status_code, reply.json()["error"]) == (400, "invalid_request")
