"""blocklist.lua: reply and every key it touches."""

from __future__ import annotations

import json

from gateway.events import SCHEMA_VERSION
from gateway.keys import BLOCKLIST
from gateway.scripts.runner import RedisClient, ScriptRunner

KEYS = [
    BLOCKLIST.users,
    BLOCKLIST.devices,
    BLOCKLIST.entries,
    BLOCKLIST.version,
    BLOCKLIST.seq,
    BLOCKLIST.events,
]


async def change(
    runner: ScriptRunner,
    action: str,
    users: list[str],
    devices: list[str],
    now: int = 1000,
    by: str = "alice",
) -> list[object]:
    return await runner.run(
        "blocklist", KEYS, [now, f"e-{now}-{action}", by, action, json.dumps(users), json.dumps(devices)]
    )


async def state(client: RedisClient) -> dict[str, object]:
    return {
        "users": await client.smembers(BLOCKLIST.users),
        "devices": await client.smembers(BLOCKLIST.devices),
        "entries": await client.hgetall(BLOCKLIST.entries),
        "version": await client.get(BLOCKLIST.version),
        "seq": await client.get(BLOCKLIST.seq),
        "events": await client.xrange(BLOCKLIST.events),
    }


async def test_add_then_remove(runner: ScriptRunner, redis_client: RedisClient) -> None:
    assert await change(runner, "add", ["u1", "u2"], ["d1"]) == ["ok", 3]
    after = await state(redis_client)
    assert after["users"] == {"u1", "u2"} and after["devices"] == {"d1"}
    assert after["entries"] == {
        k: '{"added_at":1000,"by":"alice"}' for k in ("user:u1", "user:u2", "device:d1")
    }
    assert (after["version"], after["seq"]) == ("1", "1")
    [(_, event)] = after["events"]  # type: ignore[misc]
    assert event == {
        "type": "blocklist_changed",
        "v": str(SCHEMA_VERSION),
        "id": "e-1000-add",
        "seq": "1",
        "at": "1000",
        "by": "alice",
        "action": "add",
        "users": '["u1","u2"]',
        "devices": '["d1"]',
    }

    assert await change(runner, "add", ["u1"], ["d1"], now=1001) == ["replay"]  # nothing new
    assert await state(redis_client) == after

    assert await change(runner, "remove", ["u1", "nobody"], [], now=1002, by="bob") == ["ok", 1]
    removed = await state(redis_client)
    assert removed["users"] == {"u2"} and removed["devices"] == {"d1"}
    assert set(removed["entries"]) == {"user:u2", "device:d1"}  # type: ignore[arg-type]
    assert (removed["version"], removed["seq"]) == ("2", "2")
    event = removed["events"][-1][1]  # type: ignore[index]
    assert (event["action"], event["users"], event["devices"], event["by"]) == (
        "remove",
        '["u1"]',
        "[]",
        "bob",
    )


async def test_removing_what_is_not_there_writes_nothing(
    runner: ScriptRunner, redis_client: RedisClient
) -> None:
    assert await change(runner, "remove", ["ghost"], ["phantom"]) == ["replay"]
    assert await redis_client.exists(*KEYS) == 0
