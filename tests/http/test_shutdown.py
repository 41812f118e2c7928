"""The gateway's background loops must end when cancelled, or Services.stop() (the app's shutdown) hangs."""

from __future__ import annotations

import asyncio
import random

from gateway.scripts import ledger_check
from gateway.services import Services
from gateway.settings import Settings

TRIALS = 30


async def test_a_cancelled_fence_watcher_ends(settings: Settings, clean: None) -> None:
    services = await Services.start(settings, background=False)
    stuck = 0
    try:
        for _ in range(TRIALS):
            task = asyncio.create_task(ledger_check.watch(services.client, services.pool, services.fence, 0))
            await asyncio.sleep(random.uniform(0.001, 0.01))
            task.cancel()
            await asyncio.wait([task], timeout=0.3)  # an unstuck one ends in milliseconds
            if not task.done():
                stuck += 1
                while not task.done():  # clean up: cancel until it takes
                    task.cancel()
                    await asyncio.wait([task], timeout=0.05)
    finally:
        await services.stop()
    assert stuck == 0, f"{stuck} of {TRIALS} cancelled watchers kept running"
