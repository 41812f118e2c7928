"""Activities this gateway process saw sell out, so that an unkeyed claim on one is refused without Redis.

A mark is set when the ``claim`` script answers ``sold_out`` to a claim without an ``Idempotency-Key`` (a keyed
retry must still reach Redis for its first answer). It answers only what the script would: the route consults it
after the blocklist and the fence, and the script's checks before stock (replay, blocked, status, window) are the
ones a mark must not hide, so a mark lasts while the activity is ``active``, inside its window and out of stock:

- an operator's change made through this process (restock, pause, resume, end, edit) clears it at once;
- every ``recheck_seconds`` each marked activity's status, stock and end are read again (one ``HMGET`` each),
  which is how a change made through another gateway process, or a code batch voided by reconcile, reaches this
  one; until then this process may answer ``sold_out`` where the script would answer otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import math

from gateway.background import cancel_requested
from gateway.keys import KeySpace
from gateway.scripts.runner import RedisClient

log = logging.getLogger(__name__)
RECHECK_SECONDS = 0.5


class SoldOutMarks:
    def __init__(self) -> None:
        self._ends_at: dict[str, float] = {}  # activity id -> its end (inf until the first recheck reads it)

    def holds(self, activity_id: str, now: float) -> bool:
        ends_at = self._ends_at.get(activity_id)
        return ends_at is not None and now < ends_at

    def mark(self, activity_id: str) -> None:
        self._ends_at.setdefault(activity_id, math.inf)

    def clear(self, activity_id: str) -> None:
        self._ends_at.pop(activity_id, None)

    def marked(self) -> list[str]:
        return list(self._ends_at)

    async def recheck(self, client: RedisClient, keyspace: KeySpace) -> None:
        """Keep the marks of activities still active and out of stock; learn each one's end."""
        marked = self.marked()
        if not marked:
            return
        pipe = client.pipeline(transaction=False)
        for activity_id in marked:
            pipe.hmget(keyspace.activity(activity_id).config, "status", "stock_left", "ends_at")
        states = await pipe.execute()
        for activity_id, (status, stock_left, ends_at) in zip(marked, states, strict=True):
            if status == "active" and stock_left is not None and int(stock_left) <= 0 and ends_at:
                if activity_id in self._ends_at:  # not cleared by a change while we read
                    self._ends_at[activity_id] = float(ends_at)
            else:
                self.clear(activity_id)

    async def keep_checking(
        self, client: RedisClient, keyspace: KeySpace, interval: float = RECHECK_SECONDS
    ) -> None:
        while not cancel_requested():
            try:
                await self.recheck(client, keyspace)
            except Exception as exc:  # Redis away: drop every mark rather than answer from an unchecked one
                log.warning("sold-out recheck failed, marks dropped: %r", exc)
                self._ends_at.clear()
            await asyncio.sleep(interval)
