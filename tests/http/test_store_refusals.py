"""A store that answers but cannot take the request now is overloaded (503, Retry-After, nothing done), never a
500: Redis busy running a script (BUSY), refusing writes after a failed save (MISCONF) or as a replica
(READONLY); Postgres out of connections (TooManyConnectionsError) or cancelling a query past its
statement_timeout (QueryCanceledError). Each is produced for real, on a Valkey of the test's own (the session's
is shared) or on the session's Postgres through a role or a setting of the test's own, and undone after."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.devstack.pidfile import PidFile, free_port
from gateway.devstack.valkey import ValkeyServer, start_valkey, stop_valkey
from gateway.http.app import create_app
from gateway.keys import KeySpace
from gateway.settings import Settings, load_settings
from tests.conftest import settings_env
from tests.helpers import ADMIN, bearer, create_activity
from tests.http.support import assert_refusal, claim_url

BUSY_LOOP = "while true do end"  # reads nothing, writes nothing: SCRIPT KILL ends it
BUSY_THRESHOLD_MS = 100  # past this a running script makes Redis answer BUSY to every other call


@pytest.fixture
def own_valkey(tmp_path: Path, pidfile: PidFile) -> Iterator[ValkeyServer]:
    """A standalone Valkey for this test alone, whose protected configs (``dir``) may change at run time."""
    server = start_valkey(
        tmp_path / "valkey", pidfile=pidfile, extra_args=("--enable-protected-configs", "yes")
    )
    yield server
    stop_valkey(server, pidfile)


@pytest.fixture
async def admin(own_valkey: ValkeyServer) -> AsyncIterator[Redis]:
    """A connection made before Redis is made busy, so SCRIPT KILL gets through."""
    client: Redis = Redis.from_url(own_valkey.url, decode_responses=True)
    await client.ping()
    yield client
    await client.aclose()


@pytest.fixture
async def gateway(
    own_valkey: ValkeyServer, settings: Settings, clean: None
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app on the test's own Valkey and the session's (clean) Postgres."""
    env = settings_env(own_valkey.url, settings.postgres.url)
    async with AsyncTestClient(app=create_app(load_settings(env))) as client:
        yield client


def assert_overloaded(reply: httpx.Response) -> None:
    assert_refusal(reply, 503, "overloaded")
    assert int(reply.headers["Retry-After"]) >= 1


async def claimed(client: AsyncTestClient[Any], activity_id: str, user: str) -> None:
    reply = await client.post(claim_url(activity_id), headers=bearer(user))
    assert reply.status_code == 201, reply.text


async def taken(admin: Redis, activity_id: str) -> int:
    return int(await admin.hget(KeySpace.activity(activity_id).config, "taken") or 0)


async def test_a_redis_busy_running_a_script_answers_overloaded(
    gateway: AsyncTestClient[Any], admin: Redis, own_valkey: ValkeyServer
) -> None:
    activity = await create_activity(gateway, stock=5, per_user_limit=5)
    aid = activity["id"]
    await claimed(gateway, aid, "u1")  # the gateway's script connection is up
    await admin.config_set("busy-reply-threshold", BUSY_THRESHOLD_MS)
    runner: Redis = Redis.from_url(own_valkey.url)
    looping = asyncio.create_task(runner.eval(BUSY_LOOP, 0))
    try:
        for _ in range(100):  # until others are answered BUSY
            try:
                await admin.get("probe")
            except ResponseError as busy:
                assert str(busy).startswith("BUSY"), busy
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("Redis never got busy")

        assert_overloaded(await gateway.post(claim_url(aid), headers=bearer("u2")))  # a script call
        assert_overloaded(
            await gateway.get(f"/v1/admin/activities/{aid}/stats", headers=ADMIN)
        )  # plain reads
    finally:
        await admin.script_kill()
        with pytest.raises(ResponseError, match="killed"):
            await looping
        await runner.aclose()

    assert await taken(admin, aid) == 1  # the refused claim took nothing
    await claimed(gateway, aid, "u2")
    assert await taken(admin, aid) == 2


