"""ScriptRunner against the real cluster-mode server: NOSCRIPT reload, the slot check, the fence, OOM."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.keys import KeySpace, slot_of
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.fence import FENCED_RETRY_AFTER, LEDGER_PAUSED, Fence
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import (
    MEMORY_RETRY_AFTER,
    SPARE_CONNECTIONS,
    CrossSlotCall,
    RedisClient,
    ScriptRunner,
    connect,
)
from gateway.settings import Settings
from tests.lua.conftest import MakeActivity
from tests.lua.support import NOW, Claimer, activity_config, command_calls, deliver, put_activity, snapshot

ACT = KeySpace.activity("act1")
ANSWER = (
    '{"claim_id":"c1","coupons":[{"coupon_id":"c1.1","template_id":"t1","valid_from":1,"valid_until":2}]}'
)


async def script_calls(plain: Redis) -> int:
    """EVAL + EVALSHA calls that reached the server: run, failed or rejected (OOM rejections count apart)."""
    return await command_calls(plain, "eval", "evalsha")


async def write_call(name: str, runner: ScriptRunner, keyspace: KeySpace) -> list[Any]:
    """One call of each write script, on a fresh partition."""
    if name == "put_activity":
        return await put_activity(runner, "act2", activity_config())
    if name == "deliver":
        return await deliver(runner, keyspace.wallet("u1"), "u1", "act1", ANSWER)
    return (await Claimer(runner, 90_000)(user="u1", key="k-1")).reply


# --- (a) NOSCRIPT -> reload -> retry ------------------------------------------------------------------------


async def test_claim_survives_script_flush(
    runner: ScriptRunner, claimer: Claimer, make_activity: MakeActivity, redis_client: RedisClient
) -> None:
    await make_activity()
    sha = runner.scripts["claim"].sha
    await redis_client.script_flush()
    assert await redis_client.script_exists(sha) == [False]
    assert set(await runner.missing_scripts()) == set(load_scripts())

    done = await claimer(user="u1", key="k-1")

    assert done.outcome == "ok"
    assert await redis_client.script_exists(sha) == [True]
    assert set(await runner.missing_scripts()) == set(load_scripts()) - {
        "claim"
    }  # reloaded only what was needed
    assert await redis_client.get(ACT.seq) == "2"
    assert (await redis_client.hgetall(ACT.config))["taken"] == "1"  # ran once, not twice
    assert await redis_client.xlen(ACT.events) == 2


# --- (b) KEYS across two slots ------------------------------------------------------------------------------


async def test_cross_slot_call_is_never_sent(
    runner: ScriptRunner, make_activity: MakeActivity, redis_client: RedisClient, plain: Redis
) -> None:
    await make_activity()
    other = KeySpace.activity("zzz")
    assert slot_of(other.events) != slot_of(ACT.config)
    keys = [
        ACT.config,
        ACT.user_counts,
        ACT.device_counts,
        ACT.allow_list,
        ACT.no_idempotency,
        ACT.retired,
        ACT.seq,
        other.events,
    ]
    args = [NOW, "act1", "u1", "d1", "", "0", "", "a" * 32, 90_000, "c1", "e1", "", "", "", "claim", ""]
    before, calls = await snapshot(redis_client), await script_calls(plain)

    with pytest.raises(CrossSlotCall, match="different slots"):
        await runner.run("claim", keys, args)
    with pytest.raises(CrossSlotCall, match="takes 8 keys"):
        await runner.run("claim", keys[:7], args)

    assert await script_calls(plain) == calls
    assert await snapshot(redis_client) == before
    assert await redis_client.get(ACT.seq) == "1"
    assert await redis_client.xlen(ACT.events) == 1


# --- (c) the server really is in cluster mode ------------------------------------------------------------


CROSS_SLOT = "{}\nredis.call('SET', ARGV[1], 'x')\nredis.call('SET', KEYS[1], 'x')\nreturn 1"


async def test_server_refuses_a_script_touching_another_slot(redis_client: RedisClient, plain: Redis) -> None:
    here, there = "{t:a}:k", "{t:b}:k"
    assert slot_of(here) != slot_of(there)
    assert (await plain.info("cluster"))["cluster_enabled"] == 1

    with pytest.raises(ResponseError, match="same slot"):
        await redis_client.eval(CROSS_SLOT.format("#!lua"), 1, here, there)

    assert await redis_client.exists(here) == 0
    assert await redis_client.exists(there) == 0
    # The same script with the flag our scripts may never carry runs: it was the slot rule that refused.
    allowed = CROSS_SLOT.format("#!lua flags=allow-cross-slot-keys")
    assert await redis_client.eval(allowed, 1, here, there) == 1


# --- (d) a closed fence ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["claim", "deliver", "put_activity"])
async def test_closed_fence_refuses_writes(
    runner: ScriptRunner,
    make_activity: MakeActivity,
    keyspace: KeySpace,
    redis_client: RedisClient,
    plain: Redis,
    name: str,
) -> None:
    await make_activity()
    runner.fence.close("test: run id changed")
    before, calls = await snapshot(redis_client), await script_calls(plain)

    with pytest.raises(DomainError) as refused:
        await write_call(name, runner, keyspace)

    assert refused.value.outcome is Outcome.OVERLOADED
    assert refused.value.retry_after == FENCED_RETRY_AFTER
    assert refused.value.message == LEDGER_PAUSED  # the reason is the operations listener's, not the caller's
    assert "run id changed" not in refused.value.message
    assert await script_calls(plain) == calls
    assert await snapshot(redis_client) == before
    runner.fence.open("again")
    assert (await write_call(name, runner, keyspace))[0] == "ok"


# --- (e) memory full ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["claim", "deliver", "put_activity"])
async def test_out_of_memory_is_overloaded(
    runner: ScriptRunner,
    make_activity: MakeActivity,
    keyspace: KeySpace,
    redis_client: RedisClient,
    plain: Redis,
    name: str,
) -> None:
    await make_activity()
    original = (await plain.config_get("maxmemory"))["maxmemory"]
    assert int(original) > 0
    before = await snapshot(redis_client)
    try:
        await plain.config_set("maxmemory", 1)  # far below used_memory: every write command is refused
        calls = await script_calls(plain)
        with pytest.raises(DomainError) as refused:
            await write_call(name, runner, keyspace)
        assert await script_calls(plain) > calls  # the server saw it and said OOM
    finally:
        await plain.config_set("maxmemory", original)
    assert (await plain.config_get("maxmemory"))["maxmemory"] == original

    assert refused.value.outcome is Outcome.OVERLOADED
    assert refused.value.retry_after == MEMORY_RETRY_AFTER
    assert "out of memory" in refused.value.message
    assert await snapshot(redis_client) == before
    assert (await write_call(name, runner, keyspace))[0] == "ok"  # memory back: the same call goes through


async def test_a_plain_read_waits_for_a_slot_instead_of_failing_on_a_full_pool(settings: Settings) -> None:
    """More reads at once than the pool has connections: straight on the client some fail (the pool raises
    rather than waits); through the runner every one waits its turn and answers."""
    client = await connect(settings.redis.url, max_connections=2)  # 2 + SPARE_CONNECTIONS in the pool
    try:
        runner = ScriptRunner(client, load_scripts(), Fence(open_=True), max_in_flight=2)
        wallet = KeySpace(8, 4).wallet("pool-user")
        await client.hset(wallet.coupons, "c1", '{"template":"t"}')
        crowd = 4 * (2 + SPARE_CONNECTIONS)
        direct = await asyncio.gather(
            *(client.hget(wallet.coupons, "c1") for _ in range(crowd)), return_exceptions=True
        )
        assert any(isinstance(outcome, RedisConnectionError) for outcome in direct)  # the failure this avoids
        through_runner = await asyncio.gather(*(runner.hget(wallet.coupons, "c1") for _ in range(crowd)))
        assert through_runner == ['{"template":"t"}'] * crowd
        assert await runner.hget(wallet.coupons, "missing") is None
    finally:
        await client.aclose()
