"""The claim route's acceptance list of bad inputs: each gets its 4xx and the refusal body, never a 500, and
leaves every key in Redis exactly as it was (type, value, stream length, TTL)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from tests.conftest import JWT_SECRET
from tests.helpers import bearer, create_activity, token
from tests.http.support import assert_claim_answer, assert_refusal, assert_same_keyspace, claim_url, keyspace


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "eve", "did": "dev-eve", "iat": now, "exp": now + 3600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(**overrides: Any) -> dict[str, str]:
    return {"Authorization": "Bearer " + jwt.encode(_claims(**overrides), JWT_SECRET, algorithm="HS256")}


def _alg_none() -> dict[str, str]:
    return {"Authorization": f"Bearer {_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}."}


def _bad_signature() -> dict[str, str]:
    return {
        "Authorization": "Bearer "
        + jwt.encode(_claims(), "another-secret-another-secret-0123456789", algorithm="HS256")
    }


def _tampered() -> dict[str, str]:
    """A valid token whose payload was swapped for another user's: the signature no longer matches."""
    head, _, sig = token("eve").split(".")
    return {"Authorization": f"Bearer {head}.{_b64(_claims(sub='admin'))}.{sig}"}


def _expired() -> dict[str, str]:
    # beyond the 30 s leeway
    return {"Authorization": "Bearer " + token("eve", now=int(time.time()) - 7200, ttl_seconds=3600)}


JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Case:
    name: str
    headers: Callable[[], dict[str, str]]
    status: int
    error: str
    body: bytes = b""
    activity: str | None = None  # None: the test's real activity
    field: str | None = None


CASES = [
    Case("no-token", dict, 401, "unauthorized"),
    Case("empty-bearer", lambda: {"Authorization": "Bearer "}, 401, "unauthorized"),
    Case("not-bearer", lambda: {"Authorization": "Basic ZXZlOmV2ZQ=="}, 401, "unauthorized"),
    Case("garbage-token", lambda: {"Authorization": "Bearer not.a.jwt"}, 401, "unauthorized"),
    Case("bad-signature", _bad_signature, 401, "unauthorized"),
    Case("tampered-payload", _tampered, 401, "unauthorized"),
    Case("alg-none", _alg_none, 401, "unauthorized"),
    Case("expired", _expired, 401, "unauthorized"),
    Case("no-exp", lambda: _signed(exp=None), 401, "unauthorized"),
    Case("nbf-in-the-future", lambda: _signed(nbf=int(time.time()) + 600), 401, "unauthorized"),
    Case("missing-sub", lambda: _signed(sub=None), 401, "unauthorized"),
    Case("missing-did", lambda: _signed(did=None), 401, "unauthorized"),
    Case("sub-with-space", lambda: _signed(sub="a b"), 401, "unauthorized"),
    Case("sub-non-ascii", lambda: _signed(sub="é"), 401, "unauthorized"),
    Case("sub-65-chars", lambda: _signed(sub="a" * 65), 401, "unauthorized"),
    Case("sub-empty", lambda: _signed(sub=""), 401, "unauthorized"),
    Case("sub-with-braces", lambda: _signed(sub="{a:x}"), 401, "unauthorized"),
    Case("sub-not-a-string", lambda: _signed(sub=123), 401, "unauthorized"),
    Case("did-with-slash", lambda: _signed(did="a/b"), 401, "unauthorized"),
    Case("tags-not-a-list", lambda: _signed(tags="vip"), 401, "unauthorized"),
    Case("orders-not-an-int", lambda: _signed(orders="3"), 401, "unauthorized"),
    Case("malformed-json", lambda: {**bearer("eve"), **JSON}, 400, "invalid_request", b'{"channel": '),
    Case("not-an-object", lambda: {**bearer("eve"), **JSON}, 400, "invalid_request", b'"x"'),
    Case("unknown-field", lambda: {**bearer("eve"), **JSON}, 400, "invalid_request", b'{"user_id": "u1"}'),
    Case(
        "channel-too-long",
        lambda: {**bearer("eve"), **JSON},
        400,
        "invalid_request",
        b'{"channel": "' + b"c" * 33 + b'"}',
        field="channel",
    ),
    Case(
        "not-json", lambda: {**bearer("eve"), "Content-Type": "text/plain"}, 415, "invalid_request", b"hello"
    ),
    Case(
        "too-large",
        lambda: {**bearer("eve"), **JSON},
        413,
        "invalid_request",
        b'{"channel": "' + b"x" * 17_000 + b'"}',
    ),
    Case(
        "bad-idempotency-key",
        lambda: {**bearer("eve"), "Idempotency-Key": "k" * 65},
        400,
        "invalid_request",
        field="Idempotency-Key",
    ),
    Case(
        "unknown-activity", lambda: bearer("eve"), 404, "not_found", activity="0123456789abcdef0123456789ab"
    ),
    Case("malformed-activity-id", lambda: bearer("eve"), 404, "not_found", activity="x}y"),
    Case("activity-id-with-hash-tag", lambda: bearer("eve"), 404, "not_found", activity="{a:x}"),
    # domain refusals write nothing either: the setup's user already holds the one pack allowed
    Case("limit-reached", lambda: bearer("first"), 409, "limit_reached"),
]


@pytest.fixture
async def prepared(client: AsyncTestClient[Any], raw_redis: Redis) -> str:
    """An activity with one successful keyed claim, so there are counts, coupons and streams to compare."""
    activity = await create_activity(client, stock=5, per_user_limit=1)
    reply = await client.post(
        claim_url(activity["id"]),
        json={"channel": "setup"},
        headers={**bearer("first"), "Idempotency-Key": "setup-key"},
    )
    assert_claim_answer(reply, [activity["pack"][0]["template_id"]])
    activity_id: str = activity["id"]
    return activity_id


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_bad_input_is_refused_and_writes_nothing(
    client: AsyncTestClient[Any], raw_redis: Redis, prepared: str, case: Case
) -> None:
    before = await keyspace(raw_redis)
    assert any(kind == b"stream" for kind, _, _ in before[0].values())
    activity_id = case.activity or prepared
    reply = await client.post(claim_url(activity_id), content=case.body, headers=case.headers())
    assert reply.status_code < 500
    assert_refusal(reply, case.status, case.error, case.field)
    assert_same_keyspace(before, await keyspace(raw_redis))


async def test_the_snapshot_does_see_a_claim(
    client: AsyncTestClient[Any], raw_redis: Redis, prepared: str
) -> None:
    """The comparison is not vacuous: a successful claim changes the snapshot."""
    before = await keyspace(raw_redis)
    assert (await client.post(claim_url(prepared), headers=bearer("second"))).status_code == 201
    with pytest.raises(AssertionError):
        assert_same_keyspace(before, await keyspace(raw_redis))


async def test_a_token_expired_seconds_ago_is_refused(
    client: AsyncTestClient[Any], raw_redis: Redis, prepared: str
) -> None:
    before = await keyspace(raw_redis)
    expired = token("late", now=int(time.time()) - 3610, ttl_seconds=3600)  # exp 10 s ago
    reply = await client.post(claim_url(prepared), headers={"Authorization": f"Bearer {expired}"})
    assert_refusal(reply, 401, "unauthorized")
    assert_same_keyspace(before, await keyspace(raw_redis))


async def test_nbf_has_a_30_second_leeway(client: AsyncTestClient[Any], prepared: str) -> None:
    soon = _signed(sub="early", did="dev-early", nbf=int(time.time()) + 10)
    assert (await client.post(claim_url(prepared), headers=soon)).status_code == 201
