"""Codes over HTTP (product.md, "Code batch" and the codes routes): batches as JSON and CSV, their packs taken
from stock; redeeming with its own rules (window copied at batch time and blocklist apply; pause, end and the
claim limits do not), idempotency, the failed-attempt limit per user and per device, one answer for every
wrong code, and no plain code kept anywhere."""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from gateway import clock
from gateway.claim.service import ClaimService
from gateway.codes.format import ALPHABET, canonical, code_hash, new_code, shown
from gateway.codes.service import CodeService
from gateway.keys import KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.runner import RedisClient, ScriptRunner
from gateway.services import Services
from gateway.settings import Settings
from tests.helpers import ADMIN, bearer, create_activity, create_template
from tests.http.support import (
    assert_claim_answer,
    assert_refusal,
    claim_url,
    stock_left,
    wait_blocked,
)
from tests.worker.conftest import drain, persist
from worker.consumer import start_consumer

REDEEM = "/v1/codes/redeem"
SHOWN = re.compile(r"[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{5}")
FAILED_LIMIT = 10
WINDOW = 3600


def codes_url(activity_id: str) -> str:
    return f"/v1/admin/activities/{activity_id}/codes"


async def make_codes(client: AsyncTestClient[Any], activity_id: str, count: int) -> tuple[str, list[str]]:
    """A batch through the admin API: (batch_id, codes as shown)."""
    reply = await client.post(codes_url(activity_id), json={"count": count}, headers=ADMIN)
    assert reply.status_code == 201, reply.text
    body: dict[str, Any] = reply.json()
    return body["batch_id"], body["codes"]


async def redeem(
    client: AsyncTestClient[Any], code: str, user: str, device: str | None = None, *, key: str | None = None
) -> httpx.Response:
    headers = bearer(user, device)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post(REDEEM, json={"code": code}, headers=headers)


def typo(code: str, rng: random.Random | None = None) -> str:
    """The code with one symbol (not a dash) changed to another symbol of the alphabet."""
    rng = rng or random.Random()
    at = rng.choice([i for i, symbol in enumerate(code) if symbol != "-"])
    return code[:at] + rng.choice(ALPHABET.replace(code[at].upper(), "")) + code[at + 1 :]


def guess() -> str:
    """A well-formed code (its check symbol right) that no batch made, with near certainty."""
    return shown(new_code())


async def codes_activity(
    client: AsyncTestClient[Any], *, counts: tuple[int, ...] = (1,), **fields: Any
) -> tuple[dict[str, Any], list[str]]:
    """An activity whose pack holds one template per count; (the activity, its template ids in pack order)."""
    templates = [(await create_template(client, amount_off=100 * (n + 1)))["id"] for n in range(len(counts))]
    pack = [{"template_id": t, "count": c} for t, c in zip(templates, counts, strict=True)]
    activity = await create_activity(client, pack=pack, **fields)
    return activity, [t for t, c in zip(templates, counts, strict=True) for _ in range(c)]


