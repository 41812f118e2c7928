"""Locust scenarios. Flash-sale rush: many users claim one activity, most of them after it sold out.

    CLAIMGATE_JWT_SECRET=... LOADTEST_ACTIVITY=<id> locust -f loadtest/locustfile.py --host http://127.0.0.1:8000

Tokens for LOADTEST_USERS users (default 50,000) are minted up front, so the generator spends nothing on them.
"""

from __future__ import annotations

import itertools
import os

from locust import FastHttpUser, between, task

from gateway.tokens import mint_user_token

SECRET = os.environ.get("CLAIMGATE_JWT_SECRET", "")
ACTIVITY = os.environ.get("LOADTEST_ACTIVITY", "")
USERS = int(os.environ.get("LOADTEST_USERS", "50000"))
DEVICES = int(os.environ.get("LOADTEST_DEVICES", str(USERS)))
TOKENS = (
    [
        mint_user_token(SECRET, f"load-{i}", f"load-dev-{i % DEVICES}", ttl_seconds=6 * 3600)
        for i in range(USERS)
    ]
    if SECRET
    else []
)
_next_token = itertools.cycle(TOKENS)


class FlashSaleUser(FastHttpUser):
    wait_time = between(0, 0.05)

    @task
    def claim(self) -> None:
        headers = {"Authorization": f"Bearer {next(_next_token)}"}
        with self.client.post(
            f"/v1/activities/{ACTIVITY}/claim", headers=headers, name="claim", catch_response=True
        ) as reply:
            if reply.status_code in (201, 409):
                reply.success()
            else:
                reply.failure(f"{reply.status_code} {reply.text[:200]}")
