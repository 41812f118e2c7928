"""Every key the project writes names its retention: a workload writes every key (tests/lua/every_key.py: every
script that writes, and what the processes write without one), and each key Redis held at any point must match
exactly one row of gateway.key_retention.RETENTION, of the row's type, expiring by itself exactly when the row
says so."""

from __future__ import annotations

import asyncpg
import pytest

from gateway.key_retention import RETENTION, Retention
from gateway.scripts.registry import load_scripts
from gateway.scripts.runner import RedisClient
from tests.lua.every_key import Seen, Watching, every_key
from tests.unit.test_key_builders_retention import LANDING  # rows of keys still to arrive


def key_problems(seen: Seen, table: tuple[Retention, ...]) -> list[str]:
    """What is wrong with each key seen, held against ``table``."""
    problems = []
    for key, observed in sorted(seen.items()):
        rows = [row for row in table if row.matches(key)]
        if len(rows) != 1:
            problems.append(
                f"{key} matches {len(rows)} rows of the retention table: {[r.pattern for r in rows]}"
            )
            continue
        [row] = rows
        for kind, expires in sorted(observed):
            if kind != row.kind:
                problems.append(f"{key} is a {kind}; its row {row.pattern} says {row.kind}")
            if expires != row.expires:
                says = "expires by itself" if row.expires else "has no expiry"
                problems.append(
                    f"{key} {'has' if expires else 'has no'} expiry; its row {row.pattern} says it {says}"
                )
    return problems


@pytest.fixture
async def seen(redis_client: RedisClient, db: asyncpg.Pool) -> Watching:
    runner = Watching(redis_client)
    await runner.load_all()
    await every_key(runner, db)
    return runner


async def test_every_key_written_matches_exactly_one_row(seen: Watching) -> None:
    assert key_problems(seen.seen, RETENTION) == []


async def test_the_workload_runs_every_script_that_writes_and_meets_every_row(seen: Watching) -> None:
    writers = {name for name, script in load_scripts().items() if not script.read_only}
    assert writers - seen.scripts_run == set()
    met = {row.pattern for row in RETENTION if any(row.matches(key) for key in seen.seen)}
    assert {row.pattern for row in RETENTION} - met == LANDING


async def test_a_key_without_its_row_fails_naming_the_key(seen: Watching) -> None:
    """Drop any row the workload meets: the keys it covered now match none, and the check names them."""
    for dropped in (row for row in RETENTION if row.pattern not in LANDING):
        table = tuple(row for row in RETENTION if row is not dropped)
        problems = key_problems(seen.seen, table)
        covered = [key for key in seen.seen if dropped.matches(key)]
        assert problems and all(p.endswith("matches 0 rows of the retention table: []") for p in problems)
        assert {p.split(" ", 1)[0] for p in problems} == set(covered), dropped.pattern
