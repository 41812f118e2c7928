"""The run-id guard and the no-retry rule of the script client, on a Redis this test restarts."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.devstack.pidfile import PidFile
from gateway.devstack.valkey import ValkeyServer, restart_valkey, start_valkey, stop_valkey
from gateway.keys import KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.scripts import ledger_check
from gateway.services import Clients
from gateway.settings import Settings, load_settings
from gateway.tokens import UserIdentity
from tests.conftest import settings_env
from tests.lua.support import activity_config

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def collect_refused_connections() -> Iterator[None]:
    """redis-py's cluster client leaves the node objects of a refused (fenced) initialize for the garbage
    collector, which warns; collect them here, where that is expected, not in whichever test runs next."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(params=[False, True], ids=["single", "cluster"])
def own_valkey(request: pytest.FixtureRequest, tmp_path: Path, pidfile: PidFile) -> Iterator[ValkeyServer]:
    server = start_valkey(
        tmp_path / "valkey", cluster=request.param, appendonly=True, appendfsync="always", pidfile=pidfile
    )
    box = [server]
    request.node.valkey_box = box
    yield server
    stop_valkey(box[0], pidfile)


@pytest.fixture
async def own_settings(own_valkey: ValkeyServer, migrated: str, clean: None) -> Settings:
    return load_settings(settings_env(own_valkey.url, migrated))


@pytest.fixture
async def clients(own_settings: Settings) -> AsyncIterator[Clients]:
    opened = await Clients.open(own_settings)
    yield opened
    await opened.close()


async def mirror(clients: Clients, activity_id: str, stock: int) -> None:
    keys = KeySpace(8, 4).activity(activity_id)
    reply = await clients.runner.run(
        "put_activity",
        [keys.config, keys.allow_list, keys.retired, keys.seq, keys.events],
        [
            int(time.time()),
            "e0",
            "alice",
            activity_id,
            json.dumps(activity_config(now=int(time.time()), stock=stock)),
            "[]",
        ],
    )
    assert reply[0] == "ok"


async def claim(clients: Clients, activity_id: str, user: str) -> str:
    from gateway.claim.service import ClaimService

    service = ClaimService(clients.runner, KeySpace(8, 4), 90_000)
    result = await service.claim(activity_id, UserIdentity(user, f"d-{user}"), now=int(time.time()))
    return result.outcome.value


async def recheck(clients: Clients, pool: asyncpg.Pool) -> None:
    """What the watcher does each second: a check; a connection the restart broke fails once."""
    for _ in range(3):
        try:
            await ledger_check.check(clients.control, pool, clients.fence)
            return
        except RedisConnectionError:
            continue
    raise AssertionError("the ledger check never reached Redis")


async def refused_claims(clients: Clients, activity_id: str, users: list[str]) -> None:
    for user in users:
        with pytest.raises(DomainError) as refused:
            await claim(clients, activity_id, user)
        assert refused.value.outcome is Outcome.OVERLOADED


async def test_a_restarted_redis_runs_no_script_before_the_ledger_check(
    request: pytest.FixtureRequest, clients: Clients, own_settings: Settings, pidfile: PidFile
) -> None:
    pool = await asyncpg.create_pool(own_settings.postgres.url, min_size=1, max_size=2)
    try:
        await ledger_check.check(clients.control, pool, clients.fence)
        assert clients.fence.is_open
        await mirror(clients, "g1", stock=10)
        assert await claim(clients, "g1", "u1") == "ok"

        box = request.node.valkey_box
        box[0] = restart_valkey(box[0], pidfile)  # same data (AOF always), new run id
        # The pooled connection died with the old server; the new one meets the guard, which closes the fence.
        await refused_claims(clients, "g1", ["u2", "u3"])
        assert not clients.fence.is_open
        assert "not yet checked against the ledger" in clients.fence.reason
        await recheck(clients, pool)  # level with the ledger: opens
        assert clients.fence.is_open
        keys = KeySpace(8, 4).activity("g1")
        assert await clients.control.hget(keys.config, "taken") == "1"  # the refused calls ran nothing
        assert await claim(clients, "g1", "u2") == "ok"
    finally:
        await pool.close()


