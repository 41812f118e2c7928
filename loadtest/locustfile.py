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

The scenarios live in ``loadtest/scenarios/`` (one module a job); this file names the user classes locust runs
and registers the set-up hooks.
"""

from __future__ import annotations

import loadtest.scenarios.hooks  # noqa: F401  (registers the set-up at test start and the summary at the end)
from loadtest.scenarios.checkout import CheckoutUser
from loadtest.scenarios.claims import FlashSaleUser, LivestreamUser
from loadtest.scenarios.codes import CodeUser

__all__ = ["CheckoutUser", "CodeUser", "FlashSaleUser", "LivestreamUser"]
