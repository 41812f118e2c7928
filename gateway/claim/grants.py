"""Grants: an operator pushes an activity's pack to a list of users, each through the claim script in grant
mode (window and eligibility skipped; pause, end, stock, per-user limit and blocklist hold). A late grant to an
activity whose partition was retired brings it back from the ledger first (``gateway/catalog/retirement.py``).

Every user's result is its own, a shed or fenced user included, so a call answers 200 with what happened to each.

A keyed call (``grant_call``) keeps each user's final result as it is judged and closes its record, the answer a
retry replays whole, only once every user has one. A temporary result (``overloaded``: shed, fenced, Redis busy,
refusing writes or unreachable, the queue full) or an unknown one (a reply lost: the claim may have run) is never
kept: a retry with the same key judges exactly those users again and replays the others' results. Nobody is
granted twice: each user's claim carries the call's key (the claim script's per-user record), so a claim that ran
while its reply was lost answers the retry with that same claim.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Annotated

import msgspec
from msgspec import Meta

from gateway import clock
from gateway.catalog.campaign import UserId, invalid
from gateway.catalog.retirement import REVIVE_ATTEMPTS, ActivityRetired, Reviver
from gateway.claim.blocklist import Blocklist
from gateway.claim.service import ClaimResult, ClaimService
from gateway.events import ClaimAnswer, GrantResult
from gateway.ids import new_id
from gateway.keys import KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.calls import claim as calls
from gateway.scripts.runner import ScriptRunner
from gateway.tokens import UserIdentity

log = logging.getLogger(__name__)
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


def is_final(result: GrantResult) -> bool:
    """A result a keyed retry replays: a grant or a refusal for good, not ``overloaded`` (temporary or unknown)."""
    return result.error != Outcome.OVERLOADED


def answer_of(parts: list[bytes]) -> bytes:
    """``{"results": [...]}`` from each user's result JSON, as ``msgspec`` encodes ``GrantAnswer`` (and as the
    ``grant_call`` script joins them)."""
    return b'{"results":[' + b",".join(parts) + b"]}"


class GrantService:
    def __init__(
        self,
        runner: ScriptRunner,
        keyspace: KeySpace,
        claims: ClaimService,
        blocklist: Blocklist,
        idempotency_ttl: int,
        reviver: Reviver,
    ) -> None:
        self.runner = runner
        self.keyspace = keyspace
        self.claims = claims
        self.blocklist = blocklist
        self.idempotency_ttl = idempotency_ttl
        self.reviver = reviver  # brings a retired activity back before its late grants
        self._in_flight = asyncio.Semaphore(GRANTS_IN_FLIGHT)

    async def grant(self, activity_id: str, body: GrantBody, operator: str, key: str | None) -> bytes:
        """The call's answer, ``{"results": [...]}``, as JSON (once the call is closed, a keyed retry gets these
        very bytes)."""
        now = int(clock.now())
        digest = body.digest()
        users = body.user_ids
        if key is None:
            judged = await self._judge(activity_id, users, operator, None, digest, now)
            return answer_of([msgspec.json.encode(result) for result in judged])
        call = _GrantCall(self, activity_id, operator, key, digest, now)
        opened = await call.open()
        if isinstance(opened, bytes):
            return opened
        kept = opened  # users with a final result from an earlier attempt: replayed, not judged again
        todo = [place for place in range(len(users)) if place not in kept]
        judged = await self._judge(activity_id, [users[place] for place in todo], operator, key, digest, now)
        fresh = {place: msgspec.json.encode(result) for place, result in zip(todo, judged, strict=True)}
        final = {place: fresh[place] for place, result in zip(todo, judged, strict=True) if is_final(result)}
        parts = [kept[place] if place in kept else fresh[place] for place in range(len(users))]
        if final or not todo:
            closed = await call.settle(len(users), final)
            if closed is not None:
                return closed
        return answer_of(parts)

    async def _judge(
        self, activity_id: str, users: list[str], operator: str, key: str | None, digest: str, now: int
    ) -> list[GrantResult]:
        return list(
            await asyncio.gather(
                *(self._one(activity_id, user, operator, key, digest, now) for user in users)
            )
        )

    async def _claim(
        self, activity_id: str, user_id: str, operator: str, key: str | None, digest: str, now: int
    ) -> ClaimResult:
        """The user's claim in grant mode; an activity found retired is brought back first, then claimed again."""
        revived = 0
        while True:
            try:
                return await self.claims.claim(
                    activity_id,
                    UserIdentity(user_id, ""),
                    now=now,
                    idempotency_key=key,
                    blocked=self.blocklist.blocks(user_id, ""),
                    mode="grant",
                    operator=operator,
                    body=digest,
                )
            except ActivityRetired:
                if revived == REVIVE_ATTEMPTS:  # retired again each time, right after its revival: rare
                    raise DomainError(Outcome.OVERLOADED, "The activity is being brought back.") from None
                revived += 1
                if await self.reviver.revive(activity_id, operator, now) is Outcome.ENDED:
                    raise DomainError(Outcome.ENDED) from None  # ended by an operator: refused as before

    async def _one(
        self, activity_id: str, user_id: str, operator: str, key: str | None, digest: str, now: int
    ) -> GrantResult:
        async with self._in_flight:
            try:
                result = await self._claim(activity_id, user_id, operator, key, digest, now)
            except DomainError as refused:
                return GrantResult(user_id, error=refused.outcome.value)
            except Exception:
                # A bug, not a refusal: logged whole. The user's result is unknown, so it is not kept: a keyed
                # retry judges the user again (and the per-user record answers it if the claim did run).
                log.exception("grant to %s in %s failed", user_id, activity_id)
                return GrantResult(user_id, error=Outcome.OVERLOADED.value)
        return GrantResult(user_id, claim_id=msgspec.json.decode(result.answer, type=ClaimAnswer).claim_id)