async def test_a_redis_behind_the_ledger_stays_fenced(
    request: pytest.FixtureRequest, clients: Clients, own_settings: Settings, pidfile: PidFile
) -> None:
    pool = await asyncpg.create_pool(own_settings.postgres.url, min_size=1, max_size=2)
    try:
        await ledger_check.check(clients.control, pool, clients.fence)
        await mirror(clients, "g2", stock=10)
        assert await claim(clients, "g2", "u1") == "ok"
        # The ledger holds more of this partition than Redis will after the restart: a lost tail.
        await pool.execute("INSERT INTO partition_marks VALUES ('{a:g2}', 99)")
        box = request.node.valkey_box
        box[0] = restart_valkey(box[0], pidfile)
        await recheck(clients, pool)
        assert not clients.fence.is_open
        assert "behind the ledger" in clients.fence.reason
        await refused_claims(clients, "g2", ["u2", "u3", "u4"])
        assert await clients.control.hget(KeySpace(8, 4).activity("g2").config, "taken") == "1"
    finally:
        await pool.close()


class ReplyDropper:
    """A TCP proxy that relays everything but cuts the connection right after forwarding an EVALSHA, so
    the script runs and its reply never arrives."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        relay = asyncio.create_task(downstream())
        try:
            while data := await reader.read(65536):
                if b"EVALSHA" in data.upper():
                    relay.cancel()  # from here on nothing comes back
                    up_writer.write(data)
                    await up_writer.drain()
                    await asyncio.sleep(0.05)  # let Redis run it
                    break
                up_writer.write(data)
                await up_writer.drain()
        finally:
            relay.cancel()
            writer.close()
            up_writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_a_lost_reply_is_never_sent_again(own_valkey: ValkeyServer, own_settings: Settings) -> None:
    direct = await Clients.open(own_settings)
    proxy = ReplyDropper(own_valkey.port)
    port = await proxy.start()
    pool = await asyncpg.create_pool(own_settings.postgres.url, min_size=1, max_size=2)
    try:
        await ledger_check.check(direct.control, pool, direct.fence)
        await mirror(direct, "g3", stock=10)
        if own_valkey.cluster:  # make the cluster client, which follows CLUSTER SLOTS, come through the proxy
            await direct.control.config_set("cluster-announce-port", port)
        proxied_settings = load_settings(
            settings_env(f"redis://127.0.0.1:{port}/0", own_settings.postgres.url)
        )
        proxied = await Clients.open(proxied_settings, direct.fence)
        try:
            with pytest.raises(DomainError) as refused:
                await claim(proxied, "g3", "u1")
            assert refused.value.outcome is Outcome.OVERLOADED
        finally:
            await proxied.close()
        # The script ran once; a client retrying on the lost reply would have taken a second pack.
        assert await direct.control.hget(KeySpace(8, 4).activity("g3").config, "taken") == "1"
    finally:
        await pool.close()
        await proxy.stop()
        await direct.close()


async def test_after_a_restart_the_fence_opens_with_no_stale_connection_left(
    request: pytest.FixtureRequest, clients: Clients, own_settings: Settings, pidfile: PidFile
) -> None:
    """The watcher notices the new run id before any claim does; when it opens the fence it drops the script
    client's idle connections, so no claim meets a socket to the dead server."""
    pool = await asyncpg.create_pool(own_settings.postgres.url, min_size=1, max_size=2)
    try:
        await ledger_check.check(clients.control, pool, clients.fence)
        await mirror(clients, "g4", stock=100)
        users = [f"w{i}" for i in range(8)]
        assert await asyncio.gather(*(claim(clients, "g4", u) for u in users)) == ["ok"] * 8  # 8 pooled conns

        box = request.node.valkey_box
        box[0] = restart_valkey(box[0], pidfile)
        for _ in range(3):  # the control client's own pooled connection may fail once, as in the watcher
            try:
                await ledger_check.check(clients.control, pool, clients.fence, scripts=clients.scripts)
                break
            except RedisConnectionError:
                continue
        assert clients.fence.is_open
        again = await asyncio.gather(
            *(claim(clients, "g4", f"{u}-again") for u in users), return_exceptions=True
        )
        assert again == ["ok"] * 8
    finally:
        await pool.close()
