"""Settings read from ``CLAIMGATE_*`` environment variables, in one place, into frozen structs."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import msgspec

PREFIX = "CLAIMGATE_"
MIN_SECRET_BYTES = 32


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


DURABILITY = ("fast", "safe")


class RedisSettings(msgspec.Struct, frozen=True):
    url: str
    wallet_buckets: int = 64
    code_buckets: int = 64
    max_connections: int = 64
    durability: str = "fast"  # fast: AOF everysec; safe: appendfsync always, or WAIT on replicas (README)
    wait_replicas: int = 0  # replicas each write must reach before its answer (single-node Redis only)
    wait_timeout_ms: int = 100


class PostgresSettings(msgspec.Struct, frozen=True):
    url: str
    pool_min: int = 1
    pool_max: int = 10


class AuthSettings(msgspec.Struct, frozen=True):
    jwt_secret: str
    api_keys: dict[str, str]  # key -> operator name
    service_keys: frozenset[str]


class ClaimSettings(msgspec.Struct, frozen=True):
    idempotency_ttl_seconds: int = 86_400 + 3_600
    blocklist_refresh_seconds: float = 1.0
    max_clock_skew_seconds: float = (
        1.0  # a process further than this from Redis's clock makes no state change
    )


class CheckoutSettings(msgspec.Struct, frozen=True):
    lock_seconds: int = 900  # how long a checkout lock holds (product.md: 15 minutes by default)
    code_hash_key: str = ""  # the key codes are hashed with (CLAIMGATE_CODE_HASH_KEY, 32+ bytes, required)


THIRTY_DAYS = 30 * 86_400


class RetentionSettings(msgspec.Struct, frozen=True):
    """How long what is finished stays in Redis (product.md "Retention"): final coupons, finished orders' and
    redeemed codes' tombstones, ended activities' partitions. Never shorter than a promise that needs them there:
    the idempotency time and the lock time (load_settings refuses less)."""

    seconds: int = THIRTY_DAYS


class ShedSettings(msgspec.Struct, frozen=True):
    lag: int = 0  # stream entries not yet persisted past which claims are shed; 0: from memory (load.py)
    memory: float = 0.9  # fraction of Redis's maxmemory past which claims are shed
    check_seconds: float = 0.5  # how often the gateway measures both


class WorkerSettings(msgspec.Struct, frozen=True):
    name: str = "worker"  # its consumer name; each worker needs its own (default: host and pid)
    batch_size: int = 500
    idle_sleep_seconds: float = 0.05
    claim_idle_ms: int = 30_000
    trim_seconds: float = 10.0  # how often streams are trimmed below what is pending or undelivered
    dead_after: int = 3  # failures of an entry's own before it moves to its dead-letter stream
    sweep_seconds: float = 5.0  # how often the sweeps run: lapsed locks, then coupons past their validity
    lanes: int = 2  # 2: activities' streams and the rest read and written apart; 1: one batch at a time
    quiet_poll_seconds: float = 2.0  # how often a quiet stream (no work expected: worker/polling.py) is read


class OpsSettings(msgspec.Struct, frozen=True):
    """The operations listeners (detailed readiness, metrics): loopback unless configured; port 0: none."""

    host: str = "127.0.0.1"
    port: int = 9180  # the gateway's
    worker_port: int = 9181  # the worker's


class Settings(msgspec.Struct, frozen=True):
    redis: RedisSettings
    postgres: PostgresSettings
    auth: AuthSettings
    claim: ClaimSettings = ClaimSettings()
    worker: WorkerSettings = WorkerSettings()
    shed: ShedSettings = ShedSettings()
    checkout: CheckoutSettings = CheckoutSettings()
    ops: OpsSettings = OpsSettings()
    retention: RetentionSettings = RetentionSettings()


def _lanes(env: Mapping[str, str]) -> int:
    lanes = _int(env, "WORKER_LANES", 2)
    if lanes > 2:
        raise SettingsError(f"{PREFIX}WORKER_LANES must be 1 or 2, got {lanes}")
    return lanes


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{PREFIX}{name} must be at least {minimum}, got {value}")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    port = _int(env, name, default, minimum=0)
    if port > 65535:
        raise SettingsError(f"{PREFIX}{name} must be a TCP port (0: none), got {port}")
    return port


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{PREFIX}{name} must be positive, got {value}")
    return value


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if value > 1:
        raise SettingsError(f"{PREFIX}{name} must be a fraction between 0 and 1, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = env.get(PREFIX + name) or choices[0]
    if raw not in choices:
        raise SettingsError(f"{PREFIX}{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _required(env: Mapping[str, str], name: str) -> str:
    raw = env.get(PREFIX + name, "").strip()
    if not raw:
        raise SettingsError(f"{PREFIX}{name} is required")
    return raw


def parse_api_keys(raw: str, name: str = "API_KEYS") -> dict[str, str]:
    """``operator:key,operator2:key2`` -> {key: operator}. A key given twice is refused (the audit would name
    whichever operator came last)."""
    keys: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        operator, sep, key = item.partition(":")
        if not sep or not operator or len(key) < 16:
            raise SettingsError(
                f"{PREFIX}{name} entries must look like operator:key with a key of 16+ characters"
            )
        if key in keys:
            raise SettingsError(
                f"{PREFIX}{name} gives one key to two entries ({keys[key]!r} and {operator!r}): each operator"
                " needs a key of its own"
            )
        keys[key] = operator
    if not keys:
        raise SettingsError(f"{PREFIX}{name} must name at least one operator:key")
    return keys


def parse_service_keys(raw: str) -> frozenset[str]:
    keys = frozenset(filter(None, (part.strip() for part in raw.split(","))))
    if not keys or any(len(k) < 16 for k in keys):
        raise SettingsError(f"{PREFIX}SERVICE_KEYS must list keys of 16+ characters, comma-separated")
    return keys


def without_password(url: str) -> str:
    """``url`` fit for a message: any password in it replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _retention(env: Mapping[str, str], claim: ClaimSettings, checkout: CheckoutSettings) -> RetentionSettings:
    """``CLAIMGATE_RETENTION``, refused when shorter than the idempotency time or the lock time: a repeated call
    within either must still find what it needs in Redis."""
    seconds = _int(env, "RETENTION", THIRTY_DAYS)
    for name, bound in (
        ("IDEMPOTENCY_TTL", claim.idempotency_ttl_seconds),
        ("LOCK_SECONDS", checkout.lock_seconds),
    ):
        if seconds < bound:
            raise SettingsError(
                f"{PREFIX}RETENTION ({seconds} s) must be at least {PREFIX}{name} ({bound} s): what leaves Redis"
                " after the retention must outlive every promise that needs it there"
            )
    return RetentionSettings(seconds=seconds)


