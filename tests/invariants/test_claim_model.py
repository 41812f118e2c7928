"""The claim script against a plain model of the contract (claim_model.py), as a Hypothesis state machine.

Each example starts from an empty Valkey (FLUSHALL on the session server; Postgres is not touched), mirrors a
few activities with random configs through the real put_activity script (the admin service's hot_config), then
claims and grants through the real ClaimService, which builds the claim script's KEYS and ARGV and runs
lua/claim.lua. Users come from a small set with random token facts, devices are shared, the blocklist verdict,
channel and Idempotency-Key vary per call, and a simulated clock jumps around and onto the windows' edges.
Every answer is compared with the model's, and after every step the activity's whole Redis partition is
compared with the model: stock left, taken, per-user and per-device counts, kept answers, events; refusals
and replays change nothing.

The scripts are asyncio; Hypothesis's state machines are synchronous. The machine runs in the test's thread and
sends each call to its own event loop on a background thread, with its own client and ScriptRunner.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gateway.catalog.campaign import Activity, Eligibility, PackItem, Template, hot_config
from gateway.claim.grants import GrantBody
from gateway.claim.service import ClaimService
from gateway.devstack.valkey import ValkeyServer
from gateway.ids import new_id
from gateway.keys import KeySpace
from gateway.outcomes import DomainError
from gateway.scripts.fence import Fence
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import RedisClient, ScriptRunner, connect
from gateway.settings import Settings, load_settings
from gateway.tokens import UserIdentity
from tests.conftest import settings_env
from tests.invariants.claim_model import (
    BLOCKLIST,
    DAY,
    ELIGIBILITY,
    STATUS,
    STOCK,
    USER_LIMIT,
    WINDOW,
    ActivityModel,
    Facts,
    PackEntry,
    Request,
    Rules,
)
from tests.lua.support import Snapshot, snapshot

T = TypeVar("T")

BASE = 1_750_000_000  # the simulated clock moves around this instant
ACTIVITIES = ("A0", "A1", "A2")
USERS = ("u0", "u1", "u2", "u3")
DEVICES = ("d0", "d1", "d2")
TAGS = ("vip", "new", "pro")
CHANNELS = ("", "live", "web")
KEYS = (None, None, "k1", "k2")
OPERATORS = ("alice", "bob")
CLAIM_ID = re.compile(r"^[0-9a-f]{28}$")
# Each run must have met each of these pairs of refusals at once (the first must win): a chain through the
# contract's order, each link with two different answers (the two limits both answer limit_reached).
CLAIM_CHAIN = {
    (BLOCKLIST, STATUS),
    (STATUS, WINDOW),
    (WINDOW, STOCK),
    (STOCK, ELIGIBILITY),
    (ELIGIBILITY, USER_LIMIT),
}
GRANT_CHAIN = {(BLOCKLIST, STATUS), (STATUS, STOCK), (STOCK, USER_LIMIT)}


@dataclass
class Seen:
    """What a run exercised, over all its examples."""

    outcomes: Counter[str] = field(default_factory=Counter)  # "<mode>: <code>"
    together: Counter[tuple[str, ...]] = field(default_factory=Counter)  # (mode, check, check, ...)

    def pairs(self, mode: str) -> set[tuple[str, str]]:
        """(the check that had to win, one it won over), for requests that several checks refused."""
        return {(checks[1], later) for checks in self.together if checks[0] == mode for later in checks[2:]}


class Bridge:
    """A private event loop on a background thread, with its own Redis client, runner and ClaimService."""

    def __init__(self, config: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="claim-model-loop", daemon=True)
        self.thread.start()
        self.keyspace = KeySpace(config.redis.wallet_buckets, config.redis.code_buckets)
        self.ttl = config.claim.idempotency_ttl_seconds
        self.client: RedisClient = self.call(connect(config.redis.url))
        self.runner: ScriptRunner = self.call(self._runner())
        self.service = ClaimService(self.runner, self.keyspace, self.ttl)

    async def _runner(self) -> ScriptRunner:
        runner = ScriptRunner(self.client, load_scripts(), Fence(open_=True))
        await runner.load_all()
        return runner

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def claim(self, activity_id: str, who: UserIdentity, **kwargs: Any) -> tuple[str, str | None]:
        try:
            result = self.call(self.service.claim(activity_id, who, **kwargs))
        except DomainError as refused:
            return refused.outcome.value, None
        return result.outcome.value, result.answer

    def close(self) -> None:
        try:
            self.call(self.client.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


# --- strategies -----------------------------------------------------------------------------------------

offsets = st.integers(-15, 35)  # seconds around BASE, for the clock, the windows and registration times
tag_sets = st.sets(st.sampled_from(TAGS)).map(lambda s: tuple(sorted(s)))

facts_strategy = st.builds(
    Facts,
    # Registered 1-4 days before BASE, give or take the clock's range: exactly N days before a claim happens.
    reg=st.none() | st.builds(lambda days, off: BASE - days * DAY + off, st.integers(1, 4), offsets),
    orders=st.none() | st.integers(0, 3),
    tags=st.none() | tag_sets,
)


def sometimes(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    """None three times in four: an activity usually asks for one or two things, not all five."""
    return st.one_of(st.none(), st.none(), st.none(), strategy)


rules_strategy = st.builds(
    Rules,
    new_within_days=sometimes(st.integers(1, 3)),
    first_order=st.sampled_from((False, False, False, True)),
    min_orders=sometimes(st.integers(0, 3)),
    tags=sometimes(tag_sets.filter(bool)),
    users=sometimes(st.sets(st.sampled_from(USERS), min_size=1).map(lambda s: tuple(sorted(s)))),
)
# Many activities ask for nothing, so claims get past eligibility often enough to reach the limits.
sparse_rules = st.one_of(st.just(Rules()), rules_strategy)
# And one activity always reads the token: some claimants get in, others not, and facts change under them.
fact_rules = rules_strategy.filter(
    lambda r: r.new_within_days is not None or r.first_order or r.min_orders is not None or r.tags is not None
)

pack_entry = st.one_of(
    st.builds(PackEntry, template_id=st.just(""), count=st.integers(1, 3), valid_days=st.integers(1, 30)),
    st.builds(
        lambda count, start, length: PackEntry("", count, valid_from=start, valid_until=start + length),
        st.integers(1, 3),
        st.integers(BASE - DAY, BASE + DAY),
        st.integers(1, 30 * DAY),
    ),
)
packs = st.lists(pack_entry, min_size=1, max_size=2).map(
    lambda entries: tuple(
        PackEntry(f"t{i + 1}", e.count, e.valid_days, e.valid_from, e.valid_until)
        for i, e in enumerate(entries)
    )
)


@st.composite
def activity_models(draw: st.DrawFn, activity_id: str, rules: st.SearchStrategy[Rules]) -> ActivityModel:
    starts_at = BASE + draw(st.integers(-10, 10))
    return ActivityModel(
        activity_id=activity_id,
        status=draw(st.sampled_from(("active",) * 5 + ("paused", "ended"))),
        starts_at=starts_at,
        ends_at=starts_at + draw(st.integers(1, 40)),
        stock=draw(st.integers(0, 6)),
        per_user_limit=draw(st.integers(1, 3)),
        per_device_limit=draw(st.integers(0, 3)) or None,
        rules=draw(rules),
        pack=draw(packs),
    )


def mirror(bridge: Bridge, model: ActivityModel) -> None:
    """Create the activity in Redis the way AdminService.mirror_activity does (hot_config + put_activity)."""
    templates = {
        entry.template_id: Template(
            name=f"template {entry.template_id}",
            kind="cash",
            amount_off=100,
            valid_days=entry.valid_days,
            valid_from=entry.valid_from,
            valid_until=entry.valid_until,
            id=entry.template_id,
            created_by="alice",
            created_at=BASE,
        )
        for entry in model.pack
    }
    rules = model.rules
    eligibility = Eligibility(
        new_within_days=rules.new_within_days,
        first_order=rules.first_order or None,
        min_orders=rules.min_orders,
        tags=list(rules.tags) if rules.tags else None,
        users=list(rules.users) if rules.users else None,
    )
    activity = Activity(
        name=f"activity {model.activity_id}",
        pack=[PackItem(entry.template_id, entry.count) for entry in model.pack],
        starts_at=model.starts_at,
        ends_at=model.ends_at,
        stock=model.stock,
        per_user_limit=model.per_user_limit,
        per_device_limit=model.per_device_limit,
        eligibility=eligibility if rules != Rules() else None,
        id=model.activity_id,
        status=model.status,  # type: ignore[arg-type]
        face_per_pack=100 * sum(entry.count for entry in model.pack),
        created_by="alice",
        created_at=BASE,
    )
    keys = bridge.keyspace.activity(model.activity_id)
    reply = bridge.call(
        bridge.runner.run(
            "put_activity",
            [keys.config, keys.allow_list, keys.retired, keys.seq, keys.events],
            [
                BASE,
                new_id(),
                "alice",
                model.activity_id,
                msgspec.json.encode(hot_config(activity, templates)),
                msgspec.json.encode(list(rules.users or ())),
            ],
        )
    )
    assert reply[0] == "ok", reply


# --- the machine ------------------------------------------------------------------------------------------


class ClaimMachine(RuleBasedStateMachine):
    def __init__(self, bridge: Bridge, seen: Seen) -> None:
        super().__init__()
        self.bridge = bridge
        self.seen = seen
        self.acts: dict[str, ActivityModel] = {}
        self.fixed: dict[str, dict[str, str]] = {}  # config fields no claim may change
        self.facts: dict[str, Facts] = {}
        self.now = BASE
        self.claim_ids: set[str] = set()
        self.keyed: list[tuple[Any, ...]] = []  # requests sent with an Idempotency-Key, to retry

    @initialize(
        models=st.tuples(
            *(
                activity_models(aid, fact_rules if aid == ACTIVITIES[-1] else sparse_rules)
                for aid in ACTIVITIES
            )
        ),
        facts=st.tuples(*(facts_strategy for _ in USERS)),
    )
    def setup(self, models: tuple[ActivityModel, ...], facts: tuple[Facts, ...]) -> None:
        self.bridge.call(self.bridge.client.flushall())
        for model in models:
            mirror(self.bridge, model)
            self.acts[model.activity_id] = model
            config = self.bridge.call(self.bridge.client.hgetall(self.keys(model).config))
            self.fixed[model.activity_id] = {
                k: v for k, v in config.items() if k not in ("status", "stock_left", "taken")
            }
        self.facts = dict(zip(USERS, facts, strict=True))

    def keys(self, model: ActivityModel) -> Any:
        return self.bridge.keyspace.activity(model.activity_id)

    # -- the clock and the tokens

    @rule(
        aid=st.sampled_from(ACTIVITIES),
        edge=st.sampled_from(("anywhere", "start-1", "start", "inside", "inside", "end-1", "end", "end+1")),
        offset=offsets,
        where=st.floats(0, 1),
    )
    def tick(self, aid: str, edge: str, offset: int, where: float) -> None:
        """The clock jumps: anywhere in its range, or onto an activity's window (just before it, its first
        second, inside, its last second, ends_at exactly, after)."""
        act = self.acts[aid]
        self.now = {
            "anywhere": BASE + offset,
            "start-1": act.starts_at - 1,
            "start": act.starts_at,
            "inside": act.starts_at + int(where * (act.ends_at - act.starts_at - 1)),
            "end-1": act.ends_at - 1,
            "end": act.ends_at,
            "end+1": act.ends_at + 1,
        }[edge]

    @rule(user=st.sampled_from(USERS), facts=st.one_of(st.just(Facts()), facts_strategy))
    def new_token(self, user: str, facts: Facts) -> None:
        """The user signs in again: the same id with other facts."""
        self.facts[user] = facts

    @rule(user=st.sampled_from(USERS))
    def places_an_order(self, user: str) -> None:
        """The user completes an order and signs in again: ``orders`` goes up (a first-order user is no longer
        one), the other facts stay."""
        facts = self.facts[user]
        self.facts[user] = Facts(facts.reg, (facts.orders or 0) + 1, facts.tags)

    # -- operators

    @rule(
        aid=st.sampled_from(ACTIVITIES),
        action=st.sampled_from(("pause", "resume", "resume", "resume", "end")),
    )
    def change_status(self, aid: str, action: str) -> None:
        act = self.acts[aid]
        keys = self.keys(act)
        expected = act.change_status(action)
        reply = self.bridge.call(
            self.bridge.runner.run(
                "set_status",
                [keys.config, keys.retired, keys.seq, keys.events],
                [self.now, new_id(), "alice", aid, action],
            )
        )
        assert reply[0] == expected, (action, reply)

    # -- claims and grants

    @rule(
        aid=st.sampled_from(ACTIVITIES),
        user=st.sampled_from(USERS),
        device=st.sampled_from(DEVICES),
        channel=st.sampled_from(CHANNELS),
        key=st.sampled_from(KEYS),
        blocked=st.integers(0, 5).map(lambda n: n == 0),
    )
    def claim(self, aid: str, user: str, device: str, channel: str, key: str | None, blocked: bool) -> None:
        self.do_claim(aid, user, device, channel, key, blocked)

    @rule(
        aid=st.sampled_from(ACTIVITIES),
        user=st.sampled_from(USERS),
        device=st.sampled_from(DEVICES),
        channel=st.sampled_from(CHANNELS),
        key=st.sampled_from(KEYS),
        blocked=st.integers(0, 5).map(lambda n: n == 0),
    )
    def claim_again(
        self, aid: str, user: str, device: str, channel: str, key: str | None, blocked: bool
    ) -> None:
        """The same as ``claim``: claims are most of what happens, so they get two of the rules' draws."""
        self.do_claim(aid, user, device, channel, key, blocked)

    @rule(
        aid=st.sampled_from(ACTIVITIES),
        user=st.sampled_from(USERS),
        operator=st.sampled_from(OPERATORS),
        with_other=st.booleans(),
        key=st.sampled_from(KEYS),
        blocked=st.integers(0, 5).map(lambda n: n == 0),
    )
    def grant(
        self, aid: str, user: str, operator: str, with_other: bool, key: str | None, blocked: bool
    ) -> None:
        """One user's part of an operator's grant call (GrantService's call into ClaimService)."""
        if key is not None:
            self.keyed.append(("grant", aid, user, operator, with_other, key, blocked))
        user_ids = [user, "zz"] if with_other else [user]
        req = Request(
            user=user,
            now=self.now,
            blocked=blocked,
            key=key,
            body=",".join(user_ids),
            mode="grant",
            operator=operator,
        )
        self.run_claim(
            self.acts[aid],
            req,
            dict(
                idempotency_key=key,
                blocked=blocked,
                mode="grant",
                operator=operator,
                body=GrantBody(user_ids).digest(),
            ),
        )

    @rule(data=st.data())
    def claim_where_several_refusals_apply(self, data: st.DataObject) -> None:
        self.several_refusals(data)

    @rule(data=st.data())
    def claim_where_several_refusals_apply_again(self, data: st.DataObject) -> None:
        """The same: the states where the later checks meet (eligibility and a limit) come and go quickly."""
        self.several_refusals(data)

    def several_refusals(self, data: st.DataObject) -> None:
        """A claim picked among those the model refuses for two or more reasons at once (when there are any).

        First which pair (the refusal that must win, one it must win over), then a claim with it: pairs that
        the state allows only rarely get their turn as often as the common ones. The claim may come now or
        while the activity is open (the clock moves there), and the user may come back with a token that
        carries no facts, which fails every rule that needs one: that is how a user who took packs while
        eligible meets eligibility and the limits at once."""
        by_pair: dict[tuple[str, str], list[tuple[str, str, str, Facts, int]]] = {}
        for aid, act in self.acts.items():
            for when in dict.fromkeys((self.now, (act.starts_at + act.ends_at) // 2)):
                for user in USERS:
                    for facts in dict.fromkeys((self.facts[user], Facts())):
                        for device in DEVICES:
                            checks = self.checks_for(aid, user, device, False, now=when, facts=facts)
                            for later in checks[1:]:
                                by_pair.setdefault((checks[0], later), []).append(
                                    (aid, user, device, facts, when)
                                )
        if by_pair:
            pair = data.draw(st.sampled_from(sorted(by_pair)), label="refusals together")
            aid, user, device, self.facts[user], self.now = data.draw(
                st.sampled_from(by_pair[pair]), label="claim"
            )
            self.do_claim(aid, user, device, data.draw(st.sampled_from(CHANNELS)), None, False)

    @rule(data=st.data())
    def claim_the_model_accepts(self, data: st.DataObject) -> None:
        """A claim picked among those the model accepts (when there are any), so that counts reach the limits."""
        self.accepted_claim(data)

    @rule(data=st.data())
    def claim_the_model_accepts_again(self, data: st.DataObject) -> None:
        """The same: successes are rare in random claims, and the limits bind only after a few."""
        self.accepted_claim(data)

    def accepted_claim(self, data: st.DataObject) -> None:
        """A claim the model accepts, made while the activity is open: the clock moves into the window first
        when it is outside (the user comes back during the sale)."""
        candidates = [
            (aid, user, device, when)
            for aid, act in self.acts.items()
            for when in [
                self.now if act.starts_at <= self.now < act.ends_at else (act.starts_at + act.ends_at) // 2
            ]
            for user in USERS
            for device in DEVICES
            if not self.checks_for(aid, user, device, False, now=when)
        ]
        if candidates:
            # First the activity, then a claim: activities with eligibility rules get their turn too.
            aid = data.draw(st.sampled_from(sorted({c[0] for c in candidates})), label="activity")
            aid, user, device, self.now = data.draw(
                st.sampled_from([c for c in candidates if c[0] == aid]), label="accepted claim"
            )
            channel, key = data.draw(st.sampled_from(CHANNELS)), data.draw(st.sampled_from(KEYS))
            self.do_claim(aid, user, device, channel, key, False)

    @rule(
        aid=st.sampled_from(ACTIVITIES),
        user=st.sampled_from(USERS),
        device=st.sampled_from(DEVICES),
        delta=st.sampled_from((-1, 0, 1)),
    )
    def claim_at_registration_edge(self, aid: str, user: str, device: str, delta: int) -> None:
        """On an activity for new users, a user registered exactly new_within_days before the claim (or a
        second less or more) claims while the activity is open."""
        act = self.acts[aid]
        days = act.rules.new_within_days
        if days is None:
            return
        if not act.starts_at <= self.now < act.ends_at:
            self.now = (act.starts_at + act.ends_at) // 2
        facts = self.facts[user]
        self.facts[user] = Facts(self.now - days * DAY + delta, facts.orders, facts.tags)
        self.do_claim(aid, user, device, "", None, False)

    @precondition(lambda self: self.keyed)
    @rule(data=st.data(), same_body=st.booleans(), blocked_now=st.integers(0, 3).map(lambda n: n == 0))
    def retry(self, data: st.DataObject, same_body: bool, blocked_now: bool) -> None:
        """A request sent with an Idempotency-Key, again: the same body (a retry) or another (a conflict). The
        user or device may have been put on the blocklist meanwhile (a kept answer is still replayed), or
        taken off it (a refusal was not kept: judged afresh)."""
        sent = data.draw(st.sampled_from(self.keyed), label="retried")
        blocked = blocked_now
        if sent[0] == "claim":
            _, aid, user, device, channel, key, _ = sent
            if not same_body:
                channel = data.draw(st.sampled_from([c for c in CHANNELS if c != channel]), label="channel")
            self.do_claim(aid, user, device, channel, key, blocked)
        else:
            _, aid, user, operator, with_other, key, _ = sent
            self.grant(aid, user, operator, with_other if same_body else not with_other, key, blocked)

    def checks_for(
        self,
        aid: str,
        user: str,
        device: str,
        blocked: bool,
        now: int | None = None,
        facts: Facts | None = None,
    ) -> tuple[str, ...]:
        """Which domain checks the model would refuse this claim for, in the contract's order."""
        req = Request(
            user=user,
            now=self.now if now is None else now,
            blocked=blocked,
            key=None,
            body="",
            facts=self.facts[user] if facts is None else facts,
            device=device,
        )
        return tuple(check for check, _ in self.acts[aid].refusals(req))

    def do_claim(
        self, aid: str, user: str, device: str, channel: str, key: str | None, blocked: bool
    ) -> None:
        if key is not None:
            self.keyed.append(("claim", aid, user, device, channel, key, blocked))
        facts = self.facts[user]
        req = Request(
            user=user,
            now=self.now,
            blocked=blocked,
            key=key,
            body=channel,
            facts=facts,
            device=device,
        )
        self.run_claim(self.acts[aid], req, dict(channel=channel, idempotency_key=key, blocked=blocked))

    def run_claim(self, act: ActivityModel, req: Request, kwargs: dict[str, Any]) -> None:
        verdict = act.judge(req)
        checks = tuple(check for check, _ in verdict.applicable)
        event(f"{req.mode}: {verdict.code}")
        self.seen.outcomes[f"{req.mode}: {verdict.code}"] += 1
        if len(checks) >= 2:
            self.seen.together[(req.mode, *checks)] += 1
            event(f"{req.mode}: refusals together: {' > '.join(checks)}")
        who = UserIdentity(
            req.user,
            req.device,
            reg=req.facts.reg,
            orders=req.facts.orders,
            tags=req.facts.tags or (),
        )
        before = self.partition(act) if verdict.code != "ok" else None
        code, answer = self.bridge.claim(act.activity_id, who, now=req.now, **kwargs)
        assert code == verdict.code, (
            f"{req.mode} {act.activity_id} by {req.user}: script said {code}, the contract {verdict.code}"
            f" (refusals that apply, in order: {verdict.applicable}); {req}; activity {act}"
        )
        if code == "ok":
            assert answer is not None
            self.check_answer(act, req, answer)
            act.take(req, answer)
            self.check_last_event(act, req, answer, kwargs.get("channel", ""))
        else:
            if code == "replay":
                assert answer == verdict.answer, "a replay must answer exactly the first success"
            assert self.partition(act) == before, f"{code} changed the activity's keys"

    # -- checks

    def partition(self, act: ActivityModel) -> Snapshot:
        return self.bridge.call(snapshot(self.bridge.client, f"{self.keys(act).tag}*"))

    def check_answer(self, act: ActivityModel, req: Request, answer: str) -> None:
        body = json.loads(answer)
        assert set(body) == {"claim_id", "coupons"}, body
        claim_id = body["claim_id"]
        assert isinstance(claim_id, str) and CLAIM_ID.match(claim_id), claim_id
        assert claim_id not in self.claim_ids, "claim ids must be unique"
        self.claim_ids.add(claim_id)
        assert body["coupons"] == act.expected_coupons(claim_id, req.now)

    def check_last_event(self, act: ActivityModel, req: Request, answer: str, channel: str) -> None:
        entries = self.bridge.call(self.bridge.client.xrevrange(self.keys(act).events, count=1))
        fields = entries[0][1]
        want = {
            "type": "claimed",
            "activity": act.activity_id,
            "claim_id": json.loads(answer)["claim_id"],
            "user": req.user,
            "device": req.device,
            "channel": channel,
            "mode": req.mode,
            "by": req.operator,
            "answer": answer,
            "at": str(req.now),
            "seq": str(act.events),
        }
        assert {k: fields.get(k) for k in want} == want

    @invariant()
    def redis_matches_model(self) -> None:
        client = self.bridge.client
        for aid, act in self.acts.items():
            keys = self.keys(act)
            config = self.bridge.call(client.hgetall(keys.config))
            assert config.pop("status") == act.status
            assert int(config.pop("stock_left")) == act.stock_left
            assert int(config.pop("taken")) == act.taken
            assert config == self.fixed[aid], "a claim changed the activity's definition"
            # No oversell, no user or device past its limit (grants have no device).
            assert act.stock_left >= 0 and act.taken == sum(act.users.values())
            assert all(n <= act.per_user_limit for n in act.users.values())
            if act.per_device_limit:
                assert all(n <= act.per_device_limit for n in act.devices.values())
            users = self.bridge.call(client.hgetall(keys.user_counts))
            assert {u: int(n) for u, n in users.items()} == +act.users
            devices = self.bridge.call(client.hgetall(keys.device_counts))
            assert {d: int(n) for d, n in devices.items()} == +act.devices
            assert self.bridge.call(client.xlen(keys.events)) == act.events
            assert int(self.bridge.call(client.get(keys.seq))) == act.events
            kept = {}
            for (scope, key), (_, answer) in act.kept.items():
                who = f"{scope[1]}\x1f{scope[2]}" if scope[0] == "grant" else scope[1]
                kept[keys.idempotency(who, key)] = answer
            found = self.bridge.call(_keys_matching(client, f"{keys.tag}:idem:*"))
            assert found == set(kept), "kept answers: exactly the successes with a key"
            for name, answer in kept.items():
                record = self.bridge.call(client.get(name))
                assert record is not None and record[33:] == answer
                ttl = self.bridge.call(client.ttl(name))
                assert 24 * 3600 <= ttl <= self.bridge.ttl


async def _keys_matching(client: RedisClient, pattern: str) -> set[str]:
    return {key async for key in client.scan_iter(match=pattern, count=1000)}


@pytest.fixture
def model_bridge(valkey: ValkeyServer) -> Iterator[Bridge]:
    """The machine's own loop and client on the session's Valkey (the settings fixture would start Postgres)."""
    config = load_settings(settings_env(valkey.url, "postgresql://unused@127.0.0.1:1/unused"))
    bridge = Bridge(config)
    yield bridge
    bridge.close()


@pytest.mark.slow
@pytest.mark.timeout(
    900
)  # passes in well under a minute; a failure needs time to shrink to its shortest form
def test_claims_and_grants_follow_the_contract_model(model_bridge: Bridge) -> None:
    seen = Seen()
    run_state_machine_as_test(
        lambda: ClaimMachine(model_bridge, seen),
        settings=settings(
            max_examples=150,
            stateful_step_count=50,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    print(f"\nanswers: {dict(sorted(seen.outcomes.items()))}")
    print(f"refusals met together ({len(seen.together)} distinct orderings):")
    for checks, count in seen.together.most_common():
        print(f"  {count:5d}  {checks[0]}: {' > '.join(checks[1:])}")
    for mode, chain in (("claim", CLAIM_CHAIN), ("grant", GRANT_CHAIN)):
        pairs = seen.pairs(mode)
        print(f"{mode}: {len(pairs)} (winner, loser) pairs")
        assert chain <= pairs, f"{mode}s never met these refusals together: {sorted(chain - pairs)}"