async def stats(client: AsyncTestClient[Any], activity_id: str) -> dict[str, Any]:
    reply = await client.get(f"/v1/admin/activities/{activity_id}/stats", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    found: dict[str, Any] = reply.json()
    return found


async def wallet_ids(client: AsyncTestClient[Any], user: str) -> set[str]:
    reply = await client.get("/v1/coupons", headers=bearer(user))
    assert reply.status_code == 200, reply.text
    return {item["coupon_id"] for item in reply.json()["items"]}


def coupon_ids(reply: httpx.Response) -> set[str]:
    return {c["coupon_id"] for c in reply.json()["coupons"]}


def assert_rate_limited(reply: httpx.Response) -> int:
    assert_refusal(reply, 429, "rate_limited")
    retry_after = int(reply.headers["Retry-After"])
    assert 1 <= retry_after <= WINDOW
    return retry_after


# --- batches ---------------------------------------------------------------------------------------------


async def test_a_batch_as_json(
    client: AsyncTestClient[Any],
    services: Services,
    settings: Settings,
    redis_client: RedisClient,
    keyspace: KeySpace,
) -> None:
    activity, _ = await codes_activity(client, stock=10)
    reply = await client.post(codes_url(activity["id"]), json={"count": 3}, headers=ADMIN)

    assert reply.status_code == 201, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"batch_id", "codes"}
    assert isinstance(body["batch_id"], str) and body["batch_id"]
    codes: list[str] = body["codes"]
    assert len(codes) == len(set(codes)) == 3
    assert all(SHOWN.fullmatch(code) and canonical(code) == code.replace("-", "") for code in codes), codes
    assert await stock_left(client, activity["id"]) == 7

    act = keyspace.activity(activity["id"])
    assert await redis_client.hgetall(act.code_batches) == {body["batch_id"]: "3"}
    conn = await asyncpg.connect(settings.postgres.url)
    try:
        batch = await conn.fetchrow("SELECT * FROM code_batches WHERE batch_id = $1", body["batch_id"])
        hashes = {r["code_hash"] for r in await conn.fetch("SELECT code_hash FROM codes")}
    finally:
        await conn.close()
    assert batch is not None
    assert (batch["activity_id"], batch["count"], batch["state"]) == (activity["id"], 3, "ready")
    key = services.codes.hash_key
    assert hashes == {code_hash(key, code.replace("-", "")) for code in codes}
    for h in hashes:  # each in the bucket its hash names
        assert await redis_client.hexists(keyspace.code(h).codes, h)


async def test_a_batch_as_csv(client: AsyncTestClient[Any]) -> None:
    activity, templates = await codes_activity(client, stock=10)
    reply = await client.post(
        codes_url(activity["id"]), json={"count": 4}, headers={**ADMIN, "Accept": "text/csv"}
    )

    assert reply.status_code == 201, reply.text
    assert reply.headers["content-type"].startswith("text/csv")
    lines = reply.text.splitlines()
    assert lines[0] == "batch_id,code"
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 4 and all(len(row) == 2 for row in rows)
    assert len({batch_id for batch_id, _ in rows}) == 1
    codes = [code for _, code in rows]
    assert len(set(codes)) == 4 and all(SHOWN.fullmatch(code) for code in codes)
    assert await stock_left(client, activity["id"]) == 6
    assert_claim_answer(await redeem(client, codes[2], "csv-user"), templates)


@pytest.mark.parametrize(
    "body",
    [
        {"count": 0},
        {"count": 100_001},
        {"count": -1},
        {"count": "3"},
        {"count": 1.5},
        {},
        {"count": 1, "x": 1},
    ],
)
async def test_count_bounds_and_shape(
    client: AsyncTestClient[Any], redis_client: RedisClient, keyspace: KeySpace, body: dict[str, Any]
) -> None:
    activity, _ = await codes_activity(client, stock=200_000)
    reply = await client.post(codes_url(activity["id"]), json=body, headers=ADMIN)
    assert_refusal(reply, 400, "invalid_request")
    assert await stock_left(client, activity["id"]) == 200_000
    assert not await redis_client.exists(keyspace.activity(activity["id"]).code_batches)


async def test_the_largest_batch(client: AsyncTestClient[Any]) -> None:
    activity, _ = await codes_activity(client, stock=150_000)
    reply = await client.post(codes_url(activity["id"]), json={"count": 100_000}, headers=ADMIN)
    assert reply.status_code == 201, reply.status_code
    codes = reply.json()["codes"]
    assert len(set(codes)) == 100_000
    assert await stock_left(client, activity["id"]) == 50_000
    assert (await redeem(client, codes[-1], "last")).status_code == 201


