"""The soak's claims, made the gateway's own way without HTTP (``ClaimService.claim``: the ``claim`` script, then
``deliver``), from client processes of their own, many in flight; one claim in ``KEYED_EVERY`` carries an
Idempotency-Key, and its first answer comes back to be asked again after the sweeps."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.claim.service import ClaimService
from gateway.keys import KeySpace
from gateway.outcomes import Outcome
from gateway.scripts.fence import Fence
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import ScriptRunner, connect
from gateway.tokens import UserIdentity

KEYED_EVERY = 1000
CONCURRENCY = 64


@dataclass(frozen=True)
class Plan:
    """What one client process claims: ``per_activity`` claims in each of its activities, by users drawn in turn
    from ``users`` (distinct within an activity), at ``now``."""

    redis_url: str
    wallet_buckets: int
    code_buckets: int
    idempotency_ttl: int
    activities: list[tuple[int, str]]  # (the activity's place in the soak, its id)
    per_activity: int
    users: int
    now: int


@dataclass
class Keyed:
    """A keyed claim: who made it, with which key, and its first answer."""

    activity_id: str
    user: str
    key: str
    answer: str


@dataclass
class Done:
    claims: int = 0
    keyed: list[Keyed] = field(default_factory=list)


def user_of(place: int, n: int, plan: Plan) -> str:
    return f"s{(place * plan.per_activity + n) % plan.users:07d}"


async def _claim_all(plan: Plan) -> Done:
    client = await connect(plan.redis_url, max_connections=CONCURRENCY)
    done = Done()
    try:
        runner = ScriptRunner(client, load_scripts(), Fence(open_=True), max_in_flight=CONCURRENCY)
        service = ClaimService(runner, KeySpace(plan.wallet_buckets, plan.code_buckets), plan.idempotency_ttl)
        work = iter(
            (place, activity_id, n)
            for place, activity_id in plan.activities
            for n in range(plan.per_activity)
        )

        async def lane() -> None:
            for place, activity_id, n in work:
                user = user_of(place, n, plan)
                key = f"soak-{place}-{n}" if n % KEYED_EVERY == 0 else None
                result = await service.claim(
                    activity_id, UserIdentity(user, f"d-{user}"), now=plan.now, idempotency_key=key
                )
                if result.outcome is not Outcome.OK:
                    raise RuntimeError(f"claim {activity_id} {user}: {result.outcome}")
                done.claims += 1
                if key is not None:
                    done.keyed.append(Keyed(activity_id, user, key, result.answer))

        await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))
    finally:
        await client.aclose()
    return done


def claim_process(plan: Plan) -> Done:
    """In a process of its own (spawned): every claim of the plan; a refusal ends it with an error."""
    import uvloop

    return uvloop.run(_claim_all(plan))
