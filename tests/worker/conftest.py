from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.settings import Settings
from worker.consumer import Consumer, start_consumer


async def drain(consumer: Consumer, *, max_steps: int = 200) -> int:
    """Step until two empty rounds in a row; the number of entries persisted."""
    total, empty = 0, 0
    for _ in range(max_steps):
        done = await consumer.step()
        total += done
        empty = empty + 1 if done == 0 else 0
        if empty >= 2:
            return total
    raise AssertionError("the worker did not drain")


@pytest.fixture
async def consumer(settings: Settings, clean: None) -> AsyncIterator[Consumer]:
    found = await start_consumer(settings)
    yield found
    await found.redis.close()
    await found.pool.close()


async def persist(settings: Settings) -> int:
    """Run a worker until the streams are empty, then stop it; the entries it persisted."""
    consumer = await start_consumer(settings)
    try:
        return await drain(consumer)
    finally:
        await consumer.redis.close()
        await consumer.pool.close()