async def test_a_batch_larger_than_the_stock_left_takes_nothing(
    client: AsyncTestClient[Any], settings: Settings, redis_client: RedisClient, keyspace: KeySpace
) -> None:
    activity, _ = await codes_activity(client, stock=5)
    assert (await client.post(claim_url(activity["id"]), headers=bearer("early"))).status_code == 201
    act = keyspace.activity(activity["id"])
    config_before = await redis_client.hgetall(act.config)

    reply = await client.post(codes_url(activity["id"]), json={"count": 5}, headers=ADMIN)

    assert_refusal(reply, 409, "state_conflict")
    assert "codes" not in reply.json()
    assert await redis_client.hgetall(act.config) == config_before
    assert await stock_left(client, activity["id"]) == 4
    assert not await redis_client.exists(act.code_batches)
    for bucket in keyspace.code_partitions():
        assert not await redis_client.exists(f"{bucket.tag}:codes")
    conn = await asyncpg.connect(settings.postgres.url)
    try:
        states = [r["state"] for r in await conn.fetch("SELECT state FROM code_batches")]
    finally:
        await conn.close()
    assert states == ["void"]  # recorded first, then voided: nobody saw its codes

    _, codes = await make_codes(client, activity["id"], 4)  # exactly what is left
    assert len(codes) == 4 and await stock_left(client, activity["id"]) == 0
    assert_refusal(await client.post(claim_url(activity["id"]), headers=bearer("late")), 409, "sold_out")


async def test_no_batch_for_an_ended_or_unknown_activity(client: AsyncTestClient[Any]) -> None:
    activity, _ = await codes_activity(client, stock=5)
    assert (await client.post(f"/v1/admin/activities/{activity['id']}/end", headers=ADMIN)).status_code == 200
    assert_refusal(
        await client.post(codes_url(activity["id"]), json={"count": 1}, headers=ADMIN), 409, "state_conflict"
    )
    assert await stock_left(client, activity["id"]) == 5
    assert_refusal(await client.post(codes_url("nope"), json={"count": 1}, headers=ADMIN), 404, "not_found")


async def batch_rows(settings: Settings) -> list[str]:
    """The states of every code batch recorded in Postgres."""
    conn = await asyncpg.connect(settings.postgres.url)
    try:
        return [r["state"] for r in await conn.fetch("SELECT state FROM code_batches")]
    finally:
        await conn.close()


async def test_no_batch_for_an_activity_past_its_end(
    client: AsyncTestClient[Any],
    settings: Settings,
    redis_client: RedisClient,
    keyspace: KeySpace,
    moved_clock: None,
) -> None:
    """product.md: a code batch for an activity past ends_at is state_conflict (its codes could never be
    redeemed), though nobody ended it; ends_at is exclusive. Nothing is taken, made or recorded."""
    now = int(time.time())
    activity, _ = await codes_activity(client, stock=5, starts_at=now - 100, ends_at=now + 3600)
    aid = activity["id"]
    for at in (now + 3600, now + 7200):
        clock.set_to(at)
        reply = await client.post(codes_url(aid), json={"count": 1}, headers=ADMIN)
        assert_refusal(reply, 409, "state_conflict")
        assert "codes" not in reply.json()
    assert await stock_left(client, aid) == 5
    assert not await redis_client.exists(keyspace.activity(aid).code_batches)
    assert await batch_rows(settings) == []

    clock.set_to(now + 3599)  # the last second of the window
    assert (await client.post(codes_url(aid), json={"count": 1}, headers=ADMIN)).status_code == 201
    assert await stock_left(client, aid) == 4


