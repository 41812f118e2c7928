"""The wallet: a user's coupons as Redis holds them (their bucket ``{w:n}``), newest first; with a final status
(redeemed, expired), also those the retention sweep has moved out of Redis, from the ledger."""

from __future__ import annotations

import asyncpg
import msgspec

from gateway.keys import KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.calls import checkout as calls
from gateway.scripts.runner import ScriptRunner

STATUSES = ("available", "locked", "redeemed", "expired")
# The statuses of coupons that leave Redis after the retention: a page of one of them reads the ledger too.
ARCHIVED_STATUSES = ("redeemed", "expired")
PAGE = 100
_ARCHIVED_PAGE = """
SELECT coupon_id, template_id, activity_id, status, valid_from, valid_until,
    CASE WHEN status = 'redeemed' THEN order_id END AS order_id
FROM coupons
WHERE user_id = $1 AND status = $2 AND archived_at IS NOT NULL AND ($3 = '' OR coupon_id < $3)
ORDER BY coupon_id DESC LIMIT $4
"""
_ARCHIVED_ONE = "SELECT 1 FROM coupons WHERE user_id = $1 AND coupon_id = $2 AND archived_at IS NOT NULL"


class WalletCoupon(msgspec.Struct, omit_defaults=True):
    coupon_id: str
    template_id: str
    activity_id: str
    status: str
    valid_from: int
    valid_until: int
    order_id: str | None = None


class _Page(msgspec.Struct, omit_defaults=True):
    items: list[WalletCoupon]
    next_cursor: str | None = None


class WalletService:
    def __init__(self, runner: ScriptRunner, keyspace: KeySpace, pool: asyncpg.Pool | None = None) -> None:
        self.runner = runner
        self.keyspace = keyspace
        self.pool = pool  # the ledger, for coupons the retention moved out of Redis (None: Redis only)

    async def page(self, user_id: str, *, status: str, cursor: str, limit: int, now: int) -> bytes:
        """``{items, next_cursor?}`` as the contract shapes a list; built by the script, encoded once. A cursor
        that is none of the user's coupons is ``not_found``."""
        if status in ARCHIVED_STATUSES and self.pool is not None:
            return msgspec.json.encode(await self._merged(user_id, status, cursor, limit, now, self.pool))
        items, next_cursor = await self._hot(user_id, status, cursor, limit, now, vouched=False)
        tail = f',"next_cursor":"{next_cursor}"}}' if next_cursor else "}"
        return f'{{"items":{items}{tail}'.encode()

    async def _hot(
        self, user_id: str, status: str, cursor: str, limit: int, now: int, *, vouched: bool
    ) -> tuple[str, str]:
        """A page as Redis holds it: the items' JSON array and the next cursor ("" on the last page)."""
        keys = calls.WalletPageKeys.of(self.keyspace.wallet(user_id), user_id)
        reply = await calls.wallet_page(
            self.runner, keys, now=now, cursor=cursor, limit=limit, status=status, vouched=vouched
        )
        if reply[0] != Outcome.OK:
            raise DomainError(Outcome.NOT_FOUND, "No such coupon in this wallet: the cursor names none.")
        return str(reply[1]), str(reply[2])

    async def _merged(
        self, user_id: str, status: str, cursor: str, limit: int, now: int, pool: asyncpg.Pool
    ) -> _Page:
        """Redis's page and the ledger's archived coupons of the status, one list newest first (coupon ids sort
        by creation): Redis holds none of what the ledger marks archived, so no coupon shows twice."""
        vouched = bool(cursor) and await pool.fetchval(_ARCHIVED_ONE, user_id, cursor) is not None
        hot, hot_next = await self._hot(user_id, status, cursor, limit, now, vouched=vouched)
        rows = await pool.fetch(_ARCHIVED_PAGE, user_id, status, cursor, limit + 1)
        archived = [WalletCoupon(**dict(row)) for row in rows[:limit]]
        items = msgspec.json.decode(hot, type=list[WalletCoupon]) + archived
        items.sort(key=lambda item: item.coupon_id, reverse=True)
        more = bool(hot_next) or len(items) > limit or len(rows) > limit
        page = items[:limit]
        return _Page(page, page[-1].coupon_id if more and page else None)

    async def coupons(self, user_id: str, *, now: int) -> list[WalletCoupon]:
        """Every coupon of the user Redis holds, newest first, with the status each shows now."""
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
