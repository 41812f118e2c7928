"""Locust scenarios to run before the big day; pick one by its class name (see README, "Load test"):

    CLAIMGATE_JWT_SECRET=... CLAIMGATE_API_KEYS=name:key .venv/bin/locust -f loadtest/locustfile.py \\
        --host http://127.0.0.1:PORT --headless -u 200 -r 200 -t 30s FlashSaleUser

- ``FlashSaleUser``: one activity, LOADTEST_STOCK packs, tens of thousands of users; most claims arrive after
  sell-out. 201 and 409 ``sold_out`` / ``limit_reached`` are the expected answers.
- ``LivestreamUser``: the host says "tap now" every LOADTEST_BURST_EVERY seconds; for LOADTEST_BURST_SECONDS
  everyone claims with no wait, a fresh drop (activity) per burst; between bursts users poll their wallet rarely.
- ``CheckoutUser``: a coupon (claimed, or one already in the wallet), quote, lock, then mostly redeem, some
  release, some refund after the redeem; user tokens only.
- ``CodeUser``: code redemption with some wrong codes (typos and guesses): 404 ``invalid_code`` is expected for
  them; each user stays below the 10 wrong codes an hour that would make it ``rate_limited``.

Everything a run needs is made at test start: user tokens are minted up front (``mint_user_token``), and
templates, activities and code batches are created through the admin API with an operator key
(LOADTEST_API_KEY, else the first key of CLAIMGATE_API_KEYS). The activities every generator must share (the
rush's one activity, the livestream drops) are made once, by the local runner or the master, which passes their
ids to its workers with the run (locust forwards the master's custom options with each spawn); a worker makes
its own checkout activity and code batches, so no two processes ever hold the same code. Each process names its
users with a fresh tag, so a second run against the same stack starts with empty wallets and clean
wrong-code counters.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import gevent.lock
import requests
from locust import FastHttpUser, between, events, task
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from gateway.codes.format import ALPHABET, DATA_SYMBOLS, check_symbol, shown
from gateway.tokens import mint_user_token

log = logging.getLogger("claimgate.loadtest")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def _operator_key() -> str:
    """LOADTEST_API_KEY, else the key of the first ``name:key`` in CLAIMGATE_API_KEYS."""
    if key := os.environ.get("LOADTEST_API_KEY", ""):
        return key
    first = os.environ.get("CLAIMGATE_API_KEYS", "").split(",")[0]
    return first.partition(":")[2].strip()


SECRET = os.environ.get("CLAIMGATE_JWT_SECRET", "")
API_KEY = _operator_key()
TOKEN_TTL = 6 * 3600
USERS = os.environ.get("LOADTEST_USERS", "")  # identities per scenario; unset: each scenario's own default


def _users(default: int) -> int:
    return int(USERS) if USERS else default


# Flash-sale rush.
RUSH_ACTIVITY = os.environ.get("LOADTEST_ACTIVITY", "")
RUSH_USERS = _users(50_000)
RUSH_DEVICES = _env_int("LOADTEST_DEVICES", RUSH_USERS)
RUSH_STOCK = _env_int("LOADTEST_STOCK", 2000)
# Livestream drops.
LIVE_USERS = _users(20_000)
LIVE_STOCK = _env_int("LOADTEST_DROP_STOCK", 500)
BURST_EVERY = _env_int("LOADTEST_BURST_EVERY", 30)
BURST_SECONDS = _env_int("LOADTEST_BURST_SECONDS", 5)
FIRST_BURST = _env_int("LOADTEST_FIRST_BURST", 5)  # seconds from the test's start to the first burst
BURSTS = _env_int("LOADTEST_BURSTS", 0)  # 0: enough for --run-time, or 120 without one
POLL_SECONDS = _env_float("LOADTEST_POLL_SECONDS", 10.0)
REACTION_SECONDS = 0.25  # users tap within this long after the host says so
# Checkout.
CHECKOUT_ACTIVITY = os.environ.get("LOADTEST_CHECKOUT_ACTIVITY", "")
CHECKOUT_USERS = _users(2000)
RELEASE_SHARE = _env_float("LOADTEST_RELEASE_SHARE", 0.15)  # of locked orders, cancelled before payment
REFUND_SHARE = _env_float("LOADTEST_REFUND_SHARE", 0.10)  # of redeemed orders, refunded afterwards
# Codes.
CODE_ACTIVITY = os.environ.get("LOADTEST_CODE_ACTIVITY", "")
CODE_USERS = _users(5000)
CODES_PER_BATCH = _env_int("LOADTEST_CODES", 10_000)
WRONG_SHARE = _env_float("LOADTEST_WRONG_CODES", 0.10)
WRONG_PER_USER = min(_env_int("LOADTEST_WRONG_PER_USER", 5), 9)  # 10 in an hour and the user is rate_limited

BIG_STOCK = 10_000_000  # checkout and code activities never sell out
SETUP_OPTION = "loadtest_setup"

ANY = None  # an expected status whatever its body
Expected = Mapping[int, frozenset[str] | None]
CLAIMED: Expected = {201: ANY, 409: frozenset({"sold_out", "limit_reached"})}
OK: Expected = {200: ANY}
CREATED: Expected = {201: ANY}
WRONG_CODE: Expected = {404: frozenset({"invalid_code"})}

# Answers by request name, status and error code; workers send theirs to the master with each report.
OUTCOMES: Counter[str] = Counter()


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


PLAN = Plan()
_codes_lock = gevent.lock.Semaphore()


# --- admin API -------------------------------------------------------------------------------------------


class Admin:
    """The operator's calls the set-up makes (plain requests: they are not part of what is measured)."""

    def __init__(self, host: str | None, timeout: float = 120.0) -> None:
        if not host:
            raise RuntimeError("the scenarios need --host (the gateway's URL)")
        if not API_KEY:
            raise RuntimeError(
                "set LOADTEST_API_KEY or CLAIMGATE_API_KEYS (name:key) to create the test's activities"
            )
        self.base = host.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers["X-API-Key"] = API_KEY

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        reply = self.http.request(method, self.base + path, json=body, timeout=self.timeout)
        if reply.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {reply.status_code} {reply.text[:300]}")
        return reply.json()

    def template(self, name: str, **terms: Any) -> str:
        return str(self.call("POST", "/v1/admin/templates", {"name": name, **terms})["id"])

    def activity(
        self, name: str, template_id: str, starts_at: int, ends_at: int, stock: int, **rules: Any
    ) -> str:
        body = {
            "name": name,
            "pack": [{"template_id": template_id, "count": 1}],
            "starts_at": starts_at,
            "ends_at": ends_at,
            "stock": stock,
            **rules,
        }
        return str(self.call("POST", "/v1/admin/activities", body)["id"])

    def codes(self, activity_id: str, count: int) -> list[str]:
        return list(self.call("POST", f"/v1/admin/activities/{activity_id}/codes", {"count": count})["codes"])


