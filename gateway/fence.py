"""The fence of design.md: state-changing scripts wait while Redis's history is unchecked against the ledger.

Closed on start and whenever Redis's ``run_id`` changes (a restart or a failover); opened by whoever checks
every partition's ``seq`` against the ledger's ``partition_marks``. While closed, writes answer ``overloaded``.
"""

from __future__ import annotations

from gateway.outcomes import DomainError, Outcome

FENCED_RETRY_AFTER = 1


class Fence:
    def __init__(self, *, open_: bool = False) -> None:
        self._open = open_
        self.run_id: str | None = None
        self.reason = "Redis not yet checked against the ledger"

    @property
    def is_open(self) -> bool:
        return self._open

    def close(self, reason: str) -> None:
        self._open = False
        self.reason = reason

    def open(self, run_id: str) -> None:
        self.run_id = run_id
        self._open = True
        self.reason = ""

    def check(self) -> None:
        if not self._open:
            raise DomainError(
                Outcome.OVERLOADED,
                f"State changes are paused: {self.reason}.",
                retry_after=FENCED_RETRY_AFTER,
            )
