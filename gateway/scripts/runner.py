"""The one wrapper through which every script call goes.

It loads scripts once by SHA, calls ``EVALSHA`` and reloads on ``NOSCRIPT`` (after a restart, a failover or a
``SCRIPT FLUSH``), checks that a call's KEYS share one slot, holds the fence, and maps Redis's refusals (memory
full, busy, read-only, writes stopped) and a script's own error to ``overloaded``. It works with a single node
and with a cluster client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import Connection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from gateway.keys import slot_of
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.calls import Arg
from gateway.scripts.fence import Fence
from gateway.scripts.registry import Script

if TYPE_CHECKING:
    from gateway.scripts.transport import PipelinedScripts

log = logging.getLogger(__name__)
RedisClient = Redis | RedisCluster
MEMORY_RETRY_AFTER = 2
UNREACHABLE_RETRY_AFTER = 1
REFUSED_RETRY_AFTER = 1
# Error replies of a Redis that cannot take a call now and did not run it: a script running too long (BUSY),
# writes stopped after a failed save (MISCONF), a replica (READONLY), a dataset loading (LOADING), too few
# replicas (NOREPLICAS), a cluster moving or without its master (MOVED, ASK, TRYAGAIN, MASTERDOWN, CLUSTERDOWN).
UNAVAILABLE_REPLIES = frozenset(
    {
        "BUSY",
        "MISCONF",
        "READONLY",
        "LOADING",
        "NOREPLICAS",
        "MOVED",
        "ASK",
        "TRYAGAIN",
        "MASTERDOWN",
        "CLUSTERDOWN",
    }
)
SPARE_CONNECTIONS = 4
SOCKET_TIMEOUT_SECONDS = 2.0
CONNECT_TIMEOUT_SECONDS = 1.0
QUEUE_TIMEOUT_SECONDS = 1.0  # a call waiting longer than this for a connection is shed as overloaded


class UncheckedRedis(RedisConnectionError):
    """A connection reached a Redis whose run id this process has not checked against the ledger."""


class CrossSlotCall(AssertionError):
    """A script call whose KEYS span two slots: a programming error, never sent."""


def guarded_connection(fence: Fence) -> type[Connection]:
    """A connection that, once connected, refuses to serve a Redis (re)started since this process last checked
    it against the ledger, and closes the fence: no script runs on a Redis that may have rolled back until
    ``ledger_check`` has looked at it."""

    class GuardedConnection(Connection):
        async def on_connect_check_health(self, check_health: bool = True) -> None:
            await super().on_connect_check_health(check_health)
            await self.send_command("INFO", "server")
            info = await self.read_response()
            refuse_unchecked(info.decode() if isinstance(info, bytes) else str(info), fence)

    return GuardedConnection


def refuse_unchecked(info_server: str, fence: Fence) -> None:
    """Raise ``UncheckedRedis`` (and close the fence) unless the fence trusts the run id in ``INFO server``."""
    run_id = next((line[7:].strip() for line in info_server.splitlines() if line.startswith("run_id:")), "")
    if not fence.trusts(run_id):
        fence.suspect(f"Redis {run_id or '?'} is not yet checked against the ledger")
        raise UncheckedRedis(f"Redis {run_id} not yet checked against the ledger")


async def connect(url: str, *, max_connections: int = 64, guard: Fence | None = None) -> RedisClient:
    """A client for ``url``: a cluster client when the server runs in cluster mode, else a plain one.

    With ``guard`` it is the client for scripts: no automatic retries (a lost reply must never run a claim
    twice), timeouts, and the run-id guard on every new connection. Without it, it is a control client
    (fence checks, blocklist, readiness) and keeps redis-py's retries. Both kinds raise rather than wait
    when their pool is exhausted: the ScriptRunner bounds calls in flight below the pool size.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "max_connections": max_connections + SPARE_CONNECTIONS,
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
    }
    if guard is not None:
        options["retry"] = Retry(NoBackoff(), 0)
    probe: Redis = Redis.from_url(url, decode_responses=True, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        cluster = bool((await probe.info("cluster")).get("cluster_enabled"))
    finally:
        await probe.aclose()
    if not cluster:
        if guard is not None:
            options["connection_class"] = guarded_connection(guard)
        return Redis.from_url(url, **options)
    client = RedisCluster.from_url(url, **options)
    if guard is not None:
        # RedisCluster takes no connection class of its own: set it where its nodes are made, before any
        # node has connected.
        guarded = guarded_connection(guard)
        client.connection_kwargs["connection_class"] = guarded
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_class = guarded
    return client


async def drop_idle_connections(client: RedisClient) -> None:
    """Disconnect the pool's idle connections (they reconnect on next use): after Redis restarted, each still
    holds a socket to the dead server, and the script client does not retry a call that met one."""
    if isinstance(client, RedisCluster):
        await asyncio.gather(*(node.disconnect_free_connections() for node in client.get_nodes()))
    else:
        await client.connection_pool.disconnect(inuse_connections=False)


@dataclass(frozen=True, slots=True)
class EvalshaCommand:
    """Carries a call out as the words of one ``EVALSHA`` command, for a tool that sends commands itself (the
    benchmark's redis-benchmark); everything else runs its calls through ``ScriptRunner``."""

    sha: str  # of the script the calls name

    def run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> list[str]:
        return ["EVALSHA", self.sha, str(len(keys)), *keys, *map(str, args)]


def check_one_slot(script: Script, keys: Sequence[str]) -> None:
    if len(keys) != len(script.keys):
        raise CrossSlotCall(f"{script.name} takes {len(script.keys)} keys, got {len(keys)}")
    tag_end = keys[0].find("}") + 1
    if keys[0].startswith("{") and tag_end > 2:
        tag = keys[0][:tag_end]
        if all(key.startswith(tag) for key in keys):  # one hash tag, one slot: no CRC needed
            return
    first = slot_of(keys[0])
    for key in keys[1:]:
        if slot_of(key) != first:
            raise CrossSlotCall(f"{script.name}: {keys[0]!r} and {key!r} are in different slots")


def redis_unreachable() -> DomainError:
    return DomainError(
        Outcome.OVERLOADED, "Redis is unreachable; retry shortly.", retry_after=UNREACHABLE_RETRY_AFTER
    )


def redis_unavailable(exc: ResponseError) -> bool:
    """An error reply that says Redis cannot take calls now (``UNAVAILABLE_REPLIES``), not that this call is
    wrong. redis-py strips the code of the replies it has a class for (``ReadOnlyError``), and keeps the others'."""
    return isinstance(exc, ReadOnlyError) or str(exc).split(" ", 1)[0] in UNAVAILABLE_REPLIES


def redis_refused(name: str, exc: ResponseError) -> DomainError:
    """A script call Redis answered with an error: ``overloaded``, nothing was done (a busy or read-only Redis
    runs no script; every script makes all its checks, and fails on malformed input, before its first write).
    A script's own failure is a bug as well: logged whole, while the caller may retry."""
    if redis_unavailable(exc):
        log.warning("Redis refused script %s: %s", name, exc)
    else:
        log.error("script %s failed in Redis: %s", name, exc)
    return DomainError(
        Outcome.OVERLOADED, "Redis refused the call; nothing was done.", retry_after=REFUSED_RETRY_AFTER
    )


class ScriptRunner:
    """Runs scripts on ``client`` (the guarded script client); loads and inspects them via ``control``."""

    def __init__(
        self,
        client: RedisClient,
        scripts: dict[str, Script],
        fence: Fence,
        *,
        control: RedisClient | None = None,
        max_in_flight: int = 64,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        pipelined: PipelinedScripts | None = None,
    ) -> None:
        self.client = client
        self.pipelined = pipelined  # when set, plain EVALSHA calls go through it (the gateway's hot path)
        self.control = control or client
        self.scripts = scripts
        self.fence = fence
        self._in_flight = asyncio.Semaphore(max_in_flight)
        if wait_replicas and isinstance(client, RedisCluster):
            raise ValueError(
                "WAIT after each write needs a single-node client; on a cluster use appendfsync always"
            )
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.wait_shortfalls = 0  # writes acknowledged by fewer replicas than asked, within the timeout

    async def load_all(self) -> None:
        for script in self.scripts.values():
            sha = await self.control.script_load(script.source)
            if sha != script.sha:
                raise RuntimeError(f"{script.name}: Redis computed SHA {sha}, expected {script.sha}")

    async def missing_scripts(self) -> list[str]:
        names = list(self.scripts)
        loaded = await self.control.script_exists(*(self.scripts[n].sha for n in names))
        return [name for name, present in zip(names, loaded, strict=True) if not present]

    async def _take_slot(self) -> None:
        """One of the ``max_in_flight`` slots, waiting at most ``QUEUE_TIMEOUT_SECONDS`` (then overloaded)."""
        if not self._in_flight.locked():
            await self._in_flight.acquire()  # a free slot: taken at once, no timer needed
            return
        try:
            async with asyncio.timeout(QUEUE_TIMEOUT_SECONDS):
                await self._in_flight.acquire()
        except TimeoutError:
            raise DomainError(
                Outcome.OVERLOADED,
                "Too many requests in flight; retry shortly.",
                retry_after=UNREACHABLE_RETRY_AFTER,
            ) from None

    async def hget(self, key: str, field: str) -> str | None:
        """A plain read on the scripts' client, within the scripts' in-flight limit: the client's pool raises
        rather than waits when every connection is busy, so a read past the limit would be a 503."""
        await self._take_slot()
        try:
            value = await self.client.hget(key, field)
        except (RedisConnectionError, RedisTimeoutError):
            raise redis_unreachable() from None
        except ResponseError as exc:
            raise redis_refused("HGET", exc) from exc
        finally:
            self._in_flight.release()
        return None if value is None else str(value)  # decode_responses: already a str

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> list[Any]:
        """Run script ``name``: callers go through its call function (``gateway.scripts.calls``), which builds
        ``keys`` and ``args``; tests also send what no call function would (a malformed ARGV)."""
        script = self.scripts[name]
        if not script.read_only:
            self.fence.check()
        check_one_slot(script, keys)
        await self._take_slot()
        try:
            reply = await self._evalsha(script, keys, args)
        except (UncheckedRedis, RedisClusterException):
            # A cluster client reports the guard's refusal (or an unreachable cluster) as a cluster error.
            raise self.fence_error() from None
        except OutOfMemoryError:
            raise DomainError(
                Outcome.OVERLOADED,
                "Redis is out of memory; nothing was done.",
                retry_after=MEMORY_RETRY_AFTER,
            ) from None
        except (RedisConnectionError, RedisTimeoutError):
            # The call may or may not have run; a keyed retry gets its first answer either way.
            raise redis_unreachable() from None
        except ResponseError as exc:
            raise redis_refused(name, exc) from exc
        finally:
            self._in_flight.release()
        if not isinstance(reply, list) or not reply or reply[0] not in script.replies:
            raise RuntimeError(f"{name}: reply {reply!r} is not one its header declares")
        return reply

    async def _evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        call = self._evalsha_then_wait if self.wait_replicas and not script.read_only else self._evalsha_once
        try:
            return await call(script, keys, args)
        except NoScriptError:
            if self.pipelined is not None:
                await self.pipelined.script_load(script.source, keys[0])
            else:
                await self.client.script_load(script.source)
            return await call(script, keys, args)

    async def _evalsha_once(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        if self.pipelined is not None:
            return await self.pipelined.evalsha(script.sha, keys, args)
        return await self.client.evalsha(script.sha, len(keys), *keys, *args)

    async def _evalsha_then_wait(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """The safe setting with replicas: the script and ``WAIT`` on one connection, so the answer leaves only
        once the write reached ``wait_replicas`` replicas or the timeout passed. A shortfall is counted, not
        refused: the write is done on the primary (and in its AOF), and a keyed retry would replay it."""
        pipe = self.client.pipeline(transaction=False)
        pipe.evalsha(script.sha, len(keys), *keys, *args)
        pipe.wait(self.wait_replicas, self.wait_timeout_ms)
        reply, acknowledged = await pipe.execute(raise_on_error=False)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(acknowledged, Exception) or int(acknowledged) < self.wait_replicas:
            self.wait_shortfalls += 1
        return reply

    def fence_error(self) -> DomainError:
        try:
            self.fence.check()
        except DomainError as closed:
            return closed
        return DomainError(
            Outcome.OVERLOADED, "Redis changed; retry shortly.", retry_after=UNREACHABLE_RETRY_AFTER
        )