def _headers(prefix: str, count: int, devices: int | None = None) -> list[dict[str, str]]:
    if not SECRET:
        raise RuntimeError("set CLAIMGATE_JWT_SECRET (the gateway's) to mint user tokens")
    return [
        {
            "Authorization": "Bearer "
            + mint_user_token(
                SECRET, f"{prefix}-{i}", f"{prefix}-dev-{i % (devices or count)}", ttl_seconds=TOKEN_TTL
            )
        }
        for i in range(count)
    ]


# --- set-up at test start --------------------------------------------------------------------------------


def _burst_count(environment: Environment) -> int:
    if BURSTS:
        return BURSTS
    run_time = getattr(environment.parsed_options, "run_time", None)
    if run_time:
        return max(1, math.ceil((float(run_time) - FIRST_BURST) / BURST_EVERY) + 1)
    return 120


def make_shared(environment: Environment, classes: list[str]) -> Shared:
    """The rush's activity and the livestream's drops (made once, for every generator)."""
    shared = Shared(classes=classes)
    now = int(time.time())
    if "FlashSaleUser" in classes:
        shared.rush_activity = RUSH_ACTIVITY
        if not shared.rush_activity:
            admin = Admin(environment.host)
            template = admin.template("loadtest rush 5 off", kind="cash", amount_off=500, valid_days=7)
            shared.rush_activity = admin.activity(
                "loadtest flash sale",
                template,
                now - 1,
                now + 6 * 3600,
                RUSH_STOCK,
                per_user_limit=1,
                per_device_limit=1,
            )
            log.info("flash sale: activity %s, %d packs", shared.rush_activity, RUSH_STOCK)
    if "LivestreamUser" in classes:
        if BURST_SECONDS > BURST_EVERY:
            raise RuntimeError("LOADTEST_BURST_SECONDS must not exceed LOADTEST_BURST_EVERY")
        admin = Admin(environment.host)
        template = admin.template("loadtest drop 3 off", kind="cash", amount_off=300, valid_days=7)
        first = now + FIRST_BURST
        shared.first_burst = float(first)
        for k in range(_burst_count(environment)):
            starts = first + k * BURST_EVERY
            # a little slack either side for clocks that differ between the generators and the gateway
            shared.drops.append(
                admin.activity(
                    f"loadtest drop {k}",
                    template,
                    starts - 2,
                    starts + BURST_EVERY + 2,
                    LIVE_STOCK,
                    per_user_limit=1,
                )
            )
        log.info(
            "livestream: %d drops of %d packs, a %d s burst every %d s from %s",
            len(shared.drops),
            LIVE_STOCK,
            BURST_SECONDS,
            BURST_EVERY,
            time.strftime("%H:%M:%S", time.localtime(first)),
        )
    return shared