async def test_after_its_end_an_activity_takes_grants_and_restocks_but_no_batch(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    """product.md: after ends_at grants and restocks still work (compensation grants); a code batch does not."""
    now = int(time.time())
    activity, _ = await codes_activity(client, stock=2, starts_at=now - 100, ends_at=now - 10)
    aid = activity["id"]
    assert_refusal(await client.post(codes_url(aid), json={"count": 1}, headers=ADMIN), 409, "state_conflict")
    restocked = await client.post(f"/v1/admin/activities/{aid}/stock", json={"delta": 3}, headers=ADMIN)
    assert restocked.status_code == 200, restocked.text
    granted = await client.post(
        f"/v1/admin/activities/{aid}/grants", json={"user_ids": ["late-1", "late-2"]}, headers=ADMIN
    )
    assert granted.status_code == 200, granted.text
    assert all("claim_id" in result for result in granted.json()["results"]), granted.text
    assert len(await wallet_ids(client, "late-1")) == 1
    assert await stock_left(client, aid) == 2 + 3 - 2
    assert_refusal(await client.post(codes_url(aid), json={"count": 1}, headers=ADMIN), 409, "state_conflict")
    assert await batch_rows(settings) == []


async def test_the_script_refuses_a_batch_past_the_end_whatever_the_caller_read(
    client: AsyncTestClient[Any],
    services: Services,
    settings: Settings,
    runner: ScriptRunner,
    redis_client: RedisClient,
    keyspace: KeySpace,
    db: asyncpg.Pool,
) -> None:
    """The window the gateway read may be stale (an operator moved ends_at meanwhile): code_batch, the authority,
    refuses the reserve, and the batch recorded first is voided. The app serves from a loop of its own, so the
    batch is made here by a CodeService of the test's loop, on the same Valkey and Postgres."""
    now = int(time.time())
    activity, _ = await codes_activity(client, stock=5, starts_at=now - 100, ends_at=now - 10)
    aid = activity["id"]
    stale = {**await redis_client.hgetall(keyspace.activity(aid).config), "ends_at": str(now + 3600)}
    ttl = services.codes.idempotency_ttl
    making = CodeService(
        runner, keyspace, db, ClaimService(runner, keyspace, ttl), services.codes.hash_key, ttl
    )

    with pytest.raises(DomainError) as refused:
        await making.make_batch(aid, stale, 2, "alice", now=now)

    assert refused.value.outcome is Outcome.STATE_CONFLICT
    assert await stock_left(client, aid) == 5
    assert not await redis_client.exists(keyspace.activity(aid).code_batches)
    assert await batch_rows(settings) == ["void"]
    for bucket in keyspace.code_partitions():
        assert not await redis_client.exists(f"{bucket.tag}:codes")


async def test_stock_left_drops_by_count_and_stats_count_redeemed_codes(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    activity, _ = await codes_activity(client, stock=20, per_user_limit=1)
    aid = activity["id"]
    assert (await client.post(claim_url(aid), headers=bearer("claimer"))).status_code == 201
    _, codes = await make_codes(client, aid, 6)
    assert await stock_left(client, aid) == 20 - 1 - 6
    assert (await stats(client, aid))["claimed"] == 1  # made, not yet redeemed

    for n, code in enumerate(codes[:4]):
        assert (await redeem(client, code, f"r{n}")).status_code == 201
    assert (await redeem(client, codes[0], "r0")).status_code == 201  # a replay counts once

    figures = await stats(client, aid)
    assert figures["stock_left"] == 13
    assert figures["claimed"] == 1 + 4
    assert figures["face_value_out"] == 5 * 100

    await persist(settings)
    figures = await stats(client, aid)
    assert (figures["claimed"], figures["persisted"]) == (5, 5)


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "wrong-key-0123456789abcdef"}, bearer("user")],
    ids=["none", "wrong", "user-token"],
)
async def test_a_batch_needs_an_operator(
    client: AsyncTestClient[Any], redis_client: RedisClient, keyspace: KeySpace, headers: dict[str, str]
) -> None:
    activity, _ = await codes_activity(client, stock=5)
    reply = await client.post(codes_url(activity["id"]), json={"count": 1}, headers=headers)
    assert_refusal(reply, 401, "unauthorized")
    assert await stock_left(client, activity["id"]) == 5
    assert not await redis_client.exists(keyspace.activity(activity["id"]).code_batches)


# --- redeeming -------------------------------------------------------------------------------------------


async def test_redeem_answers_like_a_claim_and_fills_the_wallet(client: AsyncTestClient[Any]) -> None:
    activity, templates = await codes_activity(client, counts=(2, 1), stock=10)
    _, codes = await make_codes(client, activity["id"], 2)

    first = await redeem(client, codes[0], "bob")

    answer = assert_claim_answer(first, templates)
    assert first.headers["content-type"].startswith("application/json")
    wallet = (await client.get("/v1/coupons", headers=bearer("bob"))).json()["items"]
    assert {c["coupon_id"] for c in wallet} == coupon_ids(first)
    assert all(c["activity_id"] == activity["id"] and c["status"] == "available" for c in wallet)
    by_id = {c["coupon_id"]: c for c in wallet}
    for coupon in answer["coupons"]:
        held = by_id[coupon["coupon_id"]]
        assert (held["template_id"], held["valid_from"], held["valid_until"]) == (
            coupon["template_id"],
            coupon["valid_from"],
            coupon["valid_until"],
        )

    for typed in (codes[0], codes[0].lower(), codes[0].replace("-", ""), " ".join(codes[0].split("-"))):
        again = await redeem(client, typed, "bob", "another-device")
        assert again.status_code == 201 and again.content == first.content, typed
    assert await wallet_ids(client, "bob") == coupon_ids(first)  # nothing more

    assert_refusal(await redeem(client, codes[0], "carol"), 404, "invalid_code")
    assert await wallet_ids(client, "carol") == set()


