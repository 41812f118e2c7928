"""Fixtures for tests that need requests truly in flight together: a real gateway process on the session's
servers, and an HTTP client to it. (The in-process test client runs one request at a time: its transport
blocks the test's loop until the app has answered, so ``asyncio.gather`` over it is no race.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.devstack.pidfile import PidFile
from gateway.devstack.valkey import ValkeyServer
from tests.faults.support import Gateway, Processes, process_env

IN_FLIGHT = 200


@pytest.fixture
def procs(tmp_path: Path, pidfile: PidFile) -> Iterator[Processes]:
    started = Processes(tmp_path, pidfile)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
async def gateway(procs: Processes, valkey: ValkeyServer, migrated: str, clean: None) -> Gateway:
    """A gateway process on the emptied session servers, ready with its fence open."""
    return await procs.gateway(process_env(valkey.url, migrated))


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, limits=limits) as client:
        yield client
