"""The housekeeping lane's chores: sweeps that record what time made true (lapsed locks; ended activities'
partitions past their retention leaving Redis), and pruning of the ledger.

Each chore is a bounded pass due at its own interval. A fenced Redis postpones a sweep and an absent Postgres a
prune (logged); neither ever holds up the batches the lane reads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import asyncpg

from gateway import clock
from gateway.checkout.service import LockSweeper
from gateway.outcomes import DomainError
from gateway.settings import Settings
from worker.prune import prune_expired
from worker.retire import RETIRE_SECONDS, RetireSweep

log = logging.getLogger(__name__)
PRUNE_SECONDS = 60.0  # how often expired idempotency records are deleted from the ledger
DEFAULT_RETENTION = 30 * 86_400  # CLAIMGATE_RETENTION's default (product.md, "Retention")


def retention_seconds(settings: Settings) -> int:
    """How long after its end an activity's partition stays in Redis."""
    # TODO(merge): CLAIMGATE_RETENTION (settings.retention.seconds) lands with its own change; until then the
    # default. Read here only, so the merge replaces these lines.
    retention = getattr(settings, "retention", None)
    return int(getattr(retention, "seconds", DEFAULT_RETENTION))


@dataclass
class Housekeeping:
    settings: Settings
    pool: asyncpg.Pool
    locks: LockSweeper
    retire: RetireSweep
    locks_expired: int = 0
    idempotency_pruned: int = 0
    _swept_at: float = 0.0
    _pruned_at: float = 0.0
    _retired_at: float = 0.0

    async def run_due(self) -> None:
        """Every chore whose interval has passed, one bounded pass each."""
        now = time.monotonic()
        if now - self._swept_at > self.settings.worker.sweep_seconds:
            await self.sweep_locks()
        if now - self._pruned_at > PRUNE_SECONDS:
            await self.prune()
        if now - self._retired_at > RETIRE_SECONDS:
            await self.retire_activities()

    async def sweep_locks(self) -> None:
        """Mark lapsed checkout locks expired; a fenced Redis waits for the next pass."""
        self._swept_at = time.monotonic()
        try:
            self.locks_expired += await self.locks.sweep(now=int(clock.now()))
        except DomainError as exc:
            log.warning("lock sweep postponed: %s", exc.message)

    async def prune(self) -> None:
        """Delete the ledger's expired idempotency records (a bounded pass; the rest wait for the next)."""
        self._pruned_at = time.monotonic()
        self.idempotency_pruned += await prune_expired(self.pool)

    async def retire_activities(self) -> None:
        """Ended activities past their retention leave Redis (a bounded pass); a fenced Redis waits."""
        self._retired_at = time.monotonic()
        try:
            await self.retire.sweep(int(clock.now()))
        except DomainError as exc:
            log.warning("retire sweep postponed: %s", exc.message)