async def test_every_wrong_code_gets_the_same_answer(client: AsyncTestClient[Any]) -> None:
    activity, _ = await codes_activity(client, stock=10)
    _, codes = await make_codes(client, activity["id"], 2)
    assert (await redeem(client, codes[0], "owner")).status_code == 201

    answers = [
        await redeem(client, codes[0], "u-taken"),  # someone else redeemed it
        await redeem(client, typo(codes[1]), "u-typo"),  # one symbol mistyped
        await redeem(client, typo(codes[0]).lower(), "u-typo2"),
        await redeem(client, guess(), "u-guess"),  # well formed, never made
        await redeem(client, "NOT-A-CODE", "u-junk"),  # not even well formed
    ]

    for reply in answers:
        assert_refusal(reply, 404, "invalid_code")
    assert len({(r.status_code, r.content) for r in answers}) == 1
    assert len({r.headers["content-type"] for r in answers}) == 1
    assert all("retry-after" not in r.headers for r in answers)
    assert (await redeem(client, codes[1], "u-typo")).status_code == 201  # the typo did not use it up


async def test_a_redeemed_code_does_not_count_toward_claims(
    client: AsyncTestClient[Any], redis_client: RedisClient, keyspace: KeySpace
) -> None:
    activity, _ = await codes_activity(client, stock=10, per_user_limit=1, per_device_limit=1)
    aid = activity["id"]
    _, codes = await make_codes(client, aid, 3)

    # At its limit, a user can still redeem.
    assert (await client.post(claim_url(aid), headers=bearer("ann", "dev-ann"))).status_code == 201
    assert_refusal(await client.post(claim_url(aid), headers=bearer("ann", "dev-ann")), 409, "limit_reached")
    assert (await redeem(client, codes[0], "ann", "dev-ann")).status_code == 201
    assert (await redeem(client, codes[1], "ann", "dev-ann")).status_code == 201
    assert len(await wallet_ids(client, "ann")) == 3

    # Redeeming first does not use up the claim (nor the device's).
    assert (await redeem(client, codes[2], "ben", "dev-ben")).status_code == 201
    assert (await client.post(claim_url(aid), headers=bearer("ben", "dev-ben"))).status_code == 201
    act = keyspace.activity(aid)
    assert await redis_client.hgetall(act.user_counts) == {"ann": "1", "ben": "1"}
    assert await redis_client.hgetall(act.device_counts) == {"dev-ann": "1", "dev-ben": "1"}


async def test_codes_ignore_pause_and_end(client: AsyncTestClient[Any]) -> None:
    activity, _ = await codes_activity(client, stock=10, per_user_limit=5)
    aid = activity["id"]
    _, codes = await make_codes(client, aid, 3)

    assert (await client.post(f"/v1/admin/activities/{aid}/pause", headers=ADMIN)).status_code == 200
    assert_refusal(await client.post(claim_url(aid), headers=bearer("x")), 409, "paused")
    assert (await redeem(client, codes[0], "x")).status_code == 201

    assert (await client.post(f"/v1/admin/activities/{aid}/end", headers=ADMIN)).status_code == 200
    assert_refusal(await client.post(claim_url(aid), headers=bearer("y")), 409, "ended")
    assert (await redeem(client, codes[1], "y")).status_code == 201
    assert (await redeem(client, codes[0], "x")).status_code == 201  # and its replay


