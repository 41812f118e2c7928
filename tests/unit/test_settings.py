from __future__ import annotations

import pytest

from gateway.settings import SettingsError, load_settings

GOOD = {
    "CLAIMGATE_REDIS_URL": "redis://127.0.0.1:6379/0",
    "CLAIMGATE_DATABASE_URL": "postgresql://u@127.0.0.1/db",
    "CLAIMGATE_JWT_SECRET": "s" * 32,
    "CLAIMGATE_API_KEYS": "alice:0123456789abcdef,bob:fedcba9876543210",
    "CLAIMGATE_SERVICE_KEYS": "svc-0123456789abcdef",
    "CLAIMGATE_CODE_HASH_KEY": "k" * 32,
}


def test_reads_every_setting() -> None:
    settings = load_settings({**GOOD, "CLAIMGATE_WALLET_BUCKETS": "16", "CLAIMGATE_BLOCKLIST_REFRESH": "0.5"})
    assert settings.auth.api_keys == {"0123456789abcdef": "alice", "fedcba9876543210": "bob"}
    assert settings.auth.service_keys == frozenset({"svc-0123456789abcdef"})
    assert settings.redis.wallet_buckets == 16
    assert settings.claim.blocklist_refresh_seconds == 0.5
    assert settings.claim.idempotency_ttl_seconds >= 86_400


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLAIMGATE_JWT_SECRET", "short"),
        ("CLAIMGATE_JWT_SECRET", ""),
        ("CLAIMGATE_REDIS_URL", "http://x"),
        ("CLAIMGATE_DATABASE_URL", "mysql://x"),
        ("CLAIMGATE_API_KEYS", "no-colon-here-0123456789"),
        ("CLAIMGATE_API_KEYS", "alice:short"),
        ("CLAIMGATE_SERVICE_KEYS", "short"),
        ("CLAIMGATE_WALLET_BUCKETS", "many"),
        ("CLAIMGATE_WALLET_BUCKETS", "0"),
        ("CLAIMGATE_IDEMPOTENCY_TTL", "3600"),
        ("CLAIMGATE_BLOCKLIST_REFRESH", "-1"),
        ("CLAIMGATE_SHED_LAG", "lots"),
        ("CLAIMGATE_SHED_LAG", "0"),
        ("CLAIMGATE_SHED_MEMORY", "1.5"),
        ("CLAIMGATE_SHED_MEMORY", "0"),
        ("CLAIMGATE_LOAD_CHECK_SECONDS", "-2"),
        ("CLAIMGATE_API_KEYS", "alice:0123456789abcdef,bob:0123456789abcdef"),
        ("CLAIMGATE_SERVICE_KEYS", "0123456789abcdef"),  # an operator's key too
        ("CLAIMGATE_REDIS_URL", "rediss://127.0.0.1:6380/0"),
        ("CLAIMGATE_CODE_HASH_KEY", ""),
        ("CLAIMGATE_CODE_HASH_KEY", "k" * 31),
    ],
)
def test_a_bad_value_fails_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({**GOOD, name: value})


def test_a_missing_required_variable_is_named() -> None:
    env = dict(GOOD)
    del env["CLAIMGATE_DATABASE_URL"]
    with pytest.raises(SettingsError, match="CLAIMGATE_DATABASE_URL"):
        load_settings(env)


def test_a_bad_url_is_named_without_its_password() -> None:
    with pytest.raises(SettingsError, match="CLAIMGATE_REDIS_URL") as refused:
        load_settings({**GOOD, "CLAIMGATE_REDIS_URL": "http://admin:hunter2-secret@cache:6379/0"})
    assert "hunter2" not in str(refused.value) and "admin:***@cache:6379" in str(refused.value)


def test_a_key_given_twice_names_both_operators_but_not_the_key() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings({**GOOD, "CLAIMGATE_API_KEYS": "alice:0123456789abcdef,bob:0123456789abcdef"})
    assert "'alice'" in str(refused.value) and "'bob'" in str(refused.value)
    assert "0123456789abcdef" not in str(refused.value)


def test_retention_defaults_to_thirty_days() -> None:
    assert load_settings(GOOD).retention.seconds == 2_592_000


# Each bound in turn the longer one: the idempotency time (at least 86400), then a lock time set above it.
BOUNDS = [
    ({"CLAIMGATE_IDEMPOTENCY_TTL": "100000"}, "CLAIMGATE_IDEMPOTENCY_TTL", 100_000),
    (
        {"CLAIMGATE_IDEMPOTENCY_TTL": "86400", "CLAIMGATE_LOCK_SECONDS": "200000"},
        "CLAIMGATE_LOCK_SECONDS",
        200_000,
    ),
]


@pytest.mark.parametrize(("extra", "name", "minimum"), BOUNDS, ids=["idempotency", "lock"])
def test_retention_is_accepted_at_its_minimum(extra: dict[str, str], name: str, minimum: int) -> None:
    settings = load_settings({**GOOD, **extra, "CLAIMGATE_RETENTION": str(minimum)})
    assert settings.retention.seconds == minimum


@pytest.mark.parametrize(("extra", "name", "minimum"), BOUNDS, ids=["idempotency", "lock"])
def test_retention_below_a_bound_is_refused_naming_both_values(
    extra: dict[str, str], name: str, minimum: int
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings({**GOOD, **extra, "CLAIMGATE_RETENTION": str(minimum - 1)})
    message = str(refused.value)
    assert f"CLAIMGATE_RETENTION ({minimum - 1} s)" in message, message
    assert f"{name} ({minimum} s)" in message, message


@pytest.mark.parametrize("value", ["month", "0", "-5"])
def test_a_retention_that_is_no_number_of_seconds_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="CLAIMGATE_RETENTION"):
        load_settings({**GOOD, "CLAIMGATE_RETENTION": value})
