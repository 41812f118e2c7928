"""The wallet: a user's coupons as Redis holds them (their bucket ``{w:n}``), newest first."""

from __future__ import annotations

import msgspec

from gateway.keys import KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.calls import checkout as calls
from gateway.scripts.runner import ScriptRunner

STATUSES = ("available", "locked", "redeemed", "expired")
PAGE = 100


class WalletCoupon(msgspec.Struct):
    coupon_id: str
    template_id: str
    activity_id: str
    status: str
    valid_from: int
    valid_until: int
    order_id: str | None = None


class _Page(msgspec.Struct):
    items: list[WalletCoupon]
    next_cursor: str | None = None


class WalletService:
    def __init__(self, runner: ScriptRunner, keyspace: KeySpace) -> None:
        self.runner = runner
        self.keyspace = keyspace

    async def page(self, user_id: str, *, status: str, cursor: str, limit: int, now: int) -> bytes:
        """``{items, next_cursor?}`` as the contract shapes a list; built by the script, encoded once. A cursor
        that is none of the user's coupons is ``not_found``."""
        keys = calls.WalletPageKeys.of(self.keyspace.wallet(user_id), user_id)
        reply = await calls.wallet_page(self.runner, keys, now=now, cursor=cursor, limit=limit, status=status)
        if reply[0] != Outcome.OK:
            raise DomainError(Outcome.NOT_FOUND, "No such coupon in this wallet: the cursor names none.")
        _, items, next_cursor = reply
        tail = f',"next_cursor":"{next_cursor}"}}' if next_cursor else "}"
        return f'{{"items":{items}{tail}'.encode()

    async def coupons(self, user_id: str, *, now: int) -> list[WalletCoupon]:
        """Every coupon of the user, newest first, with the status each shows now."""
        found: list[WalletCoupon] = []
        cursor = ""
        while True:
            page = msgspec.json.decode(
                await self.page(user_id, status="", cursor=cursor, limit=PAGE, now=now), type=_Page
            )
            found += page.items
            if not page.next_cursor:
                return found
            cursor = page.next_cursor
