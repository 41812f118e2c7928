"""What a locust run is told through the environment (read once, when locust loads the locustfile)."""

from __future__ import annotations

import os


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