async def test_codes_honour_the_window_copied_at_batch_time(
    client: AsyncTestClient[Any], moved_clock: None
) -> None:
    now = int(time.time())
    activity, _ = await codes_activity(
        client, stock=10, per_user_limit=5, starts_at=now + 300, ends_at=now + 3600
    )
    aid = activity["id"]
    _, codes = await make_codes(client, aid, 3)
    for _ in range(FAILED_LIMIT + 1):  # refused on the window: not a failed attempt
        assert_refusal(await redeem(client, codes[0], "w"), 409, "not_started")

    moved = await client.patch(f"/v1/admin/activities/{aid}", json={"starts_at": now - 10}, headers=ADMIN)
    assert moved.status_code == 200, moved.text
    claimed = await client.post(claim_url(aid), headers=bearer("w"))
    assert claimed.status_code == 201  # the activity moved ...
    assert_refusal(await redeem(client, codes[0], "w"), 409, "not_started")  # ... the batch's copy did not

    clock.set_to(now + 300)
    assert (await redeem(client, codes[0], "w")).status_code == 201  # starts_at is inclusive
    clock.set_to(now + 3599)
    assert (await redeem(client, codes[1], "w")).status_code == 201
    clock.set_to(now + 3600)  # ends_at is exclusive
    assert_refusal(await redeem(client, codes[2], "w"), 409, "ended")
    clock.set_to(now + 7200)
    assert_refusal(await redeem(client, codes[2], "w2"), 409, "ended")


async def test_blocked_users_and_devices_cannot_redeem(
    client: AsyncTestClient[Any], services: Services, redis_client: RedisClient, keyspace: KeySpace
) -> None:
    activity, _ = await codes_activity(client, stock=10)
    _, codes = await make_codes(client, activity["id"], 2)
    added = await client.post(
        "/v1/admin/blocklist", headers=ADMIN, json={"users": ["bad"], "devices": ["dev-x"]}
    )
    assert added.status_code == 200, added.text
    await wait_blocked(services, "bad", "dev-ok")
    await wait_blocked(services, "good", "dev-x")

    for _ in range(FAILED_LIMIT + 1):  # refused as blocked: not a failed attempt
        assert_refusal(await redeem(client, codes[0], "bad", "dev-ok"), 403, "blocked")
    assert_refusal(await redeem(client, codes[0], "good", "dev-x"), 403, "blocked")
    wallet = keyspace.wallet("bad")
    assert await redis_client.zcard(wallet.failed_codes_of_user("bad")) == 0

    assert (await redeem(client, codes[0], "good", "dev-ok")).status_code == 201  # not used up
    assert await wallet_ids(client, "bad") == set()


async def test_idempotency_key(client: AsyncTestClient[Any]) -> None:
    activity, _ = await codes_activity(client, stock=10)
    _, codes = await make_codes(client, activity["id"], 3)

    first = await redeem(client, codes[0], "ida", key="k-1")
    assert first.status_code == 201, first.text
    for typed in (codes[0], codes[0].lower()):
        again = await redeem(client, typed, "ida", key="k-1")
        assert again.status_code == 201 and again.content == first.content

    conflict = await redeem(client, codes[1], "ida", key="k-1")
    assert_refusal(conflict, 422, "idempotency_conflict")
    assert_refusal(await redeem(client, guess(), "ida", key="k-1"), 422, "idempotency_conflict")
    assert await wallet_ids(client, "ida") == coupon_ids(first)

    other = await redeem(client, codes[1], "idb", key="k-1")  # the key is scoped to the user
    assert other.status_code == 201 and other.json()["claim_id"] != first.json()["claim_id"]
    fresh = await redeem(client, codes[2], "ida", key="k-2")
    assert fresh.status_code == 201 and fresh.content != first.content
    assert await wallet_ids(client, "ida") == coupon_ids(first) | coupon_ids(fresh)

    assert_refusal(await redeem(client, codes[2], "ida", key="x" * 65), 400, "invalid_request")


# --- the failed-attempt limit ----------------------------------------------------------------------------


