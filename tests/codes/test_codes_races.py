"""Codes under concurrency, against a real gateway process (the in-process test client runs one request at a
time: its transport blocks the test's loop until the app has answered, so ``asyncio.gather`` over it is no
race). One code redeemed by 50 users at once is redeemed once; 100 wrong codes sent at once by one user are
judged at most 10 times, since the failed-attempt gates count an attempt before the code is judged."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.codes.format import new_code, shown
from gateway.keys import KeySpace
from gateway.scripts.runner import RedisClient
from gateway.settings import Settings
from tests.faults.support import Gateway, create_sale
from tests.helpers import ADMIN, bearer
from tests.http.support import assert_refusal
from tests.worker.conftest import persist

pytestmark = pytest.mark.slow

REDEEM = "/v1/codes/redeem"
RACERS = 50
GUESSES = 100
FAILED_LIMIT = 10


async def make_codes(http: httpx.AsyncClient, activity_id: str, count: int) -> list[str]:
    reply = await http.post(f"/v1/admin/activities/{activity_id}/codes", json={"count": count}, headers=ADMIN)
    assert reply.status_code == 201, reply.text
    codes: list[str] = reply.json()["codes"]
    return codes


async def redeem_all(http: httpx.AsyncClient, calls: list[tuple[str, str, str]]) -> list[httpx.Response]:
    """(code, user, device) each, all sent at once; the replies in the same order."""
    return list(
        await asyncio.gather(
            *(
                http.post(REDEEM, json={"code": code}, headers=bearer(user, device))
                for code, user, device in calls
            )
        )
    )


async def test_one_code_raced_by_fifty_users_is_redeemed_once(
    http: httpx.AsyncClient, gateway: Gateway, redis_client: RedisClient, settings: Settings
) -> None:
    sale = await create_sale(gateway.url, stock=10, pack_size=2)
    [code] = await make_codes(http, sale.activity_id, 1)
    users = [f"racer-{n}" for n in range(RACERS)]

    replies = await redeem_all(http, [(code, user, f"dev-{user}") for user in users])

    statuses = collections.Counter(r.status_code for r in replies)
    assert statuses == {201: 1, 404: RACERS - 1}, statuses
    [(winner, won)] = [(u, r) for u, r in zip(users, replies, strict=True) if r.status_code == 201]
    losers = [r for r in replies if r.status_code != 201]
    for reply in losers:
        assert_refusal(reply, 404, "invalid_code")
    assert len({r.content for r in losers}) == 1
    answer = won.json()
    assert [c["template_id"] for c in answer["coupons"]] == list(sale.template_ids)

    for user in users:
        wallet = await http.get("/v1/coupons", headers=bearer(user))
        assert wallet.status_code == 200, wallet.text
        held = {c["coupon_id"] for c in wallet.json()["items"]}
        assert held == ({c["coupon_id"] for c in answer["coupons"]} if user == winner else set()), user

    keyspace = KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets)
    redeemed = [
        int(n)
        for bucket in keyspace.code_partitions()
        if (n := await redis_client.hget(f"{bucket.tag}:counters", sale.activity_id)) is not None
    ]
    assert redeemed == [1]
    stats = await http.get(f"/v1/admin/activities/{sale.activity_id}/stats", headers=ADMIN)
    assert stats.json()["claimed"] == 1 and stats.json()["stock_left"] == 9

    # Another user's redeem is the only failed attempt each loser has; the winner has none.
    for user in users:
        fails = keyspace.wallet(user).failed_codes_of_user(user)
        assert await redis_client.zcard(fails) == (0 if user == winner else 1), user

    await persist(settings)
    conn_rows = await _claims_of(settings, sale.activity_id)
    assert conn_rows == [(answer["claim_id"], winner, "code")]


async def _claims_of(settings: Settings, activity_id: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(settings.postgres.url)
    try:
        rows = await conn.fetch(
            "SELECT claim_id, user_id, mode FROM claims WHERE activity_id = $1 ORDER BY claim_id", activity_id
        )
    finally:
        await conn.close()
    return [tuple(r) for r in rows]


async def test_a_hundred_wrong_codes_at_once_are_judged_at_most_ten_times(
    http: httpx.AsyncClient, gateway: Gateway, redis_client: RedisClient, settings: Settings
) -> None:
    sale = await create_sale(gateway.url, stock=10)
    [code] = await make_codes(http, sale.activity_id, 1)
    guesses = [shown(new_code()) for _ in range(GUESSES)]

    replies = await redeem_all(http, [(guess, "guesser", "dev-guesser") for guess in guesses])

    statuses = collections.Counter(r.status_code for r in replies)
    assert set(statuses) <= {404, 429}, statuses
    judged = statuses[404]
    assert 1 <= judged <= FAILED_LIMIT, statuses
    assert statuses[429] == GUESSES - judged >= GUESSES - FAILED_LIMIT
    for reply in replies:
        if reply.status_code == 404:
            assert_refusal(reply, 404, "invalid_code")
        else:
            assert_refusal(reply, 429, "rate_limited")
            assert 1 <= int(reply.headers["Retry-After"]) <= 3600

    keyspace = KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets)
    user_fails = keyspace.wallet("guesser").failed_codes_of_user("guesser")
    device_fails = keyspace.wallet("dev-guesser").failed_codes_of_device("dev-guesser")
    assert await redis_client.zcard(user_fails) == judged  # every attempt not judged was taken back
    assert await redis_client.zcard(device_fails) == judged

    if judged == FAILED_LIMIT:
        after = await http.post(REDEEM, json={"code": code}, headers=bearer("guesser", "dev-guesser"))
        assert_refusal(after, 429, "rate_limited")
    other = await http.post(REDEEM, json={"code": code}, headers=bearer("someone", "dev-someone"))
    assert other.status_code == 201, other.text  # the valid code was never touched by the guesses
