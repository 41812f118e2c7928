"""Fixtures of the fault tests: a clean slate on the session servers, the environment child processes get,
every process a test starts (stopped by pid at the end), and a Redis client for checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.devstack.pidfile import PidFile
from gateway.devstack.valkey import ValkeyServer
from tests.faults.support import Processes, process_env


@pytest.fixture
def procs(tmp_path: Path, pidfile: PidFile) -> Iterator[Processes]:
    started = Processes(tmp_path, pidfile)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def env(valkey: ValkeyServer, migrated: str, clean: None) -> dict[str, str]:
    """Settings for the gateway and worker processes, on emptied session servers."""
    return process_env(valkey.url, migrated)


@pytest.fixture
async def rdb(valkey: ValkeyServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(valkey.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()