def make_plan(environment: Environment, shared: Shared, index: int) -> Plan:
    """This process's tokens, its checkout activity and its code batch."""
    plan = Plan(shared=shared, tag=f"lt{index}{secrets.token_hex(3)}")
    started = time.monotonic()
    now = int(time.time())
    if "FlashSaleUser" in shared.classes:
        plan.rush = itertools.cycle(_headers(f"{plan.tag}-rush", RUSH_USERS, RUSH_DEVICES))
    if "LivestreamUser" in shared.classes:
        plan.live = _headers(f"{plan.tag}-live", LIVE_USERS)
        plan.live_taps = itertools.cycle(plan.live)
    if "CheckoutUser" in shared.classes:
        plan.checkout_activity = CHECKOUT_ACTIVITY
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
                "loadtest checkout", template, now - 1, now + 6 * 3600, BIG_STOCK, per_user_limit=1_000_000
            )
        plan.shoppers = deque(Shopper(h) for h in _headers(f"{plan.tag}-shop", CHECKOUT_USERS))
        log.info("checkout: activity %s, %d shoppers", plan.checkout_activity, CHECKOUT_USERS)
    if "CodeUser" in shared.classes:
        admin = Admin(environment.host)
        plan.code_activity = CODE_ACTIVITY
        if not plan.code_activity:
            template = admin.template("loadtest code 2 off", kind="cash", amount_off=200, valid_days=7)
            plan.code_activity = admin.activity(
                "loadtest codes", template, now - 1, now + 6 * 3600, BIG_STOCK, per_user_limit=1
            )
        plan.codes = deque(admin.codes(plan.code_activity, CODES_PER_BATCH))
        plan.code_holders = itertools.cycle([CodeHolder(h) for h in _headers(f"{plan.tag}-code", CODE_USERS)])
        log.info("codes: activity %s, a batch of %d codes", plan.code_activity, len(plan.codes))
    log.info("set-up of %s took %.1f s", ", ".join(shared.classes), time.monotonic() - started)
    return plan


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        f"--{SETUP_OPTION.replace('_', '-')}", default="", include_in_web_ui=False, help=argparse.SUPPRESS
    )


@events.test_start.add_listener
def _test_start(environment: Environment, **_: Any) -> None:
    global PLAN
    runner = environment.runner
    if not isinstance(runner, WorkerRunner):
        OUTCOMES.clear()
        classes = [c.__name__ for c in environment.user_classes if c.tasks]
        shared = make_shared(environment, classes)
        if isinstance(runner, MasterRunner):
            # forwarded to every worker with the spawn message, before the workers' own test_start
            setattr(environment.parsed_options, SETUP_OPTION, json.dumps(asdict(shared)))
            PLAN = Plan(shared=shared)
            return
        PLAN = make_plan(environment, shared, 0)
        return
    blob = getattr(environment.parsed_options, SETUP_OPTION, "")
    if not blob:
        raise RuntimeError("the master sent no set-up; run the same locustfile on the master and the workers")
    PLAN = make_plan(environment, Shared(**json.loads(blob)), runner.worker_index)


@events.report_to_master.add_listener
def _report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    data["claimgate_outcomes"] = dict(OUTCOMES)
    OUTCOMES.clear()


@events.worker_report.add_listener
def _worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    OUTCOMES.update(data.get("claimgate_outcomes", {}))


