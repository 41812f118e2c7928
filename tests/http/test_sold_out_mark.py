"""The in-process sold-out mark: an unkeyed claim on an activity this process saw sell out is refused without
Redis, and the mark never hides an answer the script would give otherwise: a keyed retry's first answer, a
blocked caller, a restock or a status change (at once through this process, within the recheck from another)."""

from __future__ import annotations

import time
from typing import Any

from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from gateway.claim.sold_out import RECHECK_SECONDS
from gateway.ids import new_id
from gateway.keys import KeySpace
from gateway.scripts.runner import RedisClient, ScriptRunner
from gateway.services import Services
from tests.helpers import ADMIN, bearer, create_activity
from tests.http.support import assert_refusal, claim_url, wait_blocked, wait_until


async def evalsha_calls(raw_redis: Redis) -> int:
    stats = await raw_redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def sold_out_activity(client: AsyncTestClient[Any], services: Services) -> str:
    activity = await create_activity(client, stock=1)
    assert (await client.post(claim_url(activity["id"]), headers=bearer("first"))).status_code == 201
    assert_refusal(await client.post(claim_url(activity["id"]), headers=bearer("second")), 409, "sold_out")
    assert services.sold_out.holds(activity["id"], time.time())
    return str(activity["id"])


async def test_a_marked_activity_refuses_unkeyed_claims_without_a_script(
    client: AsyncTestClient[Any], services: Services, raw_redis: Redis
) -> None:
    activity_id = await sold_out_activity(client, services)
    before = await evalsha_calls(raw_redis)
    for user in ("u1", "u2", "u3"):
        assert_refusal(await client.post(claim_url(activity_id), headers=bearer(user)), 409, "sold_out")
    assert await evalsha_calls(raw_redis) == before


async def test_an_unmarked_sold_out_activity_still_costs_a_script(
    client: AsyncTestClient[Any], services: Services, raw_redis: Redis
) -> None:
    """The check above can fail: without the mark, the same refusal runs the claim script."""
    activity_id = await sold_out_activity(client, services)
    services.sold_out.clear(activity_id)
    before = await evalsha_calls(raw_redis)
    assert_refusal(await client.post(claim_url(activity_id), headers=bearer("u1")), 409, "sold_out")
    assert await evalsha_calls(raw_redis) > before


async def test_a_keyed_retry_gets_its_first_answer(client: AsyncTestClient[Any], services: Services) -> None:
    activity = await create_activity(client, stock=1)
    keyed = {**bearer("buyer"), "Idempotency-Key": "k-1"}
    first = await client.post(claim_url(activity["id"]), headers=keyed)
    assert first.status_code == 201
    assert_refusal(await client.post(claim_url(activity["id"]), headers=bearer("other")), 409, "sold_out")
    assert services.sold_out.holds(activity["id"], time.time())
    again = await client.post(claim_url(activity["id"]), headers=keyed)
    assert (again.status_code, again.content) == (201, first.content)
    assert_refusal(
        await client.post(claim_url(activity["id"]), headers={**bearer("other"), "Idempotency-Key": "k-2"}),
        409,
        "sold_out",
    )


async def test_a_blocked_caller_is_told_blocked_not_sold_out(
    client: AsyncTestClient[Any], services: Services
) -> None:
    activity_id = await sold_out_activity(client, services)
    added = await client.post("/v1/admin/blocklist", headers=ADMIN, json={"users": ["bad"]})
    assert added.status_code in (200, 201), added.text
    await wait_blocked(services, "bad", "any-device")
    assert_refusal(await client.post(claim_url(activity_id), headers=bearer("bad")), 403, "blocked")


async def test_a_restock_through_this_process_clears_the_mark_at_once(
    client: AsyncTestClient[Any], services: Services
) -> None:
    activity_id = await sold_out_activity(client, services)
    restocked = await client.post(
        f"/v1/admin/activities/{activity_id}/stock", headers=ADMIN, json={"delta": 1}
    )
    assert restocked.status_code == 200, restocked.text
    assert (await client.post(claim_url(activity_id), headers=bearer("late"))).status_code == 201


async def test_a_pause_through_this_process_answers_paused(
    client: AsyncTestClient[Any], services: Services
) -> None:
    activity_id = await sold_out_activity(client, services)
    paused = await client.post(f"/v1/admin/activities/{activity_id}/pause", headers=ADMIN)
    assert paused.status_code == 200, paused.text
    assert_refusal(await client.post(claim_url(activity_id), headers=bearer("u9")), 409, "paused")


async def test_a_restock_elsewhere_reaches_this_process_within_the_recheck(
    client: AsyncTestClient[Any], services: Services, runner: ScriptRunner
) -> None:
    """Another gateway process's restock: the ``restock`` script run directly, not through this process."""
    activity_id = await sold_out_activity(client, services)
    keys = KeySpace.activity(activity_id)
    reply = await runner.run(
        "restock",
        [keys.config, keys.retired, keys.seq, keys.events],
        [int(time.time()), new_id(), "elsewhere", activity_id, 1, 0, ""],
    )
    assert reply[0] == "ok"
    assert_refusal(await client.post(claim_url(activity_id), headers=bearer("early")), 409, "sold_out")
    await wait_until(
        lambda: not services.sold_out.holds(activity_id, time.time()), within=RECHECK_SECONDS * 6
    )
    assert (await client.post(claim_url(activity_id), headers=bearer("late"))).status_code == 201


async def test_the_mark_learns_the_end_and_lapses_there(
    client: AsyncTestClient[Any], services: Services, redis_client: RedisClient
) -> None:
    activity_id = await sold_out_activity(client, services)
    await services.sold_out.recheck(redis_client, services.keyspace)
    ends_at = services.sold_out._ends_at[activity_id]
    assert ends_at == float(
        (await client.get(f"/v1/admin/activities/{activity_id}", headers=ADMIN)).json()["ends_at"]
    )
    assert services.sold_out.holds(activity_id, ends_at - 1)
    assert not services.sold_out.holds(activity_id, ends_at)


async def test_an_activity_gone_from_redis_loses_its_mark(
    client: AsyncTestClient[Any], services: Services, raw_redis: Redis, redis_client: RedisClient
) -> None:
    activity_id = await sold_out_activity(client, services)
    await raw_redis.delete(KeySpace.activity(activity_id).config)
    await services.sold_out.recheck(redis_client, services.keyspace)
    assert not services.sold_out.holds(activity_id, time.time())
