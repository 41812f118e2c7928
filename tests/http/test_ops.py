"""Operations routes (no credential), the OpenAPI document, and the framework's own refusals."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from gateway.devstack.pidfile import free_port
from gateway.http.app import create_app
from gateway.scripts.registry import load_scripts
from gateway.services import Services
from gateway.settings import OpsSettings, Settings, load_settings
from tests.conftest import settings_env
from tests.helpers import ADMIN, bearer, create_activity
from tests.http.support import assert_claim_answer, assert_refusal, claim_url


async def test_healthz(client: AsyncTestClient[Any]) -> None:
    reply = await client.get("/healthz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok"}


@pytest.fixture
async def with_ops(settings: Settings, clean: None) -> AsyncIterator[tuple[AsyncTestClient[Any], str]]:
    """The app with its operations listener on a free loopback port, and that listener's URL."""
    port = free_port()
    env = settings_env(settings.redis.url, settings.postgres.url, ops_port=str(port))
    async with AsyncTestClient(app=create_app(load_settings(env))) as client:
        yield client, f"http://127.0.0.1:{port}"


async def ops_get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(url)


async def test_readyz_when_everything_is_up(with_ops: tuple[AsyncTestClient[Any], str]) -> None:
    client, ops = with_ops
    public = await client.get("/readyz")
    assert (public.status_code, public.json()) == (200, {"status": "ready"})
    reply = await ops_get(f"{ops}/readyz")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    durability = body.pop("durability")
    assert body == {"redis": "ok", "postgres": "ok", "fence": "open", "status": "ready"}
    # The test Valkey runs without AOF: reported (what it can cost), not gating.
    assert durability["setting"] == "fast" and durability["wait_replicas"] == 0
    assert durability["redis"] == "appendonly no, appendfsync everysec"
    assert durability["problem"].startswith("fast asked, but Redis runs without AOF")
    assert (await ops_get(f"{ops}/healthz")).json() == {"status": "ok"}
    assert (await ops_get(f"{ops}/v1/admin/templates")).status_code == 404  # nothing but operations there


async def test_a_closed_fence_is_named_publicly_and_detailed_only_on_the_operations_listener(
    with_ops: tuple[AsyncTestClient[Any], str], db: asyncpg.Pool
) -> None:
    client, ops = with_ops
    services: Services = client.app.state.services
    await db.execute("INSERT INTO partition_marks VALUES ('{w:0}', 999)")  # keeps the watcher from reopening
    services.fence.close("Redis is behind the ledger in 1 partition(s): {w:0}; run restore")
    public = await client.get("/readyz")
    assert (public.status_code, public.json()) == (503, {"status": "not ready", "missing": ["fence"]})
    assert "{w:0}" not in public.text and "run_id" not in public.text
    detailed = (await ops_get(f"{ops}/readyz")).json()
    assert detailed["fence"] == "closed: Redis is behind the ledger in 1 partition(s): {w:0}; run restore"
    assert detailed["status"] == "ready" and "durability" in detailed


def test_the_operations_listener_binds_loopback_by_default() -> None:
    assert OpsSettings().host == "127.0.0.1"


async def test_readyz_reloads_flushed_scripts(client: AsyncTestClient[Any], raw_redis: Redis) -> None:
    """After a Redis restart (or a flush) the scripts are gone; readiness loads them itself rather than
    wait for traffic that a probe is holding back."""
    await raw_redis.script_flush()
    shas = [script.sha for script in load_scripts().values()]
    assert await raw_redis.script_exists(*shas) == [False] * len(shas)
    reply = await client.get("/readyz")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"status": "ready"}
    assert await raw_redis.script_exists(*shas) == [True] * len(shas)


async def test_a_claim_after_script_flush_reloads_and_succeeds(
    client: AsyncTestClient[Any], raw_redis: Redis
) -> None:
    activity = await create_activity(client, stock=2)
    await raw_redis.script_flush()
    assert_claim_answer(
        await client.post(claim_url(activity["id"]), headers=bearer("u1")),
        [activity["pack"][0]["template_id"]],
    )


async def test_openapi_lists_the_routes(client: AsyncTestClient[Any]) -> None:
    reply = await client.get("/schema/openapi.json")
    assert reply.status_code == 200, reply.text
    document = reply.json()
    paths = document["paths"]
    assert "post" in paths["/v1/activities/{activity_id}/claim"]
    assert {"get", "post"} <= set(paths["/v1/admin/templates"])
    assert {"get", "post"} <= set(paths["/v1/admin/activities"])
    assert "get" in paths["/v1/admin/activities/{activity_id}"]
    assert "get" in paths["/healthz"] and "get" in paths["/readyz"]


async def test_openapi_documents_bodies_and_errors(client: AsyncTestClient[Any]) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    assert "requestBody" in paths["/v1/admin/templates"]["post"]
    assert "requestBody" in paths["/v1/admin/activities"]["post"]
    claim = paths["/v1/activities/{activity_id}/claim"]["post"]
    assert {"400", "401", "404", "409", "503"} <= set(claim["responses"])


@pytest.mark.parametrize("path", ["/nope", "/v1/activities", "/v1/admin", "/v1/activities/x/claim/extra"])
async def test_unknown_route_is_404(client: AsyncTestClient[Any], path: str) -> None:
    for method in ("GET", "POST"):
        reply = await client.request(method, path, headers={**ADMIN, **bearer("u1")})
        assert_refusal(reply, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/healthz"), ("DELETE", "/v1/admin/templates"), ("PUT", "/v1/admin/activities")],
)
async def test_wrong_method_is_405(client: AsyncTestClient[Any], method: str, path: str) -> None:
    reply = await client.request(method, path, headers=ADMIN)
    assert_refusal(reply, 405, "invalid_request")


async def test_a_refusal_while_fenced_shows_no_internals(
    client: AsyncTestClient[Any], services: Services, db: asyncpg.Pool
) -> None:
    activity = await create_activity(client, stock=2)
    await db.execute("INSERT INTO partition_marks VALUES ('{w:0}', 999)")  # keeps the watcher from reopening
    services.fence.close("Redis 0123abcd not yet checked; behind the ledger in 1 partition(s): {w:0}")
    refused = await client.post(claim_url(activity["id"]), headers=bearer("u1"))
    body = assert_refusal(refused, 503, "overloaded")
    assert "{w:0}" not in refused.text and "0123abcd" not in refused.text, body
    assert refused.headers["retry-after"]


async def test_a_client_that_connects_and_says_nothing_holds_up_no_probe(
    with_ops: tuple[AsyncTestClient[Any], str],
) -> None:
    _, ops = with_ops
    host, port = ops.removeprefix("http://").split(":")
    silent = [socket.create_connection((host, int(port))) for _ in range(3)]
    try:
        started = time.monotonic()
        reply = await ops_get(f"{ops}/healthz")
        assert reply.status_code == 200 and time.monotonic() - started < 2
    finally:
        for connection in silent:
            connection.close()
