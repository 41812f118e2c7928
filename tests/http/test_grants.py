"""Grants over HTTP: the pack pushed to a list of users, each user's own refusal, idempotent per call."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import asyncpg
import redis
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from gateway.keys import KeySpace
from gateway.scripts.runner import SOCKET_TIMEOUT_SECONDS, RedisClient
from gateway.services import Services
from gateway.settings import Settings
from tests.helpers import ADMIN, create_activity
from tests.http.support import wait_blocked, wait_until
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


# Redis held by one script for longer than the gateway waits for a reply (SOCKET_TIMEOUT_SECONDS): calls already
# sent time out at the gateway, which drops their connection, and Redis runs them once the script is done (their
# replies lost); calls made meanwhile cannot connect (the connection's INFO waits too) and never run. The script
# measures CPU time (os.clock): TIME stands still within a script. At least that long in wall time, then.
STALL = """#!lua flags=no-writes
local start = os.clock()
while os.clock() - start < tonumber(ARGV[1]) do end
return 1
"""
STALL_SECONDS = SOCKET_TIMEOUT_SECONDS + 0.5
GRANTED_USERS = 4_000


async def test_a_keyed_retry_judges_again_exactly_the_users_whose_result_was_temporary_or_unknown(
    client: AsyncTestClient[Any], raw_redis: Redis, services: Services, settings: Settings
) -> None:
    activity = await create_activity(
        client, stock=GRANTED_USERS, per_user_limit=3
    )  # a second grant would show
    aid = activity["id"]
    act = KeySpace(8, 4).activity(aid)
    await client.post("/v1/admin/blocklist", headers=ADMIN, json={"users": ["g-blocked"]})
    await wait_blocked(services, "g-blocked", "")
    users = ["g-blocked", *(f"g{n}" for n in range(GRANTED_USERS))]
    stalled_at: list[int] = []

    def stall_mid_call() -> None:
        """On a thread of its own: the test client runs the app on another thread while a request is made."""
        with redis.Redis.from_url(settings.redis.url, socket_timeout=30) as staller:
            deadline = time.monotonic() + 30
            while int(staller.hget(act.config, "taken") or 0) < 200 and time.monotonic() < deadline:
                time.sleep(0.001)
            stalled_at.append(int(staller.hget(act.config, "taken") or 0))
            staller.eval(STALL, 0, STALL_SECONDS)

    [threshold] = (await raw_redis.config_get("busy-reply-threshold")).values()
    await raw_redis.config_set("busy-reply-threshold", 60_000)  # no BUSY answers: calls wait for the stall
    try:
        stall = threading.Thread(target=stall_mid_call)
        stall.start()
        first = await grant(client, aid, users, key="push")
        await asyncio.to_thread(stall.join)
    finally:
        await raw_redis.config_set("busy-reply-threshold", threshold)
    assert stalled_at[0] < GRANTED_USERS, "the call was over before the stall"

    first_outcomes = outcomes(first)
    temporary = {user for user, outcome in first_outcomes.items() if outcome == "overloaded"}
    assert temporary, "the stall hit no grant: nothing to judge again"
    assert first_outcomes["g-blocked"] == "blocked"
    assert set(first_outcomes.values()) == {"granted", "blocked", "overloaded"}
    # Not closed: the call's record is open, with every other user's result kept.
    record, kept = act.grant_call("alice", "push"), act.grant_results("alice", "push")
    assert (await raw_redis.get(record) or b"").endswith(b"|")
    assert await raw_redis.hlen(kept) == len(users) - len(temporary)
    counts = {k.decode(): int(v) for k, v in (await raw_redis.hgetall(act.user_counts)).items()}
    ran_unseen = {user for user in temporary if counts.get(user) == 1}  # granted in Redis, the reply lost
    assert ran_unseen, "no claim ran after its reply was lost: the unknown case was not exercised"
    assert all(counts.get(user, 0) == 0 for user in temporary - ran_unseen)

    # A retry with the same key: the blocked user is not judged again (unblocked now, it would be granted).
    await client.post("/v1/admin/blocklist/remove", headers=ADMIN, json={"users": ["g-blocked"]})
    await wait_until(lambda: not services.blocklist.blocks("g-blocked", ""))
    second = await grant(client, aid, users, key="push")

    second_results = {r["user_id"]: r for r in second.json()["results"]}
    assert [r["user_id"] for r in second.json()["results"]] == users
    for result in first.json()["results"]:
        if result["user_id"] not in temporary:
            assert second_results[result["user_id"]] == result  # replayed as first answered
    for user in temporary:
        per_user = await raw_redis.get(act.idempotency(f"alice\x1f{user}", "push"))
        assert per_user is not None
        claim_id = json.loads(per_user.decode().split("|", 1)[1])["claim_id"]
        assert second_results[user] == {"user_id": user, "claim_id": claim_id}  # its one claim, run or not
    # Nobody granted twice: one pack, one claimed event per granted user.
    counts = {k.decode(): int(v) for k, v in (await raw_redis.hgetall(act.user_counts)).items()}
    assert counts == dict.fromkeys(users[1:], 1)
    assert await raw_redis.hget(act.config, "taken") == str(GRANTED_USERS).encode()
    claimed = [f for _, f in await raw_redis.xrange(act.events) if f[b"type"] == b"claimed"]
    assert sorted(f[b"user"].decode() for f in claimed) == sorted(users[1:])

    # Closed now: its answer is stored whole and replays byte for byte.
    stored = await raw_redis.get(record) or b""
    assert stored[32:] == b"|" + second.content
    assert await raw_redis.exists(kept) == 0
    third = await grant(client, aid, users, key="push")
    assert third.content == second.content
    assert await raw_redis.hget(act.config, "taken") == str(GRANTED_USERS).encode()
