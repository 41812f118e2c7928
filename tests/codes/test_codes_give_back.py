"""A code redeem's attempt is counted against the user's and the device's failed-attempt limits before the code is
judged, and stays counted only when the answer is invalid_code (product.md: 10 failed attempts in a rolling hour,
then rate_limited). Every other end gives it back, infrastructure failures included: here each failure is real (a
key of the wrong type making a script fail in Redis, the app's fence closing while the redeem runs, a request
cancelled mid-way), and ten of them never make the eleventh, real redeem rate_limited. Giving back is best effort:
when it fails too, that is logged and the attempt expires with its window."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from gateway.claim.service import ClaimService
from gateway.codes.format import canonical, code_hash
from gateway.codes.service import CodeService
from gateway.keys import KeySpace
from gateway.scripts.runner import ScriptRunner
from gateway.services import Services
from gateway.tokens import UserIdentity
from tests.codes.test_codes_http import (
    FAILED_LIMIT,
    codes_activity,
    guess,
    make_codes,
    redeem,
)
from tests.http.support import assert_claim_answer, assert_refusal

USER, DEVICE = "blip-user", "blip-device"


async def attempts(
    raw_redis: Redis, services: Services, user: str = USER, device: str = DEVICE
) -> tuple[int, int]:
    """The failed attempts counted now against the user and against the device."""
    user_fails = services.keyspace.wallet(user).failed_codes_of_user(user)
    device_fails = services.keyspace.wallet(device).failed_codes_of_device(device)
    return int(await raw_redis.zcard(user_fails)), int(await raw_redis.zcard(device_fails))


def assert_overloaded(reply: Any) -> None:
    assert_refusal(reply, 503, "overloaded")
    assert int(reply.headers["Retry-After"]) >= 1


async def an_activity_with_codes(client: AsyncTestClient[Any], count: int = 2) -> tuple[list[str], list[str]]:
    """(the codes, the pack's template ids)."""
    activity, templates = await codes_activity(client, stock=10)
    _, codes = await make_codes(client, activity["id"], count)
    return codes, templates


@contextmanager
def fence_closed_during_redeem_code(
    services: Services, monkeypatch: pytest.MonkeyPatch, *, reopen: bool
) -> Iterator[None]:
    """The app's fence closes just as ``redeem_code`` is called, after the gates counted the attempt (a Redis
    found restarted, say). ``reopen``: it opens again once that call was refused (a short closure), so the give
    back that follows can run; else it stays closed until the block ends."""
    runner: ScriptRunner = services.runner
    fence = services.fence
    real_run = runner.run
    verified = fence.verified

    async def run(name: str, keys: Any, args: Any) -> list[Any]:
        if name != "redeem_code":
            return await real_run(name, keys, args)
        fence.close("Redis restarted: checking it against the ledger")
        try:
            return await real_run(name, keys, args)
        finally:
            if reopen:
                fence.open(verified)

    monkeypatch.setattr(runner, "run", run)
    try:
        yield
    finally:
        monkeypatch.setattr(runner, "run", real_run)
        fence.open(verified)


async def test_redis_errors_in_redeem_code_give_the_attempt_back(
    client: AsyncTestClient[Any], services: Services, raw_redis: Redis
) -> None:
    codes, templates = await an_activity_with_codes(client)
    bucket = services.keyspace.code(code_hash(services.codes.hash_key, str(canonical(codes[0]))))
    aside = f"{bucket.codes}:aside"  # the same hash tag: the same slot
    await raw_redis.rename(bucket.codes, aside)
    await raw_redis.set(bucket.codes, "not a hash")  # redeem_code's HGET fails with WRONGTYPE
    try:
        for _ in range(FAILED_LIMIT):
            assert_overloaded(await redeem(client, codes[0], USER, DEVICE))
            assert await attempts(raw_redis, services) == (0, 0)
    finally:
        await raw_redis.delete(bucket.codes)
        await raw_redis.rename(aside, bucket.codes)

    assert_claim_answer(await redeem(client, codes[0], USER, DEVICE), templates)  # the eleventh
    assert await attempts(raw_redis, services) == (0, 0)
    for _ in range(FAILED_LIMIT):  # invalid_code answers still count, and only they do
        assert_refusal(await redeem(client, guess(), USER, DEVICE), 404, "invalid_code")
    assert await attempts(raw_redis, services) == (FAILED_LIMIT, FAILED_LIMIT)
    assert_refusal(await redeem(client, codes[1], USER, DEVICE), 429, "rate_limited")


async def test_a_failing_device_gate_gives_the_users_attempt_back(
    client: AsyncTestClient[Any], services: Services, raw_redis: Redis
) -> None:
    codes, templates = await an_activity_with_codes(client)
    device_fails = services.keyspace.wallet(DEVICE).failed_codes_of_device(DEVICE)
    # The device's code_gate fails in Redis, after the user's counted the attempt.
    await raw_redis.set(device_fails, "not a zset")
    try:
        for _ in range(FAILED_LIMIT):
            assert_overloaded(await redeem(client, codes[0], USER, DEVICE))
            assert await raw_redis.zcard(services.keyspace.wallet(USER).failed_codes_of_user(USER)) == 0
    finally:
        await raw_redis.delete(device_fails)

    assert_claim_answer(await redeem(client, codes[0], USER, DEVICE), templates)
    assert await attempts(raw_redis, services) == (0, 0)


async def test_a_fence_closing_after_the_gates_gives_the_attempt_back(
    client: AsyncTestClient[Any], services: Services, raw_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes, templates = await an_activity_with_codes(client)
    with fence_closed_during_redeem_code(services, monkeypatch, reopen=True):
        for _ in range(FAILED_LIMIT):
            assert_overloaded(await redeem(client, codes[0], USER, DEVICE))
            assert await attempts(raw_redis, services) == (0, 0)

    assert_claim_answer(await redeem(client, codes[0], USER, DEVICE), templates)
    assert await attempts(raw_redis, services) == (0, 0)


async def test_a_give_back_that_fails_is_logged_and_the_refusal_stands(
    client: AsyncTestClient[Any],
    services: Services,
    raw_redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fence stays closed: code_settle is refused too. The answer is still the fence's 503 (never a 500), the
    failure to give back is logged, and the attempt counts until its window ends."""
    codes, templates = await an_activity_with_codes(client)
    caplog.set_level(logging.WARNING, logger="gateway.codes.service")
    with fence_closed_during_redeem_code(services, monkeypatch, reopen=False):
        assert_overloaded(await redeem(client, codes[0], USER, DEVICE))

    given_back = [
        r for r in caplog.records if r.name == "gateway.codes.service" and "not given back" in r.getMessage()
    ]
    assert len(given_back) == 2, [r.getMessage() for r in caplog.records]  # the user's and the device's
    assert await attempts(raw_redis, services) == (1, 1)
    assert_claim_answer(await redeem(client, codes[0], USER, DEVICE), templates)  # the fence opened again
    assert await attempts(raw_redis, services) == (1, 1)


async def test_a_redeem_cancelled_after_the_gates_gives_the_attempt_back(
    client: AsyncTestClient[Any],
    services: Services,
    raw_redis: Redis,
    runner: ScriptRunner,
    keyspace: KeySpace,
    db: asyncpg.Pool,
) -> None:
    """A redeem cancelled while redeem_code is under way (a timeout, a client gone): the give back still runs.
    The app serves from a loop of its own, so the redeem runs here on a CodeService of the test's loop, on the
    same Valkey and Postgres, with the same key."""
    codes, templates = await an_activity_with_codes(client)
    hung = asyncio.Event()

    class HangingRunner(ScriptRunner):
        async def run(self, name: str, keys: Sequence[str], args: Sequence[str | int | bytes]) -> list[Any]:
            if name == "redeem_code":
                hung.set()
                await asyncio.Event().wait()  # never answers: cancelled here
            return await super().run(name, keys, args)

    hanging = HangingRunner(runner.client, runner.scripts, runner.fence)
    ttl = services.codes.idempotency_ttl
    redeeming = CodeService(
        hanging, keyspace, db, ClaimService(hanging, keyspace, ttl), services.codes.hash_key, ttl
    )
    who = UserIdentity(user_id=USER, device_id=DEVICE)
    for _ in range(FAILED_LIMIT):
        hung.clear()
        task = asyncio.create_task(
            redeeming.redeem(who, codes[0], now=int(time.time()), idempotency_key=None, blocked=False)
        )
        await asyncio.wait_for(hung.wait(), 5)
        assert await attempts(raw_redis, services) == (1, 1)  # counted while the code is judged
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):  # the give back outlives the cancelled request
            if await attempts(raw_redis, services) == (0, 0):
                break
            await asyncio.sleep(0.02)
        assert await attempts(raw_redis, services) == (0, 0)

    assert_claim_answer(await redeem(client, codes[0], USER, DEVICE), templates)
    assert await attempts(raw_redis, services) == (0, 0)


async def test_a_closed_fence_refuses_before_counting(
    client: AsyncTestClient[Any], services: Services, raw_redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Fenced before the redeem starts: 503, nothing counted, so nothing to give back and nothing logged."""
    codes, templates = await an_activity_with_codes(client)
    verified = services.fence.verified
    caplog.set_level(logging.WARNING, logger="gateway.codes.service")
    services.fence.close("Redis restarted: checking it against the ledger")
    try:
        for _ in range(FAILED_LIMIT + 1):
            assert_overloaded(await redeem(client, codes[0], USER, DEVICE))
    finally:
        services.fence.open(verified)
    assert await attempts(raw_redis, services) == (0, 0)
    assert not [r for r in caplog.records if r.name == "gateway.codes.service"]
    assert_claim_answer(await redeem(client, codes[0], USER, DEVICE), templates)
