"""The wallet's retention sweep: finished orders and final coupons leave Redis once ``CLAIMGATE_RETENTION`` has
passed, recorded so the ledger answers for them after.

Per wallet bucket, bounded passes: ``retain_orders`` first (an order leaves before the coupon it names), then the
coupons due in ``final``, read here with their owners (a script touches only keys it is given, and a coupon's
owner index is one of them), removed by one ``retain_coupons`` per owner, the calls sent together.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import msgspec

from gateway.ids import new_id
from gateway.keys import KeySpace, WalletKeys
from gateway.scripts.calls import checkout as calls
from gateway.scripts.runner import RedisClient, ScriptRunner


class _Owner(msgspec.Struct):
    user: str


@dataclass(frozen=True, slots=True)
class Retained:
    orders: int = 0
    coupons: int = 0

    def __add__(self, other: Retained) -> Retained:
        return Retained(self.orders + other.orders, self.coupons + other.coupons)


class WalletRetention:
    def __init__(
        self,
        runner: ScriptRunner,
        client: RedisClient,
        keyspace: KeySpace,
        retention_seconds: int,
        batch: int = 500,
    ) -> None:
        self.runner = runner
        self.client = client  # reads the due coupons' owners (a control client)
        self.keyspace = keyspace
        self.retention_seconds = retention_seconds
        self.batch = batch

    async def sweep(self, *, now: int, passes: int = 20) -> Retained:
        """Every bucket, up to ``passes`` bounded passes of each kind (the rest waits for the next sweep)."""
        removed = Retained()
        cutoff = now - self.retention_seconds
        for bucket in range(self.keyspace.wallet_buckets):
            wallet = self.keyspace.wallet_of_bucket(bucket)
            for _ in range(passes):
                keys = calls.RetainOrdersKeys.of(wallet)
                reply = await calls.retain_orders(
                    self.runner, keys, now=now, event_id=new_id(), cutoff=cutoff, limit=self.batch
                )
                removed += Retained(orders=int(reply[1]))
                if int(reply[2]) == 0:
                    break
            for _ in range(passes):
                coupons, more = await self.retain_coupons(wallet, now=now, cutoff=cutoff)
                removed += Retained(coupons=coupons)
                if not more:
                    break
        return removed

    async def retain_coupons(self, wallet: WalletKeys, *, now: int, cutoff: int) -> tuple[int, bool]:
        """One batch of the bucket's due coupons; (removed, whether a full batch was due)."""
        found = await self.client.zrangebyscore(wallet.finished, "-inf", cutoff, start=0, num=self.batch)
        due = [str(member) for member in found]
        if not due:
            return 0, False
        records = await self.client.hmget(wallet.coupons, due)
        by_owner: dict[str, list[str]] = {}
        for coupon_id, record in zip(due, records, strict=True):
            owner = msgspec.json.decode(record, type=_Owner).user if record else ""
            by_owner.setdefault(owner, []).append(coupon_id)
        replies = await asyncio.gather(
            *(
                calls.retain_coupons(
                    self.runner,
                    calls.RetainCouponsKeys.of(wallet, owner),
                    now=now,
                    event_id=new_id(),
                    cutoff=cutoff,
                    user_id=owner,
                    coupon_ids=json.dumps(ids),
                )
                for owner, ids in by_owner.items()
            )
        )
        return sum(int(reply[1]) for reply in replies), len(due) == self.batch
