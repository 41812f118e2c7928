"""The claim scenarios: the flash-sale rush (one activity, most claims after sell-out) and the livestream's
bursts (a fresh drop per burst, wallets polled in between)."""

from __future__ import annotations

import random
import time

from locust import FastHttpUser, between, task

from loadtest.scenarios.config import BURST_EVERY, BURST_SECONDS, POLL_SECONDS, REACTION_SECONDS
from loadtest.scenarios.outcomes import CLAIMED, OK, settle
from loadtest.scenarios.plan import current


class FlashSaleUser(FastHttpUser):
    """Each virtual user fires claims for one user after another (every request a different user), so a few
    hundred of them are tens of thousands of users pressing claim; once sold out, nearly all answers are 409."""

    wait_time = between(0, 0.05)

    @task
    def claim(self) -> None:
        plan = current()
        with self.client.post(
            f"/v1/activities/{plan.shared.rush_activity}/claim",
            headers=next(plan.rush),
            name="claim",
            catch_response=True,
        ) as reply:
            settle(reply, "claim", CLAIMED)


def current_burst(now: float) -> int | None:
    """The burst the host is calling now (by the shared clock), or None between bursts."""
    since = now - current().shared.first_burst
    if since < 0:
        return None
    k = int(since // BURST_EVERY)
    return k if since - k * BURST_EVERY < BURST_SECONDS else None


def until_next_burst(now: float) -> float:
    since = now - current().shared.first_burst
    if since < 0:
        return -since
    return BURST_EVERY - since % BURST_EVERY


class LivestreamUser(FastHttpUser):
    """Idle viewers who poll their wallet now and then; when a burst starts (every LOADTEST_BURST_EVERY s, by
    the wall clock every generator shares) all of them tap claim on that burst's drop with no wait, a different
    user with every tap, until the burst is over."""

    def on_start(self) -> None:
        self.me = random.choice(current().live)

    def wait_time(self) -> float:
        now = time.time()
        if current_burst(now) is not None:
            return 0.0
        poll = random.uniform(0.5, 1.5) * POLL_SECONDS
        return min(poll, until_next_burst(now) + random.uniform(0, REACTION_SECONDS))

    @task
    def tap_or_poll(self) -> None:
        plan = current()
        k = current_burst(time.time())
        if k is not None and k < len(plan.shared.drops):
            with self.client.post(
                f"/v1/activities/{plan.shared.drops[k]}/claim",
                headers=next(plan.live_taps),
                name="drop claim",
                catch_response=True,
            ) as reply:
                settle(reply, "drop claim", CLAIMED)
            return
        with self.client.get(
            "/v1/coupons?limit=20", headers=self.me, name="wallet", catch_response=True
        ) as reply:
            settle(reply, "wallet", OK)
