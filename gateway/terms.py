"""Template terms for checkout, cached in each process: a template never changes once made, so each is read
from Postgres once per process and kept (the claim path never reads them)."""

from __future__ import annotations

import asyncpg

from gateway import store
from gateway.outcomes import DomainError, Outcome
from gateway.quote import Terms


class TermsCache:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._terms: dict[str, Terms] = {}

    async def of(self, template_ids: set[str]) -> dict[str, Terms]:
        missing = [t for t in template_ids if t not in self._terms]
        if missing:
            try:
                found = await store.templates_by_id(self.pool, missing)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                raise DomainError(
                    Outcome.OVERLOADED, "Template terms are unreadable for now; retry shortly.", retry_after=1
                ) from None
            for template_id, template in found.items():
                self._terms[template_id] = Terms.of(template)
        return {t: self._terms[t] for t in template_ids if t in self._terms}
