"""Each gateway's in-process copy of the blocklist, refreshed from Redis whenever its version key changes.

A change reaches every gateway within one refresh interval (``CLAIMGATE_BLOCKLIST_REFRESH``, default 1 s):
the refresher reads one small version key per interval and the two sets only when it moved.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.background import cancel_requested
from gateway.keys import BLOCKLIST
from gateway.scripts.runner import RedisClient

log = logging.getLogger(__name__)


class Blocklist:
    def __init__(self) -> None:
        self.users: frozenset[str] = frozenset()
        self.devices: frozenset[str] = frozenset()
        self.version: str | None = None

    def blocks(self, user_id: str, device_id: str) -> bool:
        return user_id in self.users or device_id in self.devices

    async def refresh(self, client: RedisClient) -> bool:
        """Reload if the version moved; True when it did."""
        version = str(await client.get(BLOCKLIST.version) or "")
        if version == self.version:
            return False
        users = await client.smembers(BLOCKLIST.users)
        devices = await client.smembers(BLOCKLIST.devices)
        self.users = frozenset(str(user) for user in users)
        self.devices = frozenset(str(device) for device in devices)
        self.version = version
        return True

    async def keep_fresh(self, client: RedisClient, interval: float) -> None:
        while not cancel_requested():
            try:
                await self.refresh(client)
            except Exception as exc:  # Redis away: keep the last copy and try again next interval
                log.warning("blocklist refresh failed: %s", exc)
            await asyncio.sleep(interval)