@events.quitting.add_listener
def _summary(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    if OUTCOMES:
        width = max(len(k) for k in OUTCOMES)
        lines = [f"  {k:<{width}}  {n:>9}" for k, n in sorted(OUTCOMES.items())]
        log.info("answers by request, status and error:\n%s", "\n".join(lines))
    try:
        admin = Admin(environment.host, timeout=10)
        shared = PLAN.shared
        for name, activity in [
            ("flash sale", shared.rush_activity),
            ("checkout", PLAN.checkout_activity),
            ("codes", PLAN.code_activity),
        ]:
            if activity:
                log.info(
                    "%s %s stats: %s",
                    name,
                    activity,
                    admin.call("GET", f"/v1/admin/activities/{activity}/stats"),
                )
        for k, activity in enumerate(shared.drops):
            stats = admin.call("GET", f"/v1/admin/activities/{activity}/stats")
            if stats["claimed"]:
                log.info(
                    "drop %d %s: claimed %d, %d left", k, activity, stats["claimed"], stats["stock_left"]
                )
    except (RuntimeError, requests.RequestException) as error:
        log.warning("no activity stats: %s", error)


# --- judging answers -------------------------------------------------------------------------------------


def _error_code(reply: ResponseContextManager) -> str:
    try:
        return str(json.loads(reply.content or b"{}").get("error", ""))
    except (ValueError, AttributeError):
        return "?"


def settle(reply: ResponseContextManager, name: str, expected: Expected) -> bool:
    """Count the answer and mark it a success when ``expected`` allows its status (and error code)."""
    status = reply.status_code
    error = _error_code(reply) if status >= 400 else ""
    OUTCOMES[f"{name} {status} {error}".rstrip()] += 1
    if status in expected:
        allowed = expected[status]
        if allowed is None or error in allowed:
            reply.success()
            return True
    reply.failure(f"unexpected {status} {(reply.text or str(reply.error or ''))[:200]}")
    return False


# --- scenarios -------------------------------------------------------------------------------------------


class FlashSaleUser(FastHttpUser):
    """Each virtual user fires claims for one user after another (every request a different user), so a few
    hundred of them are tens of thousands of users pressing claim; once sold out, nearly all answers are 409."""

    wait_time = between(0, 0.05)

    @task
    def claim(self) -> None:
        with self.client.post(
            f"/v1/activities/{PLAN.shared.rush_activity}/claim",
            headers=next(PLAN.rush),
            name="claim",
            catch_response=True,
        ) as reply:
            settle(reply, "claim", CLAIMED)


def current_burst(now: float) -> int | None:
    """The burst the host is calling now (by the shared clock), or None between bursts."""
    since = now - PLAN.shared.first_burst
    if since < 0:
        return None
    k = int(since // BURST_EVERY)
    return k if since - k * BURST_EVERY < BURST_SECONDS else None


def until_next_burst(now: float) -> float:
    since = now - PLAN.shared.first_burst
    if since < 0:
        return -since
    return BURST_EVERY - since % BURST_EVERY


class LivestreamUser(FastHttpUser):
    """Idle viewers who poll their wallet now and then; when a burst starts (every LOADTEST_BURST_EVERY s, by
    the wall clock every generator shares) all of them tap claim on that burst's drop with no wait, a different
    user with every tap, until the burst is over."""

    def on_start(self) -> None:
        self.me = random.choice(PLAN.live)

    def wait_time(self) -> float:
        now = time.time()
        if current_burst(now) is not None:
            return 0.0
        poll = random.uniform(0.5, 1.5) * POLL_SECONDS
        return min(poll, until_next_burst(now) + random.uniform(0, REACTION_SECONDS))

    @task
    def tap_or_poll(self) -> None:
        k = current_burst(time.time())
        if k is not None and k < len(PLAN.shared.drops):
            with self.client.post(
                f"/v1/activities/{PLAN.shared.drops[k]}/claim",
                headers=next(PLAN.live_taps),
                name="drop claim",
                catch_response=True,
            ) as reply:
                settle(reply, "drop claim", CLAIMED)
            return
        with self.client.get(
            "/v1/coupons?limit=20", headers=self.me, name="wallet", catch_response=True
        ) as reply:
            settle(reply, "wallet", OK)


def _cart() -> list[dict[str, Any]]:
    """1-3 lines; the first always in the coupon's scope and over its threshold (20.00)."""
    lines: list[dict[str, Any]] = [
        {
            "sku": "sku-g1",
            "category": random.choice(("grocery", "fashion")),
            "amount": random.randint(2000, 20000),
        }
    ]
    for i in range(random.randint(0, 2)):
        lines.append({"sku": f"sku-x{i}", "category": "books", "amount": random.randint(100, 8000)})
    return lines


class CheckoutUser(FastHttpUser):
    """The order flow with user tokens: a coupon (claimed when the shopper holds none available), quote, lock,
    then redeem (a share of them refunded afterwards) or release. Each iteration takes a shopper no other
    virtual user holds, so runs with more virtual users than LOADTEST_USERS shoppers mint extra ones."""

    wait_time = between(0.1, 0.5)

    def _call(
        self, path: str, body: dict[str, Any], headers: dict[str, str], name: str, expected: Expected
    ) -> Any:
        with self.client.post(path, json=body, headers=headers, name=name, catch_response=True) as reply:
            if settle(reply, name, expected):
                return reply.json()
        return None

    @task
    def order(self) -> None:
        if PLAN.shoppers:
            shopper = PLAN.shoppers.popleft()
        else:
            shopper = Shopper(_headers(f"{PLAN.tag}-shop-x{secrets.token_hex(4)}", 1)[0])
        try:
            self._order(shopper)
        finally:
            PLAN.shoppers.append(shopper)

    def _order(self, shopper: Shopper) -> None:
        headers = shopper.headers
        if not shopper.has_coupon:
            claimed = self._call(
                f"/v1/activities/{PLAN.checkout_activity}/claim",
                {"channel": "checkout"},
                headers,
                "checkout claim",
                CREATED,
            )
            if claimed is None:
                return
            shopper.has_coupon = True
        lines = _cart()
        quote = self._call("/v1/checkout/quote", {"lines": lines}, headers, "quote", OK)
        if quote is None:
            return
        if not quote["usable"]:
            OUTCOMES["quote: nothing usable"] += 1
            shopper.has_coupon = False
            return
        order_id = f"{PLAN.tag}-o-{secrets.token_hex(8)}"
        coupon_id = quote["usable"][0]["coupon_id"]
        body = {"order_id": order_id, "coupon_id": coupon_id, "lines": lines}
        if self._call("/v1/checkout/lock", body, headers, "lock", OK) is None:
            return
        shopper.has_coupon = False
        order = {"order_id": order_id}
        if random.random() < RELEASE_SHARE:
            shopper.has_coupon = self._call("/v1/checkout/release", order, headers, "release", OK) is not None
            return
        if self._call("/v1/checkout/redeem", order, headers, "redeem", OK) is None:
            return
        if random.random() < REFUND_SHARE:
            refund = self._call("/v1/checkout/refund", order, headers, "refund", OK)
            shopper.has_coupon = bool(refund and refund["returned"])


def _wrong_code(real: str | None) -> str:
    """A typo of a real code (one symbol changed: the check character catches it) or a well-formed guess."""
    if real and random.random() < 0.5:
        symbols = list(real.replace("-", ""))
        at = random.randrange(len(symbols))
        symbols[at] = random.choice([s for s in ALPHABET if s != symbols[at]])
        return shown("".join(symbols))
    data = "".join(random.choice(ALPHABET) for _ in range(DATA_SYMBOLS))
    return shown(data + check_symbol(data))


class CodeUser(FastHttpUser):
    """Users typing codes: LOADTEST_WRONG_CODES of the attempts are wrong (404 invalid_code expected), at most
    LOADTEST_WRONG_PER_USER per user, below the 10 an hour that make every redeem 429 rate_limited (so a 429
    is a failure here). Each process redeems codes of its own batch, each once; a new batch is made when they
    run out."""

    wait_time = between(0, 0.1)

    @task
    def redeem(self) -> None:
        holder = next(PLAN.code_holders)
        if random.random() < WRONG_SHARE and holder.wrong < WRONG_PER_USER:
            holder.wrong += 1
            code = _wrong_code(PLAN.codes[0] if PLAN.codes else None)
            name, expected = "code redeem (wrong)", WRONG_CODE
        else:
            code = self._next_code()
            name, expected = "code redeem", CREATED
        with self.client.post(
            "/v1/codes/redeem", json={"code": code}, headers=holder.headers, name=name, catch_response=True
        ) as reply:
            settle(reply, name, expected)

    def _next_code(self) -> str:
        with _codes_lock:
            if not PLAN.codes:
                made = Admin(self.host).codes(PLAN.code_activity, CODES_PER_BATCH)
                PLAN.codes.extend(made)
                log.info("codes: another batch of %d", len(made))
            return PLAN.codes.popleft()