async def test_ten_invalid_codes_then_every_redeem_is_rate_limited(client: AsyncTestClient[Any]) -> None:
    activity, _ = await codes_activity(client, stock=10)
    _, codes = await make_codes(client, activity["id"], 3)
    assert (await redeem(client, codes[0], "guesser", "dev-g")).status_code == 201
    rng = random.Random(7)

    started = int(time.time())
    for n in range(FAILED_LIMIT):
        wrong = guess() if n % 2 else typo(codes[1], rng)
        assert_refusal(await redeem(client, wrong, "guesser", "dev-g"), 404, "invalid_code")

    for code in (codes[1], codes[0], guess()):  # a valid code, a repeat of a success, another guess
        retry_after = assert_rate_limited(await redeem(client, code, "guesser", "dev-g"))
        assert WINDOW - (int(time.time()) - started) - 2 <= retry_after <= WINDOW
    assert (await redeem(client, codes[1], "someone", "dev-s")).status_code == 201  # codes[1] was not used


async def test_valid_redeems_do_not_count(client: AsyncTestClient[Any]) -> None:
    activity, _ = await codes_activity(client, stock=10)
    _, codes = await make_codes(client, activity["id"], 4)
    for _ in range(FAILED_LIMIT - 1):
        assert_refusal(await redeem(client, guess(), "v", "dev-v"), 404, "invalid_code")
    for code in codes[:3]:
        assert (await redeem(client, code, "v", "dev-v")).status_code == 201
    assert (await redeem(client, codes[0], "v", "dev-v")).status_code == 201
    assert_refusal(await redeem(client, guess(), "v", "dev-v"), 404, "invalid_code")  # the tenth
    assert_rate_limited(await redeem(client, codes[3], "v", "dev-v"))


async def test_the_limit_holds_per_device(client: AsyncTestClient[Any]) -> None:
    activity, _ = await codes_activity(client, stock=10)
    _, codes = await make_codes(client, activity["id"], 3)
    for user in ("pa", "pb"):
        for _ in range(FAILED_LIMIT // 2):
            assert_refusal(await redeem(client, guess(), user, "shared-device"), 404, "invalid_code")

    assert_rate_limited(
        await redeem(client, codes[0], "pc", "shared-device")
    )  # a fresh user, the same device
    assert_rate_limited(await redeem(client, codes[0], "pa", "shared-device"))
    assert (await redeem(client, codes[0], "pa", "own-device")).status_code == 201  # pa alone has 5
    assert (await redeem(client, codes[1], "pc", "own-device-c")).status_code == 201


# --- no plain code kept ----------------------------------------------------------------------------------


def leaks(code: str, text: str) -> bool:
    """Whether an upper-case text gives the code away: its 12 random symbols, with or without dashes or spaces
    (canonical, as shown, as typed)."""
    return code.replace("-", "").upper()[:12] in re.sub(r"[\s-]", "", text)


async def redis_text(plain: Redis) -> str:
    """Every key and every value on the node (stream entries and groups included), as one upper-case text."""
    parts: list[str] = []
    async for key in plain.scan_iter(count=1000):
        parts.append(repr(key))
        found = await plain.type(key)
        kind = found.decode() if isinstance(found, bytes) else found
        if kind == "string":
            parts.append(repr(await plain.get(key)))
        elif kind == "hash":
            parts.append(repr(await plain.hgetall(key)))
        elif kind == "set":
            parts.append(repr(await plain.smembers(key)))
        elif kind == "zset":
            parts.append(repr(await plain.zrange(key, 0, -1, withscores=True)))
        elif kind == "list":
            parts.append(repr(await plain.lrange(key, 0, -1)))
        elif kind == "stream":
            parts.append(repr(await plain.xrange(key)))
            parts.append(repr(await plain.xinfo_groups(key)))
        else:
            raise AssertionError(f"unexpected type {kind} of {key!r}")
    return "\n".join(parts).upper()


async def postgres_text(url: str) -> tuple[str, dict[str, int]]:
    """Every row of every table of the ledger as text (upper case), and each table's row count."""
    conn = await asyncpg.connect(url)
    try:
        tables = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
            )
        ]
        parts: list[str] = []
        counts: dict[str, int] = {}
        for table in tables:
            rows = await conn.fetch(f'SELECT t::text AS row FROM "{table}" AS t')
            counts[table] = len(rows)
            parts += [f"{table}: {r['row']}" for r in rows]
    finally:
        await conn.close()
    return "\n".join(parts).upper(), counts


