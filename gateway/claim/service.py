"""Claim and deliver: the typed calls over the ``claim`` and ``deliver`` scripts."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from gateway.catalog.retirement import ActivityRetired, retired_reply
from gateway.events import ClaimAnswer
from gateway.ids import new_id
from gateway.keys import KeySpace
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.calls import claim as calls
from gateway.scripts.runner import ScriptRunner
from gateway.tokens import UserIdentity

NO_BODY_HASH = "0" * 32
log = logging.getLogger(__name__)


def body_hash(channel: str) -> str:
    """The request's identity for idempotency: the decoded body, so formatting differences don't conflict."""
    return hashlib.sha256(b"claim\x00" + channel.encode()).hexdigest()[:32]


def delivered_event_id(answer: str) -> str:
    """The ``delivered`` event's id, one per claim: a deliver repeated after a restore rebuilt the wallet without
    the claim's coupons records the very event the ledger may already hold, not a second one for version 1."""
    return msgspec.json.decode(answer, type=ClaimAnswer).claim_id + ".d"


@functools.lru_cache(maxsize=4096)
def unkeyed_claim_keys(activity_id: str) -> calls.ClaimKeys:
    """The KEYS of a claim without an Idempotency-Key: the same for every such claim of the activity, so built
    once (the hot path's keys cost nothing on a repeat)."""
    return calls.ClaimKeys.of(KeySpace.activity(activity_id))


@dataclass(frozen=True, slots=True)
class ClaimResult:
    outcome: Outcome  # ok or replay
    answer: str  # the JSON body, as the script built it (encoded once)


class ClaimService:
    def __init__(
        self,
        runner: ScriptRunner,
        keyspace: KeySpace,
        idempotency_ttl: int,
        shed: Callable[[], None] | None = None,
    ) -> None:
        self.runner = runner
        self.keyspace = keyspace
        self.idempotency_ttl = idempotency_ttl
        self.shed = shed  # raises overloaded while the gateway sheds load

    async def claim(
        self,
        activity_id: str,
        who: UserIdentity,
        *,
        now: int,
        channel: str = "",
        idempotency_key: str | None = None,
        blocked: bool = False,
        mode: calls.ClaimMode = "claim",
        operator: str = "",
        body: str | None = None,
    ) -> ClaimResult:
        """Take one pack (script ``claim``), then put its coupons in the wallet (script ``deliver``).

        ``body`` is the request's identity for idempotency when it is not just the channel (a grant call's).
        """
        if self.shed is not None:
            self.shed()
        if idempotency_key:
            act = self.keyspace.activity(activity_id)
            # A claim's key is the user's; a grant's key is the operator's, per user granted.
            scope = f"{operator}\x1f{who.user_id}" if mode == "grant" else who.user_id
            keys = calls.ClaimKeys.of(act, act.idempotency(scope, idempotency_key))
        else:
            keys = unkeyed_claim_keys(activity_id)
        reply = await calls.claim(
            self.runner,
            keys,
            now=now,
            activity_id=activity_id,
            user_id=who.user_id,
            device_id="" if mode == "grant" else who.device_id,
            channel=channel,
            blocked=blocked,
            idem_key=idempotency_key or "",
            body_hash=(body or body_hash(channel)) if idempotency_key else NO_BODY_HASH,
            idem_ttl=self.idempotency_ttl,
            claim_id=new_id(),
            event_id=new_id(),
            reg=who.reg,
            orders=who.orders,
            tags=who.tags,
            mode=mode,
            operator=operator,
        )
        outcome = Outcome(reply[0])
        if outcome not in (Outcome.OK, Outcome.REPLAY):
            raise ActivityRetired() if retired_reply(reply) else DomainError(outcome)
        answer: str = reply[1]
        await self.deliver_or_defer(who.user_id, activity_id, answer, now=now)
        return ClaimResult(outcome, answer)

    async def deliver_or_defer(self, user_id: str, activity_id: str, answer: str, *, now: int) -> None:
        """``deliver`` after the pack was taken: whatever fails here (fenced, Redis busy or unreachable, a lost
        reply, a bug) leaves the claim standing and answered. The claim is in the ledger's stream, and the worker
        delivers it (the same script, the same ids) when it persists it; a replay delivers it again too."""
        try:
            await self.deliver(user_id, activity_id, answer, now=now)
        except DomainError as exc:
            log.warning("deliver deferred to the worker for a claim in %s: %s", activity_id, exc.message)
        except Exception:
            log.exception("deliver failed, deferred to the worker, for a claim in %s", activity_id)

    async def deliver(self, user_id: str, activity_id: str, answer: str, *, now: int) -> Outcome:
        """Create a claim's coupons in the owner's wallet; a repeat changes nothing."""
        wallet = self.keyspace.wallet(user_id)
        reply = await calls.deliver(
            self.runner,
            calls.DeliverKeys.of(wallet, user_id),
            now=now,
            event_id=delivered_event_id(answer),
            user_id=user_id,
            activity_id=activity_id,
            answer=answer,
        )
        return Outcome(reply[0])
