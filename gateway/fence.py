"""The fence of design.md: state-changing scripts wait while Redis's history is unchecked against the ledger.

Closed on start and whenever a connection reaches a Redis whose ``run_id`` this process has not checked (a
restart or a failover); opened by ``ledger_check`` once every partition's ``seq`` is at or above the ledger's
``partition_marks``. While closed, writes answer ``overloaded``.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.outcomes import DomainError, Outcome

FENCED_RETRY_AFTER = 1


class Fence:
    def __init__(self, *, open_: bool = False) -> None:
        self._open = open_
        self.verified: frozenset[str] = frozenset()
        self.reason = "Redis not yet checked against the ledger"

    @property
    def is_open(self) -> bool:
        return self._open

    def close(self, reason: str) -> None:
        self._open = False
        self.reason = reason

    def open(self, run_ids: Iterable[str]) -> None:
        """Redis, as these run ids, holds everything the ledger does."""
        self.verified = frozenset(run_ids)
        self._open = True
        self.reason = ""

    def trusts(self, run_id: str) -> bool:
        return run_id in self.verified

    def check(self) -> None:
        if not self._open:
            raise DomainError(
                Outcome.OVERLOADED,
                f"State changes are paused: {self.reason}.",
                retry_after=FENCED_RETRY_AFTER,
            )
