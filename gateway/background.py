"""Background loops that end when cancelled, even when a library swallows the cancellation.

On Python 3.11, ``asyncio.wait_for`` (which redis-py uses to send commands) can return a result and drop a
cancellation that arrives as the command completes (CPython gh-86296). The task's ``cancelling()`` count still
records it, so loops ask that each round, and ``stop_tasks`` repeats the cancel until each task has ended.
"""

from __future__ import annotations

import asyncio

STOP_ROUNDS = 50


def cancel_requested() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    for _ in range(STOP_ROUNDS):
        pending = [task for task in tasks if not task.done()]
        if not pending:
            break
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.1)
    await asyncio.gather(*tasks, return_exceptions=True)
