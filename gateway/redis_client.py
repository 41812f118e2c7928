"""The one wrapper through which every script call goes.

It loads scripts once by SHA, calls ``EVALSHA`` and reloads on ``NOSCRIPT`` (after a restart, a failover or a
``SCRIPT FLUSH``), checks that a call's KEYS share one slot, holds the fence, and maps Redis's memory refusal
to ``overloaded``. It works with a single node and with a cluster client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.fence import Fence
from gateway.keys import slot_of
from gateway.outcomes import DomainError, Outcome
from gateway.scripts import Script

RedisClient = Redis | RedisCluster
MEMORY_RETRY_AFTER = 2
UNREACHABLE_RETRY_AFTER = 1
SPARE_CONNECTIONS = 4  # beyond the script calls: blocklist refresh, fence watch, readiness


class CrossSlotCall(AssertionError):
    """A script call whose KEYS span two slots: a programming error, never sent."""


async def connect(url: str, *, max_connections: int = 64) -> RedisClient:
    """A client for ``url``: a cluster client when the server runs in cluster mode, else a plain one.

    Both kinds raise, rather than wait, when their pool is exhausted; the ScriptRunner bounds in-flight
    script calls below the pool size, and the pool keeps a few spare connections for everything else.
    """
    size = max_connections + SPARE_CONNECTIONS
    plain: Redis = Redis.from_url(url, decode_responses=True, max_connections=size)
    info = await plain.info("cluster")
    if not info.get("cluster_enabled"):
        return plain
    await plain.aclose()
    return RedisCluster.from_url(url, decode_responses=True, max_connections=size)


def check_one_slot(script: Script, keys: Sequence[str]) -> None:
    if len(keys) != len(script.keys):
        raise CrossSlotCall(f"{script.name} takes {len(script.keys)} keys, got {len(keys)}")
    first = slot_of(keys[0])
    for key in keys[1:]:
        if slot_of(key) != first:
            raise CrossSlotCall(f"{script.name}: {keys[0]!r} and {key!r} are in different slots")


class ScriptRunner:
    def __init__(
        self, client: RedisClient, scripts: dict[str, Script], fence: Fence, *, max_in_flight: int = 64
    ) -> None:
        self.client = client
        self.scripts = scripts
        self.fence = fence
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def load_all(self) -> None:
        for script in self.scripts.values():
            sha = await self.client.script_load(script.source)
            if sha != script.sha:
                raise RuntimeError(f"{script.name}: Redis computed SHA {sha}, expected {script.sha}")

    async def missing_scripts(self) -> list[str]:
        names = list(self.scripts)
        loaded = await self.client.script_exists(*(self.scripts[n].sha for n in names))
        return [name for name, present in zip(names, loaded, strict=True) if not present]

    async def run(self, name: str, keys: Sequence[str], args: Sequence[str | int | bytes]) -> list[Any]:
        script = self.scripts[name]
        if not script.read_only:
            self.fence.check()
        check_one_slot(script, keys)
        try:
            async with self._in_flight:
                try:
                    reply = await self.client.evalsha(script.sha, len(keys), *keys, *args)
                except NoScriptError:
                    await self.client.script_load(script.source)
                    reply = await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except OutOfMemoryError:
            raise DomainError(
                Outcome.OVERLOADED,
                "Redis is out of memory; nothing was done.",
                retry_after=MEMORY_RETRY_AFTER,
            ) from None
        except (RedisConnectionError, RedisTimeoutError):
            # The call may or may not have run; a keyed retry gets its first answer either way.
            raise DomainError(
                Outcome.OVERLOADED,
                "Redis is unreachable; retry shortly.",
                retry_after=UNREACHABLE_RETRY_AFTER,
            ) from None
        if not isinstance(reply, list) or not reply or reply[0] not in script.replies:
            raise RuntimeError(f"{name}: reply {reply!r} is not one its header declares")
        return reply
