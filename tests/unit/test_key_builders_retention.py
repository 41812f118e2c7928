"""Every key gateway/keys.py builds names its retention, read from the module itself: each property, method,
function and constant there typed as a string builds a key matching exactly one row of RETENTION, or is named
below as no key; and every row is built by something (no stale rows)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from gateway import keys
from gateway.key_retention import RETENTION, Retention

# Rows whose builders land in parallel (issue 22's expiry sweep adds WalletKeys.expiring and .finished): once they
# land, test_landing_rows_have_no_builder_yet fails: take them out of this set.
LANDING: set[str] = set()
# What in keys.py is typed as a string without being a key, and what it is.
NOT_KEYS = {
    "EVENTS_SUFFIX": "the ending of every stream's name",
    "ACTIVITY_TAG_PREFIX": "the beginning of an activity's tag",
    "idempotency_digest": "a part of a key's name",
    "order_field": "a field of the orders hash",
    "activity_of_partition": "an activity id, read from a tag",
    "partition_of_stream": "a tag, read from a stream's name",
    "WalletKeys.user_of_index": "a user id, read from a key",
}
# An instance of each class whose members build keys, to call them on.
SAMPLES: dict[type, object] = {
    keys.Partition: keys.Partition("{w:5}"),
    keys.ActivityKeys: keys.KeySpace.activity("act-1"),
    keys.WalletKeys: keys.KeySpace.wallet_of_bucket(3),
    keys.CodeKeys: keys.KeySpace.code_of_bucket(2),
    keys.BlocklistKeys: keys.BLOCKLIST,
    keys.KeySpace: keys.KeySpace(8, 4),
}
# A parameter that reads a name rather than building one gets a real one; any other parameter ``<name>-1``.
ARGUMENTS = {
    "partition": keys.KeySpace.activity("act-1").tag,
    "stream": keys.KeySpace.activity("act-1").events,
}


def _returns_str(function: Callable[..., Any]) -> bool:
    return inspect.get_annotations(function).get("return") == "str"


def _call(function: Callable[..., Any], *bound: object) -> str:
    """``function`` called with a sample string for each of its own parameters (every builder takes strings)."""
    own = list(inspect.signature(function).parameters)[len(bound) :]
    return str(function(*bound, *(ARGUMENTS.get(name, f"{name}-1") for name in own)))


def _members(cls: type) -> dict[str, str]:
    """``Class.member`` -> the key it builds, for each member typed as a string, its own or inherited from a class
    of keys.py (a partition's seq, events and dead letters: built on each kind of partition)."""
    found = {}
    inherited = [vars(base) for base in reversed(cls.__mro__) if base.__module__ == keys.__name__]
    for name, member in {name: m for members in inherited for name, m in members.items()}.items():
        function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        if name.startswith("_") or not callable(function) or not _returns_str(function):
            continue
        assert cls in SAMPLES, f"keys.{cls.__name__}.{name} builds a string: add a sample {cls.__name__} here"
        bound = () if isinstance(member, staticmethod) else (SAMPLES[cls],)
        found[f"{cls.__name__}.{name}"] = _call(function, *bound)
    return found


def builders() -> dict[str, str]:
    """Every name in keys.py typed as a string (constants, functions, class members) -> what it builds."""
    found: dict[str, str] = {}
    for name, value in vars(keys).items():
        if name.startswith("_") or getattr(value, "__module__", keys.__name__) != keys.__name__:
            continue
        if isinstance(value, str):
            found[name] = value
        elif inspect.isclass(value):
            found.update(_members(value))
        elif inspect.isfunction(value) and _returns_str(value):
            found[name] = _call(value)
    return found


def builder_problems(built: dict[str, str], table: tuple[Retention, ...]) -> list[str]:
    problems = []
    for name, key in sorted(built.items()):
        rows = [row.pattern for row in table if row.matches(key)]
        if name not in NOT_KEYS and len(rows) != 1:
            problems.append(
                f"keys.{name} builds {key!r}, which matches {len(rows)} rows of RETENTION: {rows}"
            )
    return problems


def stale_rows(built: dict[str, str], table: tuple[Retention, ...]) -> set[str]:
    keys_built = [key for name, key in built.items() if name not in NOT_KEYS]
    return {row.pattern for row in table if not any(row.matches(key) for key in keys_built)} - LANDING


def test_every_key_builder_names_its_retention() -> None:
    built = builders()
    assert {"ActivityKeys.config", "WalletKeys.user_index", "Partition.dead_letters", "FENCE_CHECKED"} <= set(
        built
    )
    assert builder_problems(built, RETENTION) == []


def test_every_row_is_built_by_something() -> None:
    assert stale_rows(builders(), RETENTION) == set()


def test_landing_rows_have_no_builder_yet() -> None:
    built = builders().values()
    landed = {
        row.pattern for row in RETENTION if row.pattern in LANDING and any(row.matches(k) for k in built)
    }
    assert landed == set(), "these keys have their builders now: take them out of LANDING"
    assert {row.pattern for row in RETENTION} >= LANDING


def test_what_is_named_no_key_is_still_there() -> None:
    assert set(NOT_KEYS) - set(builders()) == set()


def test_rows_are_distinct_and_well_formed() -> None:
    """Each row's own example (its ``*`` filled in) matches that row alone; types are Redis's."""
    for row in RETENTION:
        example = row.pattern.replace("*", "x1")
        assert [r.pattern for r in RETENTION if r.matches(example)] == [row.pattern]
        assert row.kind in {"string", "hash", "set", "zset", "stream"}, row
        assert row.lives and row.lives == row.lives.strip(), row


@pytest.mark.parametrize(
    "dropped", [row for row in RETENTION if row.pattern not in LANDING], ids=lambda r: r.pattern
)
def test_a_builder_without_its_row_fails(dropped: Retention) -> None:
    table = tuple(row for row in RETENTION if row is not dropped)
    problems = builder_problems(builders(), table)
    assert problems and all("matches 0 rows" in problem for problem in problems)


def test_a_new_builder_without_a_row_fails() -> None:
    built = {**builders(), "WalletKeys.wishlist": keys.KeySpace.wallet_of_bucket(3).tag + ":wishlist"}
    assert builder_problems(built, RETENTION) == [
        "keys.WalletKeys.wishlist builds '{w:3}:wishlist', which matches 0 rows of RETENTION: []"
    ]


def test_a_row_nothing_builds_is_stale() -> None:
    table = (*RETENTION, Retention("{w:*}:wishlist", "set", "kept"))
    assert stale_rows(builders(), table) == {"{w:*}:wishlist"}