async def test_a_redis_refusing_writes_after_a_failed_save_answers_overloaded(
    gateway: AsyncTestClient[Any], admin: Redis, own_valkey: ValkeyServer
) -> None:
    activity = await create_activity(gateway, stock=5, per_user_limit=5)
    aid = activity["id"]
    await claimed(gateway, aid, "u1")
    # A save that fails (nobody can create a file in /proc) stops writes while save points are configured.
    await admin.config_set("save", "3600 1")
    await admin.config_set("dir", "/proc")
    try:
        await admin.bgsave()
        for _ in range(250):
            persistence = await admin.info("persistence")
            if not persistence["rdb_bgsave_in_progress"] and persistence["rdb_last_bgsave_status"] == "err":
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"the save did not fail: {persistence}")
        with pytest.raises(ResponseError, match=r"^MISCONF"):
            await admin.set("probe", "1")

        assert_overloaded(await gateway.post(claim_url(aid), headers=bearer("u2")))
        assert_overloaded(await gateway.post(f"/v1/admin/activities/{aid}/pause", headers=ADMIN))
    finally:
        await admin.config_set("dir", str(own_valkey.workdir))
        await admin.config_set("save", "")

    assert await taken(admin, aid) == 1
    assert (await admin.hget(KeySpace.activity(aid).config, "status")) == "active"
    await claimed(gateway, aid, "u2")


async def test_a_read_only_replica_answers_overloaded(gateway: AsyncTestClient[Any], admin: Redis) -> None:
    activity = await create_activity(gateway, stock=5, per_user_limit=5)
    aid = activity["id"]
    await claimed(gateway, aid, "u1")
    await admin.replicaof("127.0.0.1", free_port())  # a replica of a primary that is not there: read only
    try:
        with pytest.raises(ResponseError, match="read only"):
            await admin.set("probe", "1")
        assert_overloaded(await gateway.post(claim_url(aid), headers=bearer("u2")))
        assert_overloaded(await gateway.post(f"/v1/admin/activities/{aid}/pause", headers=ADMIN))
    finally:
        await admin.replicaof("NO", "ONE")

    assert await taken(admin, aid) == 1
    await claimed(gateway, aid, "u2")


async def test_postgres_out_of_connections_answers_overloaded(settings: Settings, clean: None) -> None:
    role = f"no_slots_{secrets.token_hex(4)}"
    owner = await asyncpg.connect(settings.postgres.url)
    await owner.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
    try:
        url = settings.postgres.url.replace("//claimgate@", f"//{role}@")
        with pytest.raises(asyncpg.TooManyConnectionsError):  # what the gateway meets, for real
            await asyncpg.connect(url)
        env = settings_env(settings.redis.url, url, load_check_seconds="30")
        async with AsyncTestClient(app=create_app(load_settings(env))) as client:
            assert_overloaded(await client.get("/v1/admin/templates", headers=ADMIN))
            assert_overloaded(await client.get("/v1/admin/activities", headers=ADMIN))
    finally:
        await owner.execute(f'DROP ROLE "{role}"')
        await owner.close()


async def test_a_query_cancelled_past_its_statement_timeout_answers_overloaded(
    settings: Settings, clean: None
) -> None:
    env = settings_env(settings.redis.url, f"{settings.postgres.url}?statement_timeout=300")
    async with AsyncTestClient(app=create_app(load_settings(env))) as client:
        assert (await client.get("/v1/admin/templates", headers=ADMIN)).status_code == 200
        holder = await asyncpg.connect(settings.postgres.url)
        try:
            locking = holder.transaction()
            await locking.start()
            await holder.execute(
                "LOCK TABLE templates IN ACCESS EXCLUSIVE MODE"
            )  # the read waits, then is cancelled
            assert_overloaded(await client.get("/v1/admin/templates", headers=ADMIN))
            await locking.rollback()
        finally:
            await holder.close()
        assert (await client.get("/v1/admin/templates", headers=ADMIN)).status_code == 200
