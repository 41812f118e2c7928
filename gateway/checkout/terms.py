"""Template terms for checkout, cached in each process: a template never changes once made, so each is read
from Postgres once per process and kept (the claim path never reads them)."""

from __future__ import annotations

import asyncpg

from gateway.catalog import store
from gateway.checkout.quote import Terms


class TermsCache:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._terms: dict[str, Terms] = {}

    async def of(self, template_ids: set[str]) -> dict[str, Terms]:
        missing = [t for t in template_ids if t not in self._terms]
        if missing:
            for template_id, template in (await store.templates_by_id(self.pool, missing)).items():
                self._terms[template_id] = Terms.of(template)
        return {t: self._terms[t] for t in template_ids if t in self._terms}
