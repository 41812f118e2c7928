"""What the set-up makes at test start: the activities every generator shares (the rush's one activity, the
livestream drops), made once by the local runner or the master, and each process's own part (its tokens, its
checkout activity, its code batch). The plan in use is ``current()``; the set-up installs it with ``use()``."""

from __future__ import annotations

import itertools
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from locust.env import Environment

from loadtest.scenarios import config as c
from loadtest.scenarios.admin import Admin, user_headers

log = logging.getLogger("claimgate.loadtest")


@dataclass
class Shared:
    """What the local runner or the master makes once and every generator uses."""

    classes: list[str] = field(default_factory=list)
    rush_activity: str = ""
    drops: list[str] = field(default_factory=list)  # one activity per livestream burst
    first_burst: float = 0.0  # unix time burst 0 starts


@dataclass
class Shopper:
    headers: dict[str, str]
    has_coupon: bool = False  # known to hold an available coupon (a release or refund gave it back)


@dataclass
class CodeHolder:
    headers: dict[str, str]
    wrong: int = 0  # invalid_code answers so far (this run is far shorter than the limit's hour)


@dataclass
class Plan:
    """This process's part: tokens, its own activities, its codes."""

    shared: Shared = field(default_factory=Shared)
    tag: str = ""
    rush: Iterator[dict[str, str]] = field(default_factory=lambda: iter(()))
    live: list[dict[str, str]] = field(default_factory=list)
    live_taps: Iterator[dict[str, str]] = field(default_factory=lambda: iter(()))
    checkout_activity: str = ""
    shoppers: deque[Shopper] = field(default_factory=deque)
    code_activity: str = ""
    codes: deque[str] = field(default_factory=deque)
    code_holders: Iterator[CodeHolder] = field(default_factory=lambda: iter(()))


_current = Plan()


def current() -> Plan:
    return _current


def use(plan: Plan) -> None:
    global _current
    _current = plan


def burst_count(environment: Environment) -> int:
    if c.BURSTS:
        return c.BURSTS
    run_time = getattr(environment.parsed_options, "run_time", None)
    if run_time:
        return max(1, math.ceil((float(run_time) - c.FIRST_BURST) / c.BURST_EVERY) + 1)
    return 120


def rush_activity(environment: Environment, now: int) -> str:
    """LOADTEST_ACTIVITY, else a new flash sale of LOADTEST_STOCK packs."""
    if c.RUSH_ACTIVITY:
        return c.RUSH_ACTIVITY
    admin = Admin(environment.host)
    template = admin.template("loadtest rush 5 off", kind="cash", amount_off=500, valid_days=7)
    activity = admin.activity(
        "loadtest flash sale",
        template,
        now - 1,
        now + 6 * 3600,
        c.RUSH_STOCK,
        per_user_limit=1,
        per_device_limit=1,
    )
    log.info("flash sale: activity %s, %d packs", activity, c.RUSH_STOCK)
    return activity


def livestream_drops(environment: Environment, shared: Shared, now: int) -> None:
    """One drop (activity) per burst, open around its burst."""
    if c.BURST_SECONDS > c.BURST_EVERY:
        raise RuntimeError("LOADTEST_BURST_SECONDS must not exceed LOADTEST_BURST_EVERY")
    admin = Admin(environment.host)
    template = admin.template("loadtest drop 3 off", kind="cash", amount_off=300, valid_days=7)
    first = now + c.FIRST_BURST
    shared.first_burst = float(first)
    for k in range(burst_count(environment)):
        starts = first + k * c.BURST_EVERY
        # a little slack either side for clocks that differ between the generators and the gateway
        shared.drops.append(
            admin.activity(
                f"loadtest drop {k}",
                template,
                starts - 2,
                starts + c.BURST_EVERY + 2,
                c.LIVE_STOCK,
                per_user_limit=1,
            )
        )
    log.info(
        "livestream: %d drops of %d packs, a %d s burst every %d s from %s",
        len(shared.drops),
        c.LIVE_STOCK,
        c.BURST_SECONDS,
        c.BURST_EVERY,
        time.strftime("%H:%M:%S", time.localtime(first)),
    )


def make_shared(environment: Environment, classes: list[str]) -> Shared:
    """The rush's activity and the livestream's drops (made once, for every generator)."""
    shared = Shared(classes=classes)
    now = int(time.time())
    if "FlashSaleUser" in classes:
        shared.rush_activity = rush_activity(environment, now)
    if "LivestreamUser" in classes:
        livestream_drops(environment, shared, now)
    return shared


def checkout_part(environment: Environment, plan: Plan, now: int) -> None:
    plan.checkout_activity = c.CHECKOUT_ACTIVITY
    if not plan.checkout_activity:
        admin = Admin(environment.host)
        template = admin.template(
            "loadtest 5 off 20",
            kind="threshold",
            amount_off=500,
            min_spend=2000,
            scope=["grocery", "fashion"],
            valid_days=7,
        )
        plan.checkout_activity = admin.activity(
            "loadtest checkout", template, now - 1, now + 6 * 3600, c.BIG_STOCK, per_user_limit=1_000_000
        )
    plan.shoppers = deque(Shopper(h) for h in user_headers(f"{plan.tag}-shop", c.CHECKOUT_USERS))
    log.info("checkout: activity %s, %d shoppers", plan.checkout_activity, c.CHECKOUT_USERS)


def codes_part(environment: Environment, plan: Plan, now: int) -> None:
    admin = Admin(environment.host)
    plan.code_activity = c.CODE_ACTIVITY
    if not plan.code_activity:
        template = admin.template("loadtest code 2 off", kind="cash", amount_off=200, valid_days=7)
        plan.code_activity = admin.activity(
            "loadtest codes", template, now - 1, now + 6 * 3600, c.BIG_STOCK, per_user_limit=1
        )
    plan.codes = deque(admin.codes(plan.code_activity, c.CODES_PER_BATCH))
    plan.code_holders = itertools.cycle(
        [CodeHolder(h) for h in user_headers(f"{plan.tag}-code", c.CODE_USERS)]
    )
    log.info("codes: activity %s, a batch of %d codes", plan.code_activity, len(plan.codes))


def make_plan(environment: Environment, shared: Shared, index: int) -> Plan:
    """This process's tokens, its checkout activity and its code batch."""
    plan = Plan(shared=shared, tag=f"lt{index}{secrets.token_hex(3)}")
    started = time.monotonic()
    now = int(time.time())
    if "FlashSaleUser" in shared.classes:
        plan.rush = itertools.cycle(user_headers(f"{plan.tag}-rush", c.RUSH_USERS, c.RUSH_DEVICES))
    if "LivestreamUser" in shared.classes:
        plan.live = user_headers(f"{plan.tag}-live", c.LIVE_USERS)
        plan.live_taps = itertools.cycle(plan.live)
    if "CheckoutUser" in shared.classes:
        checkout_part(environment, plan, now)
    if "CodeUser" in shared.classes:
        codes_part(environment, plan, now)
    log.info("set-up of %s took %.1f s", ", ".join(shared.classes), time.monotonic() - started)
    return plan