def _redis_url(env: Mapping[str, str]) -> str:
    url = _required(env, "REDIS_URL")
    if url.startswith("rediss://"):
        # The claim path's own transport (gateway/scripts/transport.py) speaks plain TCP: refused here rather than
        # accepted and then failing at the first claim.
        raise SettingsError(
            f"{PREFIX}REDIS_URL: TLS to Redis (rediss://) is not supported; use redis:// on a trusted network"
            " or a TLS tunnel to it"
        )
    if not url.startswith(("redis://", "unix://")):
        raise SettingsError(
            f"{PREFIX}REDIS_URL must be a redis:// or unix:// URL, got {without_password(url)!r}"
        )
    return url


def _code_hash_key(env: Mapping[str, str]) -> str:
    """The key codes are hashed with: 32+ bytes, required (``claimgate up`` makes one up). It must outlive
    every code made with it, so it is not derived from the JWT secret, which is rotated."""
    key = _required(env, "CODE_HASH_KEY")
    if len(key.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(f"{PREFIX}CODE_HASH_KEY must be at least {MIN_SECRET_BYTES} bytes")
    return key


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting; raise SettingsError naming the first bad variable."""
    env = os.environ if env is None else env
    secret = _required(env, "JWT_SECRET")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(f"{PREFIX}JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
    redis_url = _redis_url(env)
    database_url = _required(env, "DATABASE_URL")
    if not database_url.startswith(("postgresql://", "postgres://")):
        raise SettingsError(f"{PREFIX}DATABASE_URL must be a postgresql:// URL")
    api_keys = parse_api_keys(_required(env, "API_KEYS"))
    service_keys = parse_service_keys(_required(env, "SERVICE_KEYS"))
    if service_keys & api_keys.keys():
        raise SettingsError(
            f"{PREFIX}SERVICE_KEYS and {PREFIX}API_KEYS share a key: an operator's key and the order service's"
            " must differ"
        )
    claim = ClaimSettings(
        idempotency_ttl_seconds=_int(env, "IDEMPOTENCY_TTL", 86_400 + 3_600, minimum=86_400),
        blocklist_refresh_seconds=_float(env, "BLOCKLIST_REFRESH", 1.0),
        max_clock_skew_seconds=_float(env, "MAX_CLOCK_SKEW", 1.0),
    )
    checkout = CheckoutSettings(
        lock_seconds=_int(env, "LOCK_SECONDS", 900), code_hash_key=_code_hash_key(env)
    )
    return Settings(
        redis=RedisSettings(
            url=redis_url,
            wallet_buckets=_int(env, "WALLET_BUCKETS", 64),
            code_buckets=_int(env, "CODE_BUCKETS", 64),
            max_connections=_int(env, "REDIS_MAX_CONNECTIONS", 64),
            durability=_choice(env, "DURABILITY", DURABILITY),
            wait_replicas=_int(env, "WAIT_REPLICAS", 0, minimum=0),
            wait_timeout_ms=_int(env, "WAIT_TIMEOUT_MS", 100),
        ),
        postgres=PostgresSettings(
            url=database_url,
            pool_min=_int(env, "PG_POOL_MIN", 1),
            pool_max=_int(env, "PG_POOL_MAX", 10),
        ),
        auth=AuthSettings(
            jwt_secret=secret,
            api_keys=api_keys,
            service_keys=service_keys,
        ),
        claim=claim,
        worker=WorkerSettings(
            name=env.get(PREFIX + "WORKER_NAME") or f"{socket.gethostname()}-{os.getpid()}",
            batch_size=_int(env, "WORKER_BATCH", 500),
            idle_sleep_seconds=_float(env, "WORKER_IDLE_SLEEP", 0.05),
            claim_idle_ms=_int(env, "WORKER_CLAIM_IDLE_MS", 30_000),
            trim_seconds=_float(env, "WORKER_TRIM_SECONDS", 10.0),
            dead_after=_int(env, "WORKER_DEAD_AFTER", 3),
            sweep_seconds=_float(env, "WORKER_SWEEP_SECONDS", 5.0),
            quiet_poll_seconds=_float(env, "WORKER_QUIET_POLL", 2.0),
            lanes=_lanes(env),
        ),
        checkout=checkout,
        retention=_retention(env, claim, checkout),
        ops=OpsSettings(
            host=env.get(PREFIX + "OPS_HOST") or "127.0.0.1",
            port=_port(env, "OPS_PORT", 9180),
            worker_port=_port(env, "WORKER_OPS_PORT", 9181),
        ),
        shed=ShedSettings(
            lag=_int(env, "SHED_LAG", 0),
            memory=_fraction(env, "SHED_MEMORY", 0.9),
            check_seconds=_float(env, "LOAD_CHECK_SECONDS", 0.5),
        ),
    )
