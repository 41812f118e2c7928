"""``POST /v1/activities/{id}/claim``: every outcome it can produce, status and body, against real servers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from gateway.keys import BLOCKLIST, KeySpace
from gateway.scripts.fence import FENCED_RETRY_AFTER
from gateway.services import Services
from gateway.settings import Settings
from tests.helpers import bearer, create_activity, create_template
from tests.http.support import (
    admin_activity,
    assert_claim_answer,
    assert_refusal,
    claim_url,
    stock_left,
    wait_blocked,
)
from tests.worker.conftest import persist

DAY = 86_400


# --- successes


async def test_ok_answers_201_with_the_pack(client: AsyncTestClient[Any]) -> None:
    relative = await create_template(client, valid_days=7)
    now = int(time.time())
    absolute = await create_template(client, valid_days=None, valid_from=now - 60, valid_until=now + 30 * DAY)
    activity = await create_activity(
        client,
        pack=[{"template_id": relative["id"], "count": 2}, {"template_id": absolute["id"], "count": 1}],
        stock=3,
    )
    before = int(time.time())
    reply = await client.post(claim_url(activity["id"]), headers=bearer("u1"))
    after = int(time.time())
    body = assert_claim_answer(reply, [relative["id"], relative["id"], absolute["id"]])
    assert reply.headers["content-type"].startswith("application/json")
    for coupon in body["coupons"][:2]:
        assert before <= coupon["valid_from"] <= after
        assert coupon["valid_until"] == coupon["valid_from"] + 7 * DAY
    assert (body["coupons"][2]["valid_from"], body["coupons"][2]["valid_until"]) == (now - 60, now + 30 * DAY)
    assert await stock_left(client, activity["id"]) == 2


async def test_channel_body_is_accepted_and_recorded(client: AsyncTestClient[Any], raw_redis: Redis) -> None:
    activity = await create_activity(client, stock=3)
    reply = await client.post(claim_url(activity["id"]), json={"channel": "x"}, headers=bearer("u1"))
    assert_claim_answer(reply, [activity["pack"][0]["template_id"]])
    events = await raw_redis.xrange(KeySpace.activity(activity["id"]).events)
    claimed = [fields for _, fields in events if fields[b"type"] == b"claimed"]
    assert len(claimed) == 1
    assert claimed[0][b"channel"] == b"x"


@pytest.mark.parametrize("raw", [b"", b"{}", b"  ", b'{"channel": "live-20:00"}'])
async def test_empty_or_minimal_bodies_are_accepted(client: AsyncTestClient[Any], raw: bytes) -> None:
    activity = await create_activity(client, stock=3)
    reply = await client.post(
        claim_url(activity["id"]), content=raw, headers={**bearer("u1"), "Content-Type": "application/json"}
    )
    assert_claim_answer(reply, [activity["pack"][0]["template_id"]])


async def test_replay_with_the_same_key_answers_the_same_bytes_and_takes_nothing(
    client: AsyncTestClient[Any],
) -> None:
    activity = await create_activity(client, stock=5, per_user_limit=3)
    headers = {**bearer("u1"), "Idempotency-Key": "order-42"}
    first = await client.post(claim_url(activity["id"]), json={"channel": "app"}, headers=headers)
    assert_claim_answer(first, [activity["pack"][0]["template_id"]])
    assert await stock_left(client, activity["id"]) == 4
    for _ in range(3):
        again = await client.post(claim_url(activity["id"]), json={"channel": "app"}, headers=headers)
        assert again.status_code == 201
        assert again.content == first.content
    # the decoded body is what counts, not its formatting
    spaced = await client.post(
        claim_url(activity["id"]),
        content=b'{ "channel" : "app" }',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert spaced.status_code == 201
    assert spaced.content == first.content
    assert await stock_left(client, activity["id"]) == 4


async def test_replay_after_sell_out_still_answers_the_first_success(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=1)
    headers = {**bearer("u1"), "Idempotency-Key": "k1"}
    first = await client.post(claim_url(activity["id"]), headers=headers)
    assert first.status_code == 201
    assert_refusal(await client.post(claim_url(activity["id"]), headers=bearer("u2")), 409, "sold_out")
    again = await client.post(claim_url(activity["id"]), headers=headers)
    assert again.status_code == 201
    assert again.content == first.content
    assert await stock_left(client, activity["id"]) == 0


async def test_the_key_is_scoped_to_the_user_and_the_activity(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=5)
    other = await create_activity(client, stock=5)
    one = await client.post(claim_url(activity["id"]), headers={**bearer("u1"), "Idempotency-Key": "same"})
    two = await client.post(claim_url(activity["id"]), headers={**bearer("u2"), "Idempotency-Key": "same"})
    three = await client.post(claim_url(other["id"]), headers={**bearer("u1"), "Idempotency-Key": "same"})
    assert one.status_code == two.status_code == three.status_code == 201
    assert len({reply.json()["claim_id"] for reply in (one, two, three)}) == 3
    assert await stock_left(client, activity["id"]) == 3
    assert await stock_left(client, other["id"]) == 4


async def test_racing_retries_with_one_key_take_one_pack(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=5, per_user_limit=5)
    headers = {**bearer("u1"), "Idempotency-Key": "racing"}
    replies = await asyncio.gather(
        *(client.post(claim_url(activity["id"]), headers=headers) for _ in range(8))
    )
    assert {reply.status_code for reply in replies} == {201}
    assert len({reply.content for reply in replies}) == 1
    assert await stock_left(client, activity["id"]) == 4


async def test_a_refusal_is_not_kept(client: AsyncTestClient[Any], raw_redis: Redis) -> None:
    """A refused keyed request retried later is judged afresh."""
    activity = await create_activity(client, stock=2)
    config = KeySpace.activity(activity["id"]).config
    headers = {**bearer("u1"), "Idempotency-Key": "retry-me"}
    await raw_redis.hset(config, "status", "paused")
    assert_refusal(await client.post(claim_url(activity["id"]), headers=headers), 409, "paused")
    await raw_redis.hset(config, "status", "active")
    assert_claim_answer(
        await client.post(claim_url(activity["id"]), headers=headers), [activity["pack"][0]["template_id"]]
    )


# --- refusals


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"channel": "app"}, {"channel": "web"}),
        (None, {"channel": "web"}),
        ({"channel": "app"}, None),
    ],
)
async def test_idempotency_conflict(client: AsyncTestClient[Any], first: Any, second: Any) -> None:
    activity = await create_activity(client, stock=5, per_user_limit=3)
    headers = {**bearer("u1"), "Idempotency-Key": "k-conflict"}
    assert (await client.post(claim_url(activity["id"]), json=first, headers=headers)).status_code == 201
    reply = await client.post(claim_url(activity["id"]), json=second, headers=headers)
    assert_refusal(reply, 422, "idempotency_conflict")
    assert await stock_left(client, activity["id"]) == 4


async def test_blocked_user(client: AsyncTestClient[Any], raw_redis: Redis, services: Services) -> None:
    activity = await create_activity(client, stock=5, per_user_limit=3)
    keyed = {**bearer("u1"), "Idempotency-Key": "before-the-block"}
    first = await client.post(claim_url(activity["id"]), headers=keyed)
    assert first.status_code == 201
    await raw_redis.sadd(BLOCKLIST.users, "u1")
    await raw_redis.incr(BLOCKLIST.version)
    await wait_blocked(services, "u1", "dev-u1")
    assert_refusal(await client.post(claim_url(activity["id"]), headers=bearer("u1")), 403, "blocked")
    # idempotent replay comes before the domain checks: the first success is answered again
    again = await client.post(claim_url(activity["id"]), headers=keyed)
    assert again.status_code == 201
    assert again.content == first.content
    # another user is unaffected
    assert (await client.post(claim_url(activity["id"]), headers=bearer("u2"))).status_code == 201
    assert await stock_left(client, activity["id"]) == 3


async def test_blocked_device(client: AsyncTestClient[Any], raw_redis: Redis, services: Services) -> None:
    activity = await create_activity(client, stock=5)
    await raw_redis.sadd(BLOCKLIST.devices, "phone-9")
    await raw_redis.incr(BLOCKLIST.version)
    await wait_blocked(services, "nobody", "phone-9")
    reply = await client.post(claim_url(activity["id"]), headers=bearer("u7", "phone-9"))
    assert_refusal(reply, 403, "blocked")


async def test_blocked_comes_before_sold_out(
    client: AsyncTestClient[Any], raw_redis: Redis, services: Services
) -> None:
    activity = await create_activity(client, stock=0)
    await raw_redis.sadd(BLOCKLIST.users, "u1")
    await raw_redis.incr(BLOCKLIST.version)
    await wait_blocked(services, "u1", "dev-u1")
    assert_refusal(await client.post(claim_url(activity["id"]), headers=bearer("u1")), 403, "blocked")


@pytest.mark.parametrize("activity_id", ["0000000000000000000000000000", "nope", "x}y", "a" * 65, "a.b"])
async def test_not_found(client: AsyncTestClient[Any], activity_id: str) -> None:
    await create_activity(client)  # something exists, just not this
    reply = await client.post(claim_url(activity_id), headers=bearer("u1"))
    assert_refusal(reply, 404, "not_found")


async def test_ended_after_the_window(client: AsyncTestClient[Any]) -> None:
    now = int(time.time())
    activity = await create_activity(client, starts_at=now - 3600, ends_at=now - 1)
    assert_refusal(await client.post(claim_url(activity["id"]), headers=bearer("u1")), 409, "ended")


async def test_ended_at_ends_at_exactly_is_exclusive(client: AsyncTestClient[Any]) -> None:
    now = int(time.time())
    activity = await create_activity(client, starts_at=now - 3600, ends_at=now)
    assert_refusal(await client.post(claim_url(activity["id"]), headers=bearer("u1")), 409, "ended")


@pytest.mark.parametrize(("status", "code"), [("paused", "paused"), ("ended", "ended")])
async def test_status_in_the_hot_config(
    client: AsyncTestClient[Any], raw_redis: Redis, status: str, code: str
) -> None:
    activity = await create_activity(client, stock=5)
    await raw_redis.hset(KeySpace.activity(activity["id"]).config, "status", status)
    assert_refusal(await client.post(claim_url(activity["id"]), headers=bearer("u1")), 409, code)
    assert await stock_left(client, activity["id"]) == 5
    assert (await admin_activity(client, activity["id"]))["status"] == status


async def test_not_started(client: AsyncTestClient[Any]) -> None:
    now = int(time.time())
    activity = await create_activity(client, starts_at=now + 600, ends_at=now + 3600)
    assert_refusal(await client.post(claim_url(activity["id"]), headers=bearer("u1")), 409, "not_started")


async def test_sold_out(client: AsyncTestClient[Any]) -> None:
    empty = await create_activity(client, stock=0)
    assert_refusal(await client.post(claim_url(empty["id"]), headers=bearer("u1")), 409, "sold_out")
    one = await create_activity(client, stock=1)
    assert (await client.post(claim_url(one["id"]), headers=bearer("u1"))).status_code == 201
    assert_refusal(await client.post(claim_url(one["id"]), headers=bearer("u2")), 409, "sold_out")
    assert await stock_left(client, one["id"]) == 0


def _now() -> int:
    return int(time.time())


# (eligibility, (user, facts) refused, (user, facts) accepted)
ELIGIBILITY_CASES: list[
    tuple[dict[str, Any], list[tuple[str, dict[str, Any]]], tuple[str, dict[str, Any]]]
] = [
    (
        {"new_within_days": 7},
        [("old", {"reg": _now() - 30 * DAY}), ("nofact", {})],
        ("new", {"reg": _now() - DAY}),
    ),
    ({"first_order": True}, [("buyer", {"orders": 2}), ("nofact", {})], ("fresh", {"orders": 0})),
    ({"min_orders": 3}, [("few", {"orders": 1}), ("nofact", {})], ("many", {"orders": 3})),
    (
        {"tags": ["vip", "gold"]},
        [("plain", {"tags": ["student"]}), ("empty", {"tags": []}), ("nofact", {})],
        ("gold", {"tags": ["student", "gold"]}),
    ),
    ({"users": ["alice", "carol"]}, [("bob", {})], ("carol", {})),
    (
        {"first_order": True, "tags": ["vip"]},
        [("half", {"orders": 0, "tags": ["x"]}), ("other-half", {"orders": 1, "tags": ["vip"]})],
        ("both", {"orders": 0, "tags": ["vip"]}),
    ),
]


@pytest.mark.parametrize(
    ("eligibility", "refused", "accepted"),
    ELIGIBILITY_CASES,
    ids=[",".join(case[0]) for case in ELIGIBILITY_CASES],
)
async def test_not_eligible(
    client: AsyncTestClient[Any],
    eligibility: dict[str, Any],
    refused: list[tuple[str, dict[str, Any]]],
    accepted: tuple[str, dict[str, Any]],
) -> None:
    activity = await create_activity(client, stock=5, eligibility=eligibility)
    for user, facts in refused:
        reply = await client.post(claim_url(activity["id"]), headers=bearer(user, **facts))
        assert_refusal(reply, 403, "not_eligible")
    user, facts = accepted
    assert_claim_answer(
        await client.post(claim_url(activity["id"]), headers=bearer(user, **facts)),
        [activity["pack"][0]["template_id"]],
    )
    assert await stock_left(client, activity["id"]) == 4


async def test_limit_reached_per_user(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=10, per_user_limit=2)
    for device in ("d1", "d2"):
        assert (await client.post(claim_url(activity["id"]), headers=bearer("u1", device))).status_code == 201
    assert_refusal(
        await client.post(claim_url(activity["id"]), headers=bearer("u1", "d3")), 409, "limit_reached"
    )
    assert await stock_left(client, activity["id"]) == 8


async def test_limit_reached_per_device(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=10, per_user_limit=5, per_device_limit=1)
    assert (await client.post(claim_url(activity["id"]), headers=bearer("u1", "phone"))).status_code == 201
    assert_refusal(
        await client.post(claim_url(activity["id"]), headers=bearer("u2", "phone")), 409, "limit_reached"
    )
    assert (await client.post(claim_url(activity["id"]), headers=bearer("u2", "tablet"))).status_code == 201
    assert await stock_left(client, activity["id"]) == 8


async def test_overloaded_while_the_fence_is_closed(
    client: AsyncTestClient[Any], services: Services, db: asyncpg.Pool
) -> None:
    activity = await create_activity(client, stock=5)
    # a ledger mark above Redis's seq: the watcher, re-checking a closed fence, keeps it closed
    await db.execute("INSERT INTO partition_marks VALUES ('{w:0}', 999)")
    services.fence.close("test")
    for _ in range(3):
        reply = await client.post(claim_url(activity["id"]), headers=bearer("u1"))
        body = assert_refusal(reply, 503, "overloaded")
        assert reply.headers["retry-after"] == str(FENCED_RETRY_AFTER)
        assert set(body) == {"error", "message"}
    assert not services.fence.is_open
    assert await stock_left(client, activity["id"]) == 5


# --- request shape


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"channel": "' + b"c" * 33 + b'"}', "channel"),
        (b'{"channel": ""}', "channel"),
        (b'{"channel": 5}', "channel"),
        (b'{"channel": "x", "user_id": "someone-else"}', None),
        (b'{"extra": 1}', None),
        (b"[]", None),
        (b"null", None),
        (b'{"channel": ', None),
    ],
)
async def test_bad_body_is_invalid_request(
    client: AsyncTestClient[Any], raw: bytes, field: str | None
) -> None:
    activity = await create_activity(client, stock=5)
    reply = await client.post(
        claim_url(activity["id"]), content=raw, headers={**bearer("u1"), "Content-Type": "application/json"}
    )
    assert_refusal(reply, 400, "invalid_request", field)
    assert await stock_left(client, activity["id"]) == 5


async def test_channel_of_32_chars_is_accepted(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=5)
    reply = await client.post(claim_url(activity["id"]), json={"channel": "c" * 32}, headers=bearer("u1"))
    assert reply.status_code == 201, reply.text


async def test_text_plain_is_415(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=5)
    reply = await client.post(
        claim_url(activity["id"]),
        content=b'{"channel": "x"}',
        headers={**bearer("u1"), "Content-Type": "text/plain"},
    )
    assert_refusal(reply, 415, "invalid_request")
    assert await stock_left(client, activity["id"]) == 5


async def test_body_over_16_kib_is_413(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=5)
    raw = b'{"channel": "' + b"x" * (16 * 1024) + b'"}'
    reply = await client.post(
        claim_url(activity["id"]), content=raw, headers={**bearer("u1"), "Content-Type": "application/json"}
    )
    assert_refusal(reply, 413, "invalid_request")
    assert await stock_left(client, activity["id"]) == 5


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_wrong_method_is_405(client: AsyncTestClient[Any], method: str) -> None:
    activity = await create_activity(client, stock=5)
    reply = await client.request(method, claim_url(activity["id"]), headers=bearer("u1"))
    assert_refusal(reply, 405, "invalid_request")


@pytest.mark.parametrize(
    "key",
    ["k" * 65, "bad\x01key", "tab\tkey", "del\x7f", ""],
    ids=["65-chars", "control", "tab", "del", "empty"],
)
async def test_bad_idempotency_key_is_400(client: AsyncTestClient[Any], key: str) -> None:
    activity = await create_activity(client, stock=5)
    reply = await client.post(claim_url(activity["id"]), headers={**bearer("u1"), "Idempotency-Key": key})
    assert_refusal(reply, 400, "invalid_request", "Idempotency-Key")
    assert await stock_left(client, activity["id"]) == 5


async def test_idempotency_key_of_64_printable_chars_is_accepted(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=5)
    key = "".join(chr(c) for c in range(0x20, 0x7F))[:64]
    reply = await client.post(claim_url(activity["id"]), headers={**bearer("u1"), "Idempotency-Key": key})
    assert reply.status_code == 201, reply.text


# --- check order: route, credentials, request shape, replay, domain


async def test_credentials_come_before_shape_and_domain(client: AsyncTestClient[Any]) -> None:
    reply = await client.post(
        claim_url("unknown"), content=b"{bad", headers={"Content-Type": "application/json"}
    )
    assert_refusal(reply, 401, "unauthorized")


async def test_shape_comes_before_domain(client: AsyncTestClient[Any]) -> None:
    sold_out = await create_activity(client, stock=0)
    for activity_id in ("unknown", sold_out["id"]):
        reply = await client.post(
            claim_url(activity_id),
            content=b"{bad",
            headers={**bearer("u1"), "Content-Type": "application/json"},
        )
        assert_refusal(reply, 400, "invalid_request")
        reply = await client.post(
            claim_url(activity_id), headers={**bearer("u1"), "Idempotency-Key": "k" * 65}
        )
        assert_refusal(reply, 400, "invalid_request", "Idempotency-Key")


async def test_unknown_query_parameter_is_400(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=5)
    reply = await client.post(
        claim_url(activity["id"]), params={"user_id": "someone-else"}, headers=bearer("u1")
    )
    assert_refusal(reply, 400, "invalid_request", "user_id")
    assert await stock_left(client, activity["id"]) == 5


# --- a deliver that fails after the pack was taken


async def test_a_failed_deliver_leaves_the_claim_standing_answered_and_delivered_by_the_worker(
    client: AsyncTestClient[Any], raw_redis: Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    activity = await create_activity(client, stock=2)
    user = "deliver-fails"
    wallet = KeySpace(settings.redis.wallet_buckets, settings.redis.code_buckets).wallet(user)
    await raw_redis.set(wallet.coupons, "not a hash")  # every deliver into this bucket now fails (WRONGTYPE)

    reply = await client.post(claim_url(activity["id"]), headers=bearer(user))

    body = assert_claim_answer(reply, [activity["pack"][0]["template_id"]])  # the claim is answered
    assert await stock_left(client, activity["id"]) == 1  # and stands
    assert "deliver" in caplog.text and activity["id"] in caplog.text  # logged
    assert await raw_redis.exists(wallet.user_index(user)) == 0  # not delivered yet
    await raw_redis.delete(wallet.coupons)  # the bucket is sound again
    await persist(settings)  # the worker persists the claim and delivers it: same ids
    wallet_reply = await client.get("/v1/coupons", headers=bearer(user))
    assert [item["coupon_id"] for item in wallet_reply.json()["items"]] == [body["coupons"][0]["coupon_id"]]
