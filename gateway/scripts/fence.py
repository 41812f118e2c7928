"""The fence of design.md: state-changing scripts wait while Redis's history is unchecked against the ledger.

Closed on start and whenever a connection reaches a Redis whose ``run_id`` this process has not checked (a
restart or a failover); opened by ``ledger_check`` once every partition's ``seq`` is at or above the ledger's
``partition_marks``. Also closed while this process's clock is further from Redis's than allowed (``clock``).
While closed, writes answer ``overloaded``.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.outcomes import DomainError, Outcome

FENCED_RETRY_AFTER = 1
LEDGER_PAUSED = "State changes are paused until Redis is checked against the ledger; retry shortly."
CLOCK_PAUSED = "State changes are paused: this gateway's clock is being corrected; retry shortly."


class Fence:
    def __init__(self, *, open_: bool = False) -> None:
        self._open = open_
        self.verified: frozenset[str] = frozenset()
        self.reason = "Redis not yet checked against the ledger"
        self.clock_problem = ""  # why this process's clock cannot be trusted now; "" when it can

    @property
    def is_open(self) -> bool:
        return self._open and not self.clock_problem

    @property
    def level(self) -> bool:
        """Redis found level with the ledger (whatever the clock says)."""
        return self._open

    def distrust_clock(self, problem: str) -> None:
        """Close for state changes while the clock is off (``""``: trusted again), whatever Redis's state."""
        self.clock_problem = problem

    def close(self, reason: str) -> None:
        self._open = False
        self.reason = reason

    def suspect(self, reason: str) -> None:
        """A Redis not yet checked: close at once if open; a fence already closed keeps the reason it has (say,
        partitions behind) until a check gives its verdict, so what readiness shows does not flicker."""
        if self._open:
            self.close(reason)

    def open(self, run_ids: Iterable[str]) -> None:
        """Redis, as these run ids, holds everything the ledger does."""
        self.verified = frozenset(run_ids)
        self._open = True
        self.reason = ""

    def trusts(self, run_id: str) -> bool:
        return run_id in self.verified

    @property
    def why_closed(self) -> str:
        return self.clock_problem or self.reason

    def check(self) -> None:
        """Refuse while closed. The answer names no internals (run ids, partitions, figures): those are the
        operations listener's and the log's."""
        if not self.is_open:
            raise DomainError(
                Outcome.OVERLOADED,
                CLOCK_PAUSED if self.clock_problem else LEDGER_PAUSED,
                retry_after=FENCED_RETRY_AFTER,
            )
