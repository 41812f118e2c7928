"""The safe setting: WAIT for replicas after each write on a single-node Redis (a shortfall is counted, the
write stands), and the durability report that compares what Redis runs with the setting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.devstack.pidfile import PidFile
from gateway.devstack.valkey import ValkeyServer, start_valkey, stop_valkey
from gateway.keys import BLOCKLIST
from gateway.scripts.durability import describe, shortfall
from gateway.scripts.fence import Fence
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import ScriptRunner, connect
from gateway.settings import RedisSettings

BLOCKLIST_KEYS = [BLOCKLIST.users, BLOCKLIST.devices, BLOCKLIST.entries, BLOCKLIST.version, BLOCKLIST.seq,
                  BLOCKLIST.events]  # fmt: skip


@pytest.fixture
def primary_and_replica(tmp_path: Path, pidfile: PidFile) -> Iterator[tuple[ValkeyServer, ValkeyServer]]:
    primary = start_valkey(tmp_path / "primary", appendonly=True, pidfile=pidfile)
    try:
        replica = start_valkey(tmp_path / "replica", pidfile=pidfile)
        try:
            yield primary, replica
        finally:
            stop_valkey(replica, pidfile)
    finally:
        stop_valkey(primary, pidfile)


async def block(runner: ScriptRunner, user: str) -> list[object]:
    return await runner.run("blocklist", BLOCKLIST_KEYS, [int(time.time()), f"e-{user}", "ops", "add",
                                                          f'["{user}"]', "[]"])  # fmt: skip


async def test_safe_with_a_replica_waits_for_it_and_counts_a_shortfall(
    primary_and_replica: tuple[ValkeyServer, ValkeyServer], pidfile: PidFile
) -> None:
    primary, replica = primary_and_replica
    replica_client: Redis = Redis.from_url(replica.url, decode_responses=True)
    client = await connect(primary.url)
    try:
        await replica_client.replicaof("127.0.0.1", primary.port)
        for _ in range(400):
            if (await replica_client.info("replication")).get("master_link_status") == "up":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the replica never linked to the primary")
        # A wait long enough for a loaded machine: the replica must acknowledge, not the clock run out.
        patient = ScriptRunner(
            client, load_scripts(), Fence(open_=True), wait_replicas=1, wait_timeout_ms=10_000
        )
        assert await block(patient, "u1") == ["ok", 1]
        assert patient.wait_shortfalls == 0
        assert await replica_client.sismember(BLOCKLIST.users, "u1")  # there when the answer left

        stop_valkey(replica, pidfile)  # the replica is gone: the write stands, the wait times out
        brief = ScriptRunner(client, load_scripts(), Fence(open_=True), wait_replicas=1, wait_timeout_ms=300)
        started = time.monotonic()
        assert await block(brief, "u2") == ["ok", 1]
        assert time.monotonic() - started >= 0.3
        assert brief.wait_shortfalls == 1
        assert await client.sismember(BLOCKLIST.users, "u2")
    finally:
        await client.aclose()
        await replica_client.aclose()


async def test_wait_is_refused_on_a_cluster_client(redis_client: object) -> None:
    with pytest.raises(ValueError, match="appendfsync always"):
        ScriptRunner(redis_client, load_scripts(), Fence(open_=True), wait_replicas=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setting", "wait", "persistence", "problem"),
    [
        ("fast", 0, {"appendonly": "yes", "appendfsync": "everysec"}, ""),
        (
            "fast",
            0,
            {"appendonly": "no", "appendfsync": "everysec"},
            "fast asked, but Redis runs without AOF",
        ),
        ("safe", 0, {"appendonly": "yes", "appendfsync": "always"}, ""),
        (
            "safe",
            0,
            {"appendonly": "yes", "appendfsync": "everysec"},
            "safe asked, but Redis runs appendfsync",
        ),
        ("safe", 1, {"appendonly": "yes", "appendfsync": "everysec"}, ""),
        ("safe", 0, {}, ""),  # CONFIG not allowed: cannot tell
    ],
)
def test_shortfall(setting: str, wait: int, persistence: dict[str, str], problem: str) -> None:
    found = shortfall(RedisSettings("redis://x", durability=setting, wait_replicas=wait), persistence)
    assert found.startswith(problem) and bool(found) == bool(problem)


async def test_describe_reads_what_redis_runs(tmp_path: Path, pidfile: PidFile) -> None:
    server = start_valkey(tmp_path / "always", appendonly=True, appendfsync="always", pidfile=pidfile)
    client = await connect(server.url)
    try:
        report = await describe(client, RedisSettings(server.url, durability="safe"))
        assert report == {
            "setting": "safe",
            "wait_replicas": 0,
            "redis": "appendonly yes, appendfsync always",
        }
    finally:
        await client.aclose()
        stop_valkey(server, pidfile)
