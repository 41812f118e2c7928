"""The wallet: a user's coupons as Redis holds them (their bucket ``{w:n}``), newest first."""

from __future__ import annotations

from gateway.keys import KeySpace
from gateway.redis_client import ScriptRunner

STATUSES = ("available", "locked", "redeemed", "expired")


class WalletService:
    def __init__(self, runner: ScriptRunner, keyspace: KeySpace) -> None:
        self.runner = runner
        self.keyspace = keyspace

    async def page(self, user_id: str, *, status: str, cursor: str, limit: int, now: int) -> bytes:
        """``{items, next_cursor?}`` as the contract shapes a list; built by the script, encoded once."""
        wallet = self.keyspace.wallet(user_id)
        _, items, next_cursor = await self.runner.run(
            "wallet_page", [wallet.coupons, wallet.user_index(user_id)], [now, cursor, limit, status]
        )
        tail = f',"next_cursor":"{next_cursor}"}}' if next_cursor else "}"
        return f'{{"items":{items}{tail}'.encode()
