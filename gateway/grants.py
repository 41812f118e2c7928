"""Grants: an operator pushes an activity's pack to a list of users, each through the claim script in grant
mode (window and eligibility skipped; pause, end, stock, per-user limit and blocklist hold).

Every user's result is its own, a shed or fenced user included, so a call that granted anyone answers 200
with what happened to each. A keyed call stores its whole answer; a retry replays it."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Annotated

import msgspec
from msgspec import Meta

from gateway.blocklist import Blocklist
from gateway.campaign import UserId, invalid
from gateway.claims import ClaimService
from gateway.ids import new_id
from gateway.keys import KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.redis_client import ScriptRunner
from gateway.tokens import UserIdentity

MAX_GRANT_USERS = 10_000
GRANTS_IN_FLIGHT = (
    32  # per process, below the runner's bound: a large grant queues here rather than being shed
)


class GrantBody(msgspec.Struct, forbid_unknown_fields=True):
    user_ids: Annotated[list[UserId], Meta(min_length=1, max_length=MAX_GRANT_USERS)]

    def check(self) -> None:
        if len(set(self.user_ids)) != len(self.user_ids):
            raise invalid("user_ids", "each user may appear once")

    def digest(self) -> str:
        return hashlib.sha256("\x1f".join(self.user_ids).encode()).hexdigest()[:32]


class GrantResult(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    user_id: str
    claim_id: str | None = None
    error: str | None = None


class GrantAnswer(msgspec.Struct, forbid_unknown_fields=True):
    results: list[GrantResult]


class _ClaimId(msgspec.Struct):
    claim_id: str


class GrantService:
    def __init__(
        self,
        runner: ScriptRunner,
        keyspace: KeySpace,
        claims: ClaimService,
        blocklist: Blocklist,
        idempotency_ttl: int,
    ) -> None:
        self.runner = runner
        self.keyspace = keyspace
        self.claims = claims
        self.blocklist = blocklist
        self.idempotency_ttl = idempotency_ttl
        self._in_flight = asyncio.Semaphore(GRANTS_IN_FLIGHT)

    async def grant(self, activity_id: str, body: GrantBody, operator: str, key: str | None) -> bytes:
        """The call's answer, ``{"results": [...]}``, as JSON (a keyed retry gets these very bytes)."""
        now = int(time.time())
        digest = body.digest()
        if key is not None:
            replayed = await self._call_record(activity_id, operator, key, digest, now, "open")
            if replayed is not None:
                return replayed
        results = await asyncio.gather(
            *(self._one(activity_id, user, operator, key, digest, now) for user in body.user_ids)
        )
        answer = msgspec.json.encode(GrantAnswer(list(results)))
        if key is not None:
            await self._call_record(activity_id, operator, key, digest, now, "close", answer)
        return answer

    async def _one(
        self, activity_id: str, user_id: str, operator: str, key: str | None, digest: str, now: int
    ) -> GrantResult:
        async with self._in_flight:
            try:
                result = await self.claims.claim(
                    activity_id,
                    UserIdentity(user_id, ""),
                    now=now,
                    idempotency_key=key,
                    blocked=self.blocklist.blocks(user_id, ""),
                    mode="grant",
                    operator=operator,
                    body=digest,
                )
            except DomainError as refused:
                return GrantResult(user_id, error=refused.outcome.value)
        return GrantResult(user_id, claim_id=msgspec.json.decode(result.answer, type=_ClaimId).claim_id)

    async def _call_record(
        self, activity_id: str, operator: str, key: str, digest: str, now: int, step: str, answer: bytes = b""
    ) -> bytes | None:
        act = self.keyspace.activity(activity_id)
        record = act.idempotency(f"grant-call\x1f{operator}", key)
        reply = await self.runner.run(
            "grant_call",
            [record, act.seq, act.events],
            [now, new_id(), operator, activity_id, digest, self.idempotency_ttl, step, answer],
        )
        if reply[0] == Outcome.IDEMPOTENCY_CONFLICT:
            raise DomainError(Outcome.IDEMPOTENCY_CONFLICT)
        if reply[0] == Outcome.REPLAY:
            return str(reply[1]).encode()
        return None
