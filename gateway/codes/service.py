"""One-time codes: making a batch (Postgres first, then its packs from stock, then the codes into their code
buckets) and redeeming one (failed-attempt gates, the code's own script, then the wallet)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.claim.service import NO_BODY_HASH, ClaimService
from gateway.codes import format as code_format
from gateway.codes.batches import batch_record, code_batch, put_codes, void_batch
from gateway.ids import new_id
from gateway.keys import KeySpace, WalletKeys
from gateway.outcomes import DomainError, Outcome
from gateway.scripts.calls import codes as calls
from gateway.scripts.runner import ScriptRunner
from gateway.tokens import UserIdentity

FAILED_ATTEMPTS = 10  # product.md: invalid_code answers allowed per user and per device ...
FAILED_WINDOW_SECONDS = 3600  # ... within a rolling hour
ENDED_BATCH = "The activity has ended: codes made for it could never be redeemed."
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    codes: list[str]  # as shown: XXXX-XXXX-XXXXX (the only time they exist in plain)


@dataclass(frozen=True, slots=True)
class Redeemed:
    answer: str  # the claim-shaped answer JSON, encoded once by the script


@dataclass(frozen=True, slots=True)
class Gate:
    """One failed-attempt counter (a user's or a device's) and the idempotency record beside it, in ``wallet``."""

    wallet: WalletKeys
    keys: calls.CodeGateKeys

    def count(
        self, runner: ScriptRunner, now: int, attempt: str, idempotency_key: str, digest: str
    ) -> Coroutine[Any, Any, list[Any]]:
        """Count ``attempt`` in this gate (``code_gate``)."""
        return calls.code_gate(
            runner,
            self.keys,
            now=now,
            attempt_id=attempt,
            limit=FAILED_ATTEMPTS,
            window=FAILED_WINDOW_SECONDS,
            idem_key=idempotency_key,
            body_hash=digest,
        )


@dataclass(frozen=True, slots=True)
class Kept:
    """A keyed success's answer, kept in the user's gate for the key's replays."""

    key: str
    digest: str
    answer: str


def body_hash(hash_key: bytes, typed: str) -> str:
    """A redeem's identity for its Idempotency-Key: the code in canonical form when it is one (else as typed,
    without case, spaces or dashes), keyed like the codes themselves, so no unkeyed trace of a code is kept."""
    typed = code_format.cleaned(typed)
    return code_format.code_hash(hash_key, "body\x00" + (code_format.canonical(typed) or typed))[:32]