async def test_no_plain_code_is_kept_anywhere(
    client: AsyncTestClient[Any],
    services: Services,
    settings: Settings,
    raw_redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    activity, _ = await codes_activity(client, counts=(2,), stock=50)
    aid = activity["id"]
    _, codes = await make_codes(client, aid, 5)
    csv = await client.post(codes_url(aid), json={"count": 3}, headers={**ADMIN, "Accept": "text/csv"})
    assert csv.status_code == 201
    codes += [line.split(",")[1] for line in csv.text.splitlines()[1:]]
    assert len(codes) == 8

    assert (await redeem(client, codes[0].lower(), "p1")).status_code == 201
    assert (await redeem(client, codes[1], "p2", key="idem-1")).status_code == 201
    assert (await redeem(client, codes[1], "p2", key="idem-1")).status_code == 201
    assert (await redeem(client, codes[5].replace("-", " "), "p3")).status_code == 201
    assert (await redeem(client, codes[0], "p4")).status_code == 404
    assert (await redeem(client, typo(codes[2]), "p4")).status_code == 404
    assert (await redeem(client, codes[0], "p2", key="idem-1")).status_code == 422

    consumer = await start_consumer(settings)
    try:
        assert await drain(consumer) > 0
    finally:
        await consumer.redis.close()
        await consumer.pool.close()

    hashes = [code_hash(services.codes.hash_key, code.replace("-", "")) for code in codes]
    in_redis = await redis_text(raw_redis)
    in_postgres, counts = await postgres_text(settings.postgres.url)
    logged = "\n".join(
        [caplog.text, *(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)]
    ).upper()
    # The searches see what was written: the keyed hashes, the claims, the idempotency record, the batches.
    assert all(h.upper() in in_redis and h.upper() in in_postgres for h in hashes)
    assert counts["codes"] == 8 and counts["code_batches"] == 2
    assert counts["claims"] == 3 and counts["idempotency_records"] == 1 and counts["audit"] >= 3
    assert caplog.records, "nothing was logged at all"
    for code in codes:
        assert not leaks(code, in_redis), f"{code} in Redis"
        assert not leaks(code, in_postgres), f"{code} in Postgres"
        assert not leaks(code, logged), f"{code} in the logs"


async def test_the_search_finds_a_plain_code(raw_redis: Redis, settings: Settings, db: asyncpg.Pool) -> None:
    """The scans above would see a code kept in plain anywhere: in a stream entry, in a table row."""
    code, other = new_code(), new_code()
    await raw_redis.xadd("{c:0}:events", {"type": "leak", "note": f"typed {code.lower()}"})
    await db.execute(
        "INSERT INTO conflicts (partition, entry_id, reason, entry) VALUES ($1, $2, $3, $4)",
        "{c:0}",
        "1-0",
        "leak",
        f'{{"code": "{shown(other)}"}}',
    )
    in_redis = await redis_text(raw_redis)
    in_postgres, _ = await postgres_text(settings.postgres.url)
    assert leaks(code, in_redis) and not leaks(other, in_redis)
    assert leaks(other, in_postgres) and not leaks(code, in_postgres)


async def test_keyspace_of_the_codes(
    client: AsyncTestClient[Any], redis_client: RedisClient, keyspace: KeySpace
) -> None:
    """The failed-attempt counters live in the user's and the device's own wallet buckets."""
    activity, _ = await codes_activity(client, stock=10)
    await make_codes(client, activity["id"], 1)
    assert_refusal(await redeem(client, guess(), "kuser", "kdevice"), 404, "invalid_code")
    user_fails = keyspace.wallet("kuser").failed_codes_of_user("kuser")
    device_fails = keyspace.wallet("kdevice").failed_codes_of_device("kdevice")
    assert await redis_client.zcard(user_fails) == 1
    assert await redis_client.zcard(device_fails) == 1
