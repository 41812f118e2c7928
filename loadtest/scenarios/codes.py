"""Code redemption, with some wrong codes (typos and guesses) that must be refused as ``invalid_code``."""

from __future__ import annotations

import logging
import random

import gevent.lock
from locust import FastHttpUser, between, task

from gateway.codes.format import ALPHABET, DATA_SYMBOLS, check_symbol, shown
from loadtest.scenarios.admin import Admin
from loadtest.scenarios.config import CODES_PER_BATCH, WRONG_PER_USER, WRONG_SHARE
from loadtest.scenarios.outcomes import CREATED, WRONG_CODE, settle
from loadtest.scenarios.plan import current

log = logging.getLogger("claimgate.loadtest")
_codes_lock = gevent.lock.Semaphore()


def wrong_code(real: str | None) -> str:
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
        plan = current()
        holder = next(plan.code_holders)
        if random.random() < WRONG_SHARE and holder.wrong < WRONG_PER_USER:
            holder.wrong += 1
            code = wrong_code(plan.codes[0] if plan.codes else None)
            name, expected = "code redeem (wrong)", WRONG_CODE
        else:
            code = self._next_code()
            name, expected = "code redeem", CREATED
        with self.client.post(
            "/v1/codes/redeem", json={"code": code}, headers=holder.headers, name=name, catch_response=True
        ) as reply:
            settle(reply, name, expected)

    def _next_code(self) -> str:
        plan = current()
        with _codes_lock:
            if not plan.codes:
                made = Admin(self.host).codes(plan.code_activity, CODES_PER_BATCH)
                plan.codes.extend(made)
                log.info("codes: another batch of %d", len(made))
            return plan.codes.popleft()