class _GrantCall:
    """A keyed grant call's record, through the ``grant_call`` script."""

    def __init__(
        self, service: GrantService, activity_id: str, operator: str, key: str, digest: str, now: int
    ) -> None:
        act = service.keyspace.activity(activity_id)
        self.runner = service.runner
        self.keys = calls.GrantCallKeys.of(act, operator, key)
        self.activity_id = activity_id
        self.operator = operator
        self.digest = digest
        self.ttl = service.idempotency_ttl
        self.now = now

    async def _run(self, step: calls.GrantCallStep, users: int | None = None, results: str = "") -> list[str]:
        reply: list[str] = await calls.grant_call(
            self.runner,
            self.keys,
            now=self.now,
            event_id=new_id(),
            operator=self.operator,
            activity_id=self.activity_id,
            body_hash=self.digest,
            ttl=self.ttl,
            step=step,
            users=users,
            results=results,
        )
        if reply[0] == Outcome.IDEMPOTENCY_CONFLICT:
            raise DomainError(Outcome.IDEMPOTENCY_CONFLICT)
        return reply

    async def open(self) -> bytes | dict[int, bytes]:
        """The closed call's answer to replay, or the final results kept so far by place (0-based)."""
        reply = await self._run("open")
        if reply[0] == Outcome.REPLAY:
            return reply[1].encode()
        kept: dict[int, bytes] = {}
        for line in reply[1].splitlines() if reply[0] == Outcome.PENDING else ():
            place, result = line.split(" ", 1)
            kept[int(place) - 1] = result.encode()
        return kept

    async def settle(self, users: int, final: dict[int, bytes]) -> bytes | None:
        """Keep these final results; the call's answer once every user has one (None while some have not).

        A failure here (Redis unreachable, the fence closed) loses nothing the caller must know: the users were
        judged and their answer stands; the record stays open and a retry judges those users again (their claims
        replay through the per-user records)."""
        lines = "\n".join(f"{place + 1} {result.decode()}" for place, result in sorted(final.items()))
        try:
            reply = await self._run("settle", users, lines)
        except DomainError as failed:
            if failed.outcome is Outcome.IDEMPOTENCY_CONFLICT:  # the record expired and its key was reused
                log.warning("grant call %s: its record now holds another body", self.keys.record)
            else:
                log.warning("grant call %s: results not kept (%s)", self.keys.record, failed.message)
            return None
        if reply[0] in (Outcome.OK, Outcome.REPLAY):
            return reply[1].encode()
        return None
