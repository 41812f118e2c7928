"""A process whose clock is off from Redis's makes no state change (design.md, "Time"): its fence closes for the
clock, claims answer 503 ``overloaded`` with Retry-After and readiness names the clock, until it is back within
``CLAIMGATE_MAX_CLOCK_SKEW``."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from gateway import clock
from gateway.scripts import ledger_check
from gateway.scripts.runner import RedisClient
from gateway.services import Services
from tests.helpers import bearer, create_activity
from tests.http.support import assert_refusal, claim_url


async def test_a_clock_off_from_redis_pauses_state_changes_until_it_is_back(
    client: AsyncTestClient[Any], services: Services, redis_client: RedisClient, moved_clock: None
) -> None:
    """The check the gateway's watch makes every 10 s, made here on the test's own connection."""
    activity = await create_activity(client, stock=5)
    max_skew = services.settings.claim.max_clock_skew_seconds
    first = await ledger_check.check_clock(redis_client, services.fence, max_skew)
    assert first is not None and abs(first) < max_skew

    clock.move(-5.0)  # this process is 5 s behind Redis
    off = await ledger_check.check_clock(redis_client, services.fence, max_skew)
    assert off is not None and -5.5 < off < -4.5
    refused = await client.post(claim_url(activity["id"]), headers=bearer("alice"))
    body = assert_refusal(refused, 503, "overloaded")
    assert "clock" in body["message"] and refused.headers["retry-after"]
    ready = await client.get("/readyz")
    assert (ready.status_code, ready.json()) == (503, {"status": "not ready", "missing": ["fence"]})
    assert "clock" in services.fence.why_closed

    clock.reset()
    await ledger_check.check_clock(redis_client, services.fence, max_skew)
    assert services.fence.is_open
    assert (await client.post(claim_url(activity["id"]), headers=bearer("alice"))).status_code == 201


def test_the_clock_moves_for_every_reader() -> None:
    before = clock.now()
    clock.move(3600)
    try:
        assert 3599 < clock.now() - before < 3601
    finally:
        clock.reset()
