"""The auto-pipelined script transport against the session's Valkey (cluster mode): replies reach their own
callers, errors map to the exceptions the runner handles, a broken or silent connection fails what it carried and
the next call reconnects, and a server the fence does not trust carries nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.keys import KeySpace
from gateway.scripts.fence import Fence
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import RedisClient, ScriptRunner, UncheckedRedis
from gateway.scripts.transport import FLUSH_AT, PipelinedCommands, PipelinedScripts, encode_command
from gateway.settings import Settings

ECHO = "return {ARGV[1], KEYS[1]}"
FAIL = "return redis.error_reply('NOPE ' .. ARGV[1])"


async def run_id(client: RedisClient) -> str:
    info = await client.info("server")
    return str(info["run_id"])


@pytest.fixture
async def transport(settings: Settings, redis_client: RedisClient) -> AsyncIterator[PipelinedScripts]:
    fence = Fence()
    fence.open([await run_id(redis_client)])
    cluster = redis_client if isinstance(redis_client, RedisCluster) else None
    scripts = PipelinedScripts(settings.redis.url, fence, cluster=cluster, timeout=0.5)
    yield scripts
    scripts.close()


async def test_many_calls_in_one_turn_each_get_their_own_reply(
    transport: PipelinedScripts, redis_client: RedisClient
) -> None:
    sha = await redis_client.script_load(ECHO)
    keys = [f"{{w:{n % 7}}}:k" for n in range(600)]
    replies = await asyncio.gather(*(transport.evalsha(sha, [key], [str(n)]) for n, key in enumerate(keys)))
    assert replies == [[str(n), key] for n, key in enumerate(keys)]
    assert len(transport.links) == 1  # one node owns every slot: one connection carried all 600


async def test_calls_are_written_in_groups_without_waiting_for_the_turn_to_end(
    transport: PipelinedScripts, redis_client: RedisClient
) -> None:
    sha = await redis_client.script_load(ECHO)
    await transport.evalsha(sha, ["{w:1}:k"], ["warm"])  # connected
    (link,) = transport.links.values()
    calls = [
        asyncio.ensure_future(transport.evalsha(sha, ["{w:1}:k"], [str(n)])) for n in range(FLUSH_AT + 3)
    ]
    await asyncio.sleep(
        0
    )  # each call has encoded its command and queued it on the link; the turn is not over
    assert len(link.outgoing) == 3  # the first FLUSH_AT are on the wire already
    assert await asyncio.gather(*calls) == [[str(n), "{w:1}:k"] for n in range(FLUSH_AT + 3)]
    assert link.outgoing == []


async def test_error_replies_map_and_leave_the_connection_usable(
    transport: PipelinedScripts, redis_client: RedisClient
) -> None:
    failing = await redis_client.script_load(FAIL)
    with pytest.raises(ResponseError, match="NOPE x"):
        await transport.evalsha(failing, ["{w:1}:k"], ["x"])
    with pytest.raises(NoScriptError):
        await transport.evalsha("0" * 40, ["{w:1}:k"], ["x"])
    echo = await redis_client.script_load(ECHO)
    assert await transport.evalsha(echo, ["{w:1}:k"], ["y"]) == ["y", "{w:1}:k"]


async def test_a_killed_connection_fails_its_calls_and_the_next_call_reconnects(
    transport: PipelinedScripts, redis_client: RedisClient, settings: Settings
) -> None:
    sha = await redis_client.script_load(ECHO)
    assert await transport.evalsha(sha, ["{w:1}:k"], ["a"]) == ["a", "{w:1}:k"]
    (link,) = transport.links.values()
    assert link.transport is not None
    host, port = link.transport.get_extra_info("sockname")[:2]
    plain: Redis = Redis.from_url(settings.redis.url)
    try:
        await plain.execute_command(  # type: ignore[no-untyped-call]
            "CLIENT", "KILL", "ADDR", f"{host}:{port}"
        )
    finally:
        await plain.aclose()
    for _ in range(50):
        if link.closed:
            break
        await asyncio.sleep(0.02)
    assert link.closed
    with pytest.raises(RedisConnectionError):
        link.call(b"PING")
    assert await transport.evalsha(sha, ["{w:1}:k"], ["b"]) == ["b", "{w:1}:k"]
    assert transport.links[next(iter(transport.links))] is not link


async def test_a_silent_server_times_the_call_out(
    transport: PipelinedScripts, redis_client: RedisClient, settings: Settings
) -> None:
    sha = await redis_client.script_load("redis.call('SET', KEYS[1], ARGV[1]) return {ARGV[1]}")
    assert await transport.evalsha(sha, ["{w:1}:k"], ["a"]) == ["a"]
    plain: Redis = Redis.from_url(settings.redis.url)
    try:
        await plain.execute_command(  # type: ignore[no-untyped-call]
            "CLIENT", "PAUSE", 1500, "WRITE"
        )
        with pytest.raises(RedisTimeoutError):
            await transport.evalsha(sha, ["{w:1}:k"], ["b"])
    finally:
        await plain.execute_command(  # type: ignore[no-untyped-call]
            "CLIENT", "UNPAUSE"
        )
        await plain.aclose()
    assert await transport.evalsha(sha, ["{w:1}:k"], ["c"]) == ["c"]


async def test_a_server_the_fence_does_not_trust_carries_nothing(
    settings: Settings, redis_client: RedisClient
) -> None:
    fence = Fence()
    fence.open(["some-other-run-id"])
    cluster = redis_client if isinstance(redis_client, RedisCluster) else None
    scripts = PipelinedScripts(settings.redis.url, fence, cluster=cluster)
    sha = await redis_client.script_load("redis.call('SET', KEYS[1], 'x') return {'ok'}")
    try:
        with pytest.raises(UncheckedRedis):
            await scripts.evalsha(sha, ["{w:1}:untrusted"], [])
        assert not fence.is_open
        assert await redis_client.exists("{w:1}:untrusted") == 0
    finally:
        scripts.close()


async def test_the_runner_reloads_a_flushed_script_through_the_transport(
    transport: PipelinedScripts, redis_client: RedisClient
) -> None:
    runner = ScriptRunner(redis_client, load_scripts(), transport.fence, pipelined=transport)
    await runner.load_all()
    await redis_client.script_flush()
    keys = KeySpace(8, 4).wallet("someone")
    reply = await runner.run("wallet_page", [keys.coupons, keys.user_index("someone")], [0, "", 10, ""])
    assert reply[0] == "ok"


@pytest.fixture
async def commands(redis_client: RedisClient, settings: Settings) -> AsyncIterator[PipelinedCommands]:
    await redis_client.ping()  # the cluster client initialized (and so closed) by its owner, not by the link
    cluster = redis_client if isinstance(redis_client, RedisCluster) else None
    found = PipelinedCommands(settings.redis.url, cluster=cluster, timeout=0.5)
    yield found
    found.close()


async def test_a_batch_of_commands_is_one_write_and_its_replies_come_back_in_order_errors_in_place(
    commands: PipelinedCommands, redis_client: RedisClient
) -> None:
    keys = [f"{{w:{n}}}:events" for n in range(300)]
    for key in keys[::2]:
        await redis_client.xadd(key, {"n": key})
    calls = [(key, encode_command(("XLEN", key))) for key in keys]
    calls.insert(7, ("{w:1}:events", encode_command(("XINFO", "GROUPS", "{w:1}:nothing"))))
    await commands.call_many(calls[:1])  # connected
    (link,) = commands.links.values()
    assert link.transport is not None
    writes: list[int] = []
    write = link.transport.writelines

    def counted(data: Any) -> None:
        chunks = list(data)
        writes.append(len(chunks))
        write(chunks)

    link.transport.writelines = counted  # type: ignore[method-assign]
    replies = await commands.call_many(calls)
    assert writes == [1]  # all 301 commands in one write
    assert isinstance(replies[7], ResponseError) and "no such key" in str(replies[7])
    del replies[7]
    assert replies == [1 if n % 2 == 0 else 0 for n in range(300)]
    assert await commands.call_many([]) == []


async def test_a_batch_unanswered_in_time_breaks_its_link_and_the_next_batch_reconnects(
    commands: PipelinedCommands,
) -> None:
    """Plain commands need no fence (reads carry nothing it guards), only an answer in time."""
    ping = ("{w:1}:k", encode_command(("PING",)))
    assert await commands.call_many([ping]) == ["PONG"]
    (link,) = commands.links.values()
    blocking = ("{w:1}:k", encode_command(("BLPOP", "{w:1}:never", 2)))  # answers after 2 s: past the 0.5 s
    with pytest.raises(RedisTimeoutError):
        await commands.call_many([ping, blocking, ping])
    assert link.closed
    assert await commands.call_many([ping, ping]) == ["PONG", "PONG"]
    assert commands.links[next(iter(commands.links))] is not link