class CodeService:
    def __init__(
        self,
        runner: ScriptRunner,
        keyspace: KeySpace,
        pool: asyncpg.Pool,
        claims: ClaimService,
        hash_key: bytes,
        idempotency_ttl: int,
    ) -> None:
        self.runner = runner
        self.keyspace = keyspace
        self.pool = pool
        self.claims = claims
        self.hash_key = hash_key
        self.idempotency_ttl = idempotency_ttl
        self._settling: set[asyncio.Future[list[None]]] = set()  # give-backs under way, kept from the GC

    # -- batches --------------------------------------------------------------------------------------------

    async def make_batch(
        self, activity_id: str, hot: dict[str, str], count: int, operator: str, *, now: int
    ) -> Batch:
        """``hot``: the activity's config as Redis holds it (the authority for its window and pack now). An
        activity ended, or past its ``ends_at``, is state_conflict: the codes could never be redeemed. Judged here
        from ``hot`` first, so nothing is made or recorded for it; ``code_batch`` judges it again, atomically."""
        if hot["status"] == "ended" or now >= int(hot["ends_at"]):
            raise DomainError(Outcome.STATE_CONFLICT, ENDED_BATCH)
        plain: set[str] = set()
        while len(plain) < count:
            plain.add(code_format.new_code())
        codes = sorted(plain)
        hashes = [code_format.code_hash(self.hash_key, code) for code in codes]
        batch_id = new_id()
        starts_at, ends_at, pack = int(hot["starts_at"]), int(hot["ends_at"]), hot["pack"]
        await self._record(batch_id, activity_id, count, (starts_at, ends_at), pack, hashes, operator, now)
        reply = await code_batch(
            self.runner, self.keyspace, activity_id, batch_id, count, "reserve", operator=operator, now=now
        )
        if reply[0] not in (Outcome.OK, Outcome.REPLAY):
            await self._set_state(batch_id, "void")
            if reply[0] == Outcome.STATE_CONFLICT:
                raise DomainError(
                    Outcome.STATE_CONFLICT,
                    "The activity has ended (its codes could never be redeemed), or the batch is larger than "
                    "the stock left.",
                )
            raise DomainError(Outcome(reply[0]))
        batch = batch_record(activity_id, starts_at, ends_at, pack)
        await self.put_codes(batch_id, batch, hashes, now=now)
        if not await self._set_ready(batch_id):
            # Reconcile voided the batch meanwhile (it outlived its grace): its codes must not stay redeemable,
            # and its packs go back (a replay if reconcile gave them back already). Nobody has seen the codes.
            await void_batch(
                self.runner, self.keyspace, activity_id, batch_id, count, hashes, operator=operator, now=now
            )
            raise DomainError(Outcome.STATE_CONFLICT, "The batch was voided while it was being made.")
        return Batch(batch_id, [code_format.shown(code) for code in codes])

    async def put_codes(
        self, batch_id: str, batch: str, hashes: list[str], *, now: int, drop: bool = False
    ) -> int:
        """Write (or drop) a batch's codes in their buckets; idempotent, so a repair can run it again."""
        return await put_codes(self.runner, self.keyspace, batch_id, batch, hashes, now=now, drop=drop)

    async def _record(
        self,
        batch_id: str,
        activity_id: str,
        count: int,
        window: tuple[int, int],
        pack: str,
        hashes: list[str],
        operator: str,
        now: int,
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO code_batches (batch_id, activity_id, count, starts_at, ends_at, pack, state,"
                " created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, 'recorded', $7, $8)",
                batch_id,
                activity_id,
                count,
                *window,
                pack,
                operator,
                now,
            )
            await conn.copy_records_to_table(
                "codes",
                records=[(h, batch_id, self.keyspace.code(h).tag) for h in hashes],
                columns=["code_hash", "batch_id", "partition"],
            )

    async def _set_state(self, batch_id: str, state: str) -> None:
        await self.pool.execute("UPDATE code_batches SET state = $2 WHERE batch_id = $1", batch_id, state)

    async def _set_ready(self, batch_id: str) -> bool:
        """Recorded -> ready; False when the batch is no longer recorded (reconcile voided it)."""
        done = await self.pool.execute(
            "UPDATE code_batches SET state = 'ready' WHERE batch_id = $1 AND state = 'recorded'", batch_id
        )
        return str(done) == "UPDATE 1"

    # -- redeeming ------------------------------------------------------------------------------------------

    async def redeem(
        self, who: UserIdentity, typed: str, *, now: int, idempotency_key: str | None, blocked: bool
    ) -> Redeemed:
        """Count the attempt against the user's and the device's failed-attempt limits, judge the code, deliver
        its pack. The attempt stays counted only when the code was judged ``invalid_code``: every other end (a
        success, another refusal, a Redis error, the fence, a timeout, a cancelled request, a bug) gives it back,
        so failures that are not the caller's never lock them out."""
        self.runner.fence.check()  # fenced: refused before any gate (no attempt to give back, nothing to log)
        attempt = new_id()
        digest = body_hash(self.hash_key, typed) if idempotency_key else NO_BODY_HASH
        user_wallet = self.keyspace.wallet(who.user_id)
        device_wallet = self.keyspace.wallet(who.device_id)
        user_fails = user_wallet.failed_codes_of_user(who.user_id)
        user_idem = (
            user_wallet.idempotency(who.user_id, idempotency_key)
            if idempotency_key
            else user_wallet.no_idempotency
        )
        device_fails = device_wallet.failed_codes_of_device(who.device_id)
        user_gate = Gate(user_wallet, calls.CodeGateKeys(user_fails, user_idem))
        device_gate = Gate(device_wallet, calls.CodeGateKeys(device_fails, device_wallet.no_idempotency))
        holding = [user_gate, device_gate]  # the gates that hold (or may hold) this attempt
        judged_invalid = False
        kept: Kept | None = None  # a keyed success's answer, for its replays
        try:
            gate_replies = await asyncio.gather(
                user_gate.count(self.runner, now, attempt, idempotency_key or "", digest),
                device_gate.count(self.runner, now, attempt, "", digest),
                return_exceptions=True,
            )
            # A gate that answered anything but ok counted nothing; one that raised may have counted.
            holding = [
                gate
                for gate, reply in zip((user_gate, device_gate), gate_replies, strict=True)
                if not isinstance(reply, list) or reply[0] == Outcome.OK
            ]
            user_reply, device_reply = (_gate_reply(reply) for reply in gate_replies)
            user_outcome, device_outcome = Outcome(user_reply[0]), Outcome(device_reply[0])
            if user_outcome is not Outcome.OK or device_outcome is not Outcome.OK:
                limited = [int(r[1]) for r in (user_reply, device_reply) if r[0] == Outcome.RATE_LIMITED]
                if limited:
                    raise DomainError(Outcome.RATE_LIMITED, retry_after=max(limited))
                if user_outcome is Outcome.REPLAY:
                    return Redeemed(user_reply[1])
                raise DomainError(user_outcome)

            code = code_format.canonical(typed)
            if code is None:
                judged_invalid = True
                raise DomainError(Outcome.INVALID_CODE)  # a typo: counted, never reaches Redis
            code_hash = code_format.code_hash(self.hash_key, code)
            reply = await calls.redeem_code(
                self.runner,
                calls.RedeemCodeKeys.of(self.keyspace.code(code_hash)),
                now=now,
                event_id=new_id(),
                code_hash=code_hash,
                user_id=who.user_id,
                device_id=who.device_id,
                blocked=blocked,
                claim_id=new_id(),
            )
            outcome = Outcome(reply[0])
            if outcome is Outcome.INVALID_CODE:
                judged_invalid = True
                raise DomainError(outcome)
            if outcome not in (Outcome.OK, Outcome.REPLAY):
                raise DomainError(outcome)
            if idempotency_key:
                kept = Kept(idempotency_key, digest, reply[1])
            await self.claims.deliver_or_defer(who.user_id, reply[2], reply[1], now=now)
            return Redeemed(reply[1])
        finally:
            if holding and not judged_invalid:
                await self._give_back(holding, user_gate, attempt, now=now, kept=kept)

    async def _give_back(
        self, gates: list[Gate], user_gate: Gate, attempt: str, *, now: int, kept: Kept | None
    ) -> None:
        """Take the attempt back from ``gates`` (and keep a keyed success's answer in the user's). Best effort:
        a failure is logged, and the attempt then counts until its window ends. Runs to its end even when the
        request is cancelled meanwhile."""
        settles = asyncio.ensure_future(
            asyncio.gather(
                *(
                    self._settle(gate, attempt, now=now, kept=kept if gate is user_gate else None)
                    for gate in gates
                )
            )
        )
        self._settling.add(settles)
        settles.add_done_callback(self._settling.discard)
        await asyncio.shield(settles)

    async def _settle(self, gate: Gate, attempt: str, *, now: int, kept: Kept | None) -> None:
        """``code_settle`` on one gate; a failure is logged, never raised (the answer stands either way)."""
        key, digest, answer = (kept.key, kept.digest, kept.answer) if kept else ("", "", "")
        try:
            await calls.code_settle(
                self.runner,
                calls.CodeSettleKeys.of(gate.keys, gate.wallet),
                now=now,
                event_id=new_id(),
                attempt_id=attempt,
                idem_key=key,
                body_hash=digest,
                idem_ttl=self.idempotency_ttl,
                answer=answer,
            )
        except DomainError as exc:
            log.warning(
                "code attempt %s not given back in %s, it counts until its window ends: %s",
                attempt,
                gate.keys.fails,
                exc.message,
            )
        except Exception:
            log.exception(
                "code attempt %s not given back in %s, it counts until its window ends",
                attempt,
                gate.keys.fails,
            )


def _gate_reply(reply: list[Any] | BaseException) -> list[Any]:
    """A gate's reply, or its exception raised (once the gates that may have counted are known)."""
    if isinstance(reply, BaseException):
        raise reply
    return reply
