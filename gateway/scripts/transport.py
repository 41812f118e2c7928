"""Auto-pipelined script calls: every ``EVALSHA`` a process issues in one event-loop turn leaves in one write on
one connection per Redis node, and hiredis parses the replies as they arrive.

Why not redis-py here: each of its calls takes a connection from a pool, writes, and waits for its own reply,
and its per-call Python costs more than the script. On this 2-core machine, 64 calls in flight from one
process: redis-py 6.0k EVALSHA/s, valkey-glide 9.3k, this 26.4k (``loadtest/bench`` measures the gateway
with it; style.md's notes agree). Everything else (control reads, admin, the worker) stays on redis-py.

What a connection guarantees, as the script client's pool did (``runner.guarded_connection``):
- a new connection checks the server's run id against the fence before it carries a call;
- no call is ever sent twice: a connection that breaks fails every call it carried with ``ConnectionError``
  (the call may or may not have run; a keyed retry gets its first answer);
- a call unanswered after ``timeout`` seconds breaks its connection (``TimeoutError`` for its calls).
In cluster mode a call goes to the node owning its slot (from redis-py's cluster map); a ``MOVED`` or ``ASK``
reply means the script did not run: the map is refreshed and the call sent once more.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlparse

import hiredis
from redis.asyncio import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.keys import slot_of
from gateway.scripts.fence import Fence
from gateway.scripts.runner import refuse_unchecked

Address = tuple[str, int]
CONNECT_TIMEOUT_SECONDS = 1.0
MOVED_RETRIES = 2


class Moved(ResponseError):
    """The slot lives on another node (``MOVED``/``ASK``): the call did not run."""


def reply_error(message: str) -> ResponseError:
    """A server's error reply as the redis-py exception the script runner maps: ``NOSCRIPT`` reloads, ``MOVED``
    and the like retry on the right node; the rest (``OOM``, ``READONLY``, ``BUSY``, ``MISCONF``, a script's own
    error) become ``overloaded`` there (``runner.redis_refused``)."""
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith("OOM"):
        return OutOfMemoryError(message)
    if message.startswith("READONLY"):
        return ReadOnlyError(message)
    if message.startswith(("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")):
        return Moved(message)
    return ResponseError(message)


def encode_command(parts: Sequence[str | int | bytes]) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


# Calls written at once, mid-turn, rather than at the end of the loop's turn: a turn that resumes 64 claims
# otherwise hands Valkey all 64 together and both sides take turns idling (claims in stock 10.9k -> 13k req/s
# with 8; 4 and 32 did less well).
FLUSH_AT = 8


class Gathering:
    """A batch of calls answered by one future: their replies in order, each error reply as its exception."""

    __slots__ = ("expected", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], expected: int) -> None:
        self.future = future
        self.expected = expected
        self.replies: list[Any] = []

    def add(self, reply: Any) -> bool:
        """Collect one reply; True once the batch is complete (its future then holds them, unless cancelled)."""
        self.replies.append(reply_error(str(reply)) if isinstance(reply, ResponseError) else reply)
        if len(self.replies) < self.expected:
            return False
        if not self.future.done():
            self.future.set_result(self.replies)
        return True


class Link(asyncio.Protocol):
    """One connection carrying many calls; replies come back in the order the calls were written."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.reader = hiredis.Reader(encoding="utf-8", replyError=ResponseError)
        self.waiting: collections.deque[tuple[asyncio.Future[Any] | Gathering, float]] = collections.deque()
        self.outgoing: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.flush_scheduled = False
        self.watchdog: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not waiting:  # nothing asked for it: the stream is out of step, never guess
                self.break_off(RedisConnectionError("Redis sent a reply nothing asked for"))
                return
            future, _ = waiting[0]
            if type(future) is Gathering:
                if future.add(reply):
                    waiting.popleft()
                continue
            waiting.popleft()
            assert not isinstance(future, Gathering)  # (for the type checker)
            if future.done():  # its caller gave up (a cancelled request)
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(reply_error(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.break_off(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def break_off(self, error: Exception) -> None:
        """Fail every call in flight; the link is never used again."""
        self.closed = True
        if self.watchdog is not None:
            self.watchdog.cancel()
        while self.waiting:
            future, _ = self.waiting.popleft()
            if isinstance(future, Gathering):
                future = future.future
            if not future.done():
                future.set_exception(error)
        self.outgoing.clear()
        if self.transport is not None:
            self.transport.abort()

    def call(self, command: bytes) -> asyncio.Future[Any]:
        if self.closed:
            raise RedisConnectionError("connection to Redis is closed")
        future: asyncio.Future[Any] = self.loop.create_future()
        self.waiting.append((future, time.monotonic()))
        self.outgoing.append(command)
        if len(self.outgoing) >= FLUSH_AT:
            self.write_out()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)
        if self.watchdog is None:
            self.watchdog = self.loop.call_later(self.timeout, self.check_overdue)
        return future

    def call_batch(self, commands: Sequence[bytes]) -> asyncio.Future[list[Any]]:
        """Many calls written at once, in one write: one future for all their replies, in order (an error
        reply as its exception, in its place)."""
        if self.closed:
            raise RedisConnectionError("connection to Redis is closed")
        future: asyncio.Future[list[Any]] = self.loop.create_future()
        if not commands:
            future.set_result([])
            return future
        self.waiting.append((Gathering(future, len(commands)), time.monotonic()))
        self.outgoing.append(b"".join(commands))
        self.write_out()
        if self.watchdog is None:
            self.watchdog = self.loop.call_later(self.timeout, self.check_overdue)
        return future

    def flush(self) -> None:
        self.flush_scheduled = False
        self.write_out()

    def write_out(self) -> None:
        if self.closed or self.transport is None or not self.outgoing:
            return
        self.transport.writelines(self.outgoing)
        self.outgoing = []

    def check_overdue(self) -> None:
        self.watchdog = None
        if not self.waiting:
            return
        oldest = self.waiting[0][1]
        overdue = time.monotonic() - oldest - self.timeout
        if overdue >= 0:
            self.break_off(RedisTimeoutError(f"Redis did not answer within {self.timeout}s"))
            return
        self.watchdog = self.loop.call_later(-overdue, self.check_overdue)


class PipelinedCommands:
    """Commands over auto-pipelined links, one per node, each routed by its key's slot. Unfenced: for reads
    (the worker's stream reads, the gateway's lag measure), whose many small commands redis-py's per-command
    Python would make the cost of polling (about 20 us a command there, 1-2 us here)."""

    def __init__(self, url: str, *, cluster: RedisCluster | None = None, timeout: float = 2.0) -> None:
        parsed = urlparse(url)
        self.default: Address = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self.username = unquote(parsed.username) if parsed.username else None
        self.password = unquote(parsed.password) if parsed.password else None
        self.db = int(parsed.path.lstrip("/") or 0) if cluster is None else 0
        if parsed.scheme not in ("redis", ""):
            raise ValueError(f"pipelined calls support redis:// URLs only, not {parsed.scheme}://")
        self.cluster = cluster
        self.timeout = timeout
        self.links: dict[Address, Link] = {}
        self.connecting: dict[Address, asyncio.Lock] = {}
        self.failures: dict[Address, tuple[float, Exception]] = {}

    async def call(self, key: str, command: bytes) -> Any:
        """One command on the node owning ``key``; a ``MOVED`` (it did not run) refreshes the map and retries."""
        if self.cluster is not None and not self.cluster.nodes_manager.slots_cache:
            await self.cluster.nodes_manager.initialize()
        for attempt in range(MOVED_RETRIES + 1):
            address = self.address_of(key)
            link = self.links.get(address)
            if link is None or link.closed:
                link = await self.link(address)
            try:
                return await link.call(command)
            except Moved:
                if self.cluster is None or attempt == MOVED_RETRIES:
                    raise
                await self.cluster.nodes_manager.initialize()
        raise AssertionError("unreachable")

    async def call_many(self, calls: Sequence[tuple[str, bytes]]) -> list[Any]:
        """Each ``(key, command)`` on its key's node, one write per node; the replies in order, a command's
        error reply as its ``ResponseError`` (as redis-py's ``raise_on_error=False``). A broken connection
        raises (what it carried may have run); a ``MOVED`` command is sent once more on its own."""
        if self.cluster is not None and not self.cluster.nodes_manager.slots_cache:
            await self.cluster.nodes_manager.initialize()
        by_node: dict[Address, list[int]] = {}
        if self.cluster is None:
            by_node[self.default] = list(range(len(calls)))
        else:
            for i, (key, _) in enumerate(calls):
                by_node.setdefault(self.address_of(key), []).append(i)
        batches: list[tuple[list[int], asyncio.Future[list[Any]]]] = []
        for address, indexes in by_node.items():
            link = self.links.get(address)
            if link is None or link.closed:
                link = await self.link(address)
            batches.append((indexes, link.call_batch([calls[i][1] for i in indexes])))
        if len(batches) == 1:  # one node (always, outside a cluster): its replies are all of them, in order
            replies = await batches[0][1]
        else:
            replies = await self._gathered(batches, len(calls))
        for i, reply in enumerate(replies):
            if isinstance(reply, Moved):
                try:
                    replies[i] = await self.call(*calls[i])
                except ResponseError as exc:
                    replies[i] = exc
        return replies

    @staticmethod
    async def _gathered(batches: list[tuple[list[int], asyncio.Future[list[Any]]]], count: int) -> list[Any]:
        """The replies of several nodes' batches, put back in the calls' order."""
        replies: list[Any] = [None] * count
        broken: Exception | None = None
        for indexes, batch in batches:  # every batch awaited, even after one broke
            try:
                for i, reply in zip(indexes, await batch, strict=True):
                    replies[i] = reply
            except Exception as exc:
                broken = broken or exc
        if broken is not None:
            raise broken
        return replies

    def address_of(self, key: str) -> Address:
        if self.cluster is None:
            return self.default
        node = self.cluster.nodes_manager.get_node_from_slot(slot_of(key))
        return (node.host, int(node.port))

    async def link(self, address: Address) -> Link:
        """The node's open link, connecting it if need be; calls that waited on a connect that failed fail
        with it rather than each trying (and timing out) in turn."""
        waiting_since = time.monotonic()
        lock = self.connecting.setdefault(address, asyncio.Lock())
        async with lock:
            link = self.links.get(address)
            if link is not None and not link.closed:
                return link
            failure = self.failures.get(address)
            if failure is not None and failure[0] >= waiting_since:
                raise type(failure[1])(str(failure[1]))
            try:
                link = await self.open(address)
            except Exception as exc:
                self.failures[address] = (time.monotonic(), exc)
                raise
            self.links[address] = link
            return link

    async def open(self, address: Address) -> Link:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                _, link = await loop.create_connection(lambda: Link(self.timeout), *address)
                if self.password is not None:
                    auth = (
                        ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
                    )
                    await link.call(encode_command(auth))
                if self.db:
                    await link.call(encode_command(("SELECT", self.db)))
                await self.admit(link)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(
                f"cannot connect to Redis at {address[0]}:{address[1]}: {exc!r}"
            ) from exc
        return link

    async def admit(self, link: Link) -> None:
        """What a new link must pass before it carries a call (nothing here)."""

    def close(self) -> None:
        for link in self.links.values():
            link.break_off(RedisConnectionError("closed by the gateway"))
        self.links.clear()


class PipelinedScripts(PipelinedCommands):
    """``evalsha`` over auto-pipelined links, one per node, each checked against the fence when it connects."""

    def __init__(
        self, url: str, fence: Fence, *, cluster: RedisCluster | None = None, timeout: float = 2.0
    ) -> None:
        super().__init__(url, cluster=cluster, timeout=timeout)
        self.fence = fence

    async def evalsha(self, sha: str, keys: Sequence[str], args: Sequence[str | int | bytes]) -> Any:
        return await self.call(keys[0], encode_command(("EVALSHA", sha, len(keys), *keys, *args)))

    async def script_load(self, source: str, key: str) -> str:
        """Load ``source`` on the node that owns ``key`` (after a ``NOSCRIPT``)."""
        link = await self.link(self.address_of(key))
        sha: str = await link.call(encode_command(("SCRIPT", "LOAD", source)))
        return sha

    async def admit(self, link: Link) -> None:
        """The server's run id must be one the fence trusts (else the fence closes and the link with it)."""
        info: str = await link.call(encode_command(("INFO", "server")))
        try:
            refuse_unchecked(info, self.fence)
        except Exception:
            link.break_off(RedisConnectionError("closed: Redis not yet checked"))
            raise
