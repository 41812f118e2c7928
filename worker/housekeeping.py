"""The housekeeping lane's chores: sweeps that record what time made true (lapsed locks, then coupons past their
validity), the retention sweeps (the wallets' finished orders and final coupons; the code batches whose window
ended; ended activities' partitions), and pruning of the ledger.

Each chore is a bounded pass due at its own interval. A fenced Redis postpones a sweep and an absent Postgres a
prune (logged); neither ever holds up the batches the lane reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from gateway import clock
from gateway.checkout.retention import WalletRetention
from gateway.checkout.service import ExpirySweeper, LockSweeper
from gateway.codes.retention import CodeRetention
from gateway.keys import KeySpace
from gateway.outcomes import DomainError
from gateway.services import Clients
from gateway.settings import Settings
from worker.prune import prune_expired
from worker.retire import RETIRE_SECONDS, RetireSweep

log = logging.getLogger(__name__)
T = TypeVar("T")
PRUNE_SECONDS = 60.0  # how often expired idempotency records are deleted from the ledger
RETAIN_SECONDS = 60.0  # how often final coupons and finished orders past the retention leave Redis
CODE_RETENTION_SECONDS = 60.0  # how often code batches whose window ended the retention ago leave Redis


@dataclass
class Housekeeping:
    settings: Settings
    pool: asyncpg.Pool
    locks: LockSweeper
    expiry: ExpirySweeper
    retire: RetireSweep
    wallets: WalletRetention | None = None
    codes: CodeRetention | None = None
    locks_expired: int = 0
    coupons_expired: int = 0
    coupons_archived: int = 0
    orders_archived: int = 0
    idempotency_pruned: int = 0
    batches_retired: int = 0
    codes_retired: int = 0
    _swept_at: float = 0.0
    _pruned_at: float = 0.0
    _retained_at: float = 0.0
    _retired_at: float = 0.0
    _codes_retained_at: float = 0.0

    @classmethod
    def of(cls, settings: Settings, pool: asyncpg.Pool, redis: Clients, keyspace: KeySpace) -> Housekeeping:
        """Every chore, over the worker's clients, with the deployment's retention."""
        retention = settings.retention.seconds
        return cls(
            settings,
            pool,
            LockSweeper(redis.runner, keyspace),
            ExpirySweeper(redis.runner, keyspace),
            RetireSweep(pool, redis.runner, keyspace, retention),
            WalletRetention(redis.runner, redis.control, keyspace, retention),
            CodeRetention(redis.runner, pool, retention),
        )

    async def run_due(self) -> None:
        """Every chore whose interval has passed, one bounded pass each."""
        now = time.monotonic()
        if now - self._swept_at > self.settings.worker.sweep_seconds:
            await self.sweep_locks()
            await self.sweep_expired()  # after the locks: a lapsed lock's expiry is recorded first
        if now - self._pruned_at > PRUNE_SECONDS:
            await self.prune()
        if self.wallets is not None and now - self._retained_at > RETAIN_SECONDS:
            await self.retain_wallets()
        if now - self._retired_at > RETIRE_SECONDS:
            await self.retire_activities()
        if self.codes is not None and now - self._codes_retained_at > CODE_RETENTION_SECONDS:
            await self.retire_codes()

    async def sweep_locks(self) -> None:
        """Mark lapsed checkout locks expired; a fenced Redis waits for the next pass."""
        self._swept_at = time.monotonic()
        self.locks_expired += (
            await _unless_postponed("lock sweep", self.locks.sweep(now=int(clock.now()))) or 0
        )

    async def sweep_expired(self) -> None:
        """Record coupons past their validity (``expired``) and move final ones to the finished index; a fenced
        Redis waits for the next pass."""
        self._swept_at = time.monotonic()
        self.coupons_expired += (
            await _unless_postponed("expiry sweep", self.expiry.sweep(now=int(clock.now()))) or 0
        )

    async def prune(self) -> None:
        """Delete the ledger's expired idempotency records (a bounded pass; the rest wait for the next)."""
        self._pruned_at = time.monotonic()
        self.idempotency_pruned += await prune_expired(self.pool)

    async def retain_wallets(self) -> None:
        """Final coupons and finished orders past the retention leave Redis; a fenced Redis waits."""
        self._retained_at = time.monotonic()
        assert self.wallets is not None
        removed = await _unless_postponed("wallet retention", self.wallets.sweep(now=int(clock.now())))
        if removed is None:
            return
        self.coupons_archived += removed.coupons
        self.orders_archived += removed.orders

    async def retire_activities(self) -> None:
        """Ended activities past their retention leave Redis (a bounded pass); a fenced Redis waits."""
        self._retired_at = time.monotonic()
        await _unless_postponed("retire sweep", self.retire.sweep(int(clock.now())))

    async def retire_codes(self) -> None:
        """Code batches whose window ended the retention ago leave Redis, codes and records; a fenced Redis or an
        absent Postgres waits for the next pass, which finishes what this one left."""
        self._codes_retained_at = time.monotonic()
        assert self.codes is not None
        retired = await _unless_postponed("code retention", self.codes.sweep(now=int(clock.now())))
        if retired is None:
            return
        self.batches_retired += retired.batches
        self.codes_retired += retired.codes


# What postpones a chore's pass to its next turn (logged) instead of failing the lane: a fenced Redis (or one
# refusing), and a store away (Redis or Postgres unreachable, busy, shutting down).
POSTPONING = (DomainError, OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def _unless_postponed(what: str, chore: Awaitable[T]) -> T | None:
    """The pass's result, or None when it was postponed."""
    try:
        return await chore
    except POSTPONING as exc:
        log.warning("%s postponed: %s", what, exc.message if isinstance(exc, DomainError) else repr(exc))
        return None
