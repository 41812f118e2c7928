"""Where shedding starts: Redis's memory headroom bounds the events waiting to be persisted (they live there); a
fixed lag applies only where configured or where Redis has no maxmemory to measure."""

from __future__ import annotations

from gateway.claim.shedding import FALLBACK_LAG, Load, LoadWatch
from gateway.keys import KeySpace
from gateway.settings import ShedSettings

GIB = 1 << 30


def watch(**settings: float) -> LoadWatch:
    return LoadWatch(ShedSettings(**settings), KeySpace(8, 4))  # type: ignore[arg-type]


def test_with_maxmemory_a_lag_far_past_the_old_fixed_point_is_served_while_memory_lasts() -> None:
    # A minute of Postgres outage at peak: ~1.5 million events, 40% of a 4 GiB Redis.
    assert watch().verdict(Load(lag=1_500_000, memory_used=int(1.6 * GIB), memory_max=4 * GIB)) == ""


def test_with_maxmemory_claims_are_shed_once_memory_passes_its_share() -> None:
    verdict = watch().verdict(Load(lag=3_000_000, memory_used=int(3.7 * GIB), memory_max=4 * GIB))
    assert verdict.startswith("Redis memory at 92% of maxmemory")


def test_without_maxmemory_the_fallback_lag_sheds() -> None:
    assert watch().verdict(Load(lag=FALLBACK_LAG, memory_used=GIB, memory_max=0)) == ""
    assert (
        watch()
        .verdict(Load(lag=FALLBACK_LAG + 1, memory_used=GIB, memory_max=0))
        .endswith(f"(limit {FALLBACK_LAG})")
    )


def test_a_configured_lag_applies_whatever_the_memory() -> None:
    assert "limit 5000" in watch(lag=5000).verdict(Load(lag=5001, memory_used=1, memory_max=4 * GIB))


def test_the_fullest_node_decides_not_the_clusters_total() -> None:
    # Two nodes of 4 GiB: the hot activity's at 95%, the other nearly empty; 50% in all.
    load = Load(lag=10, memory_used=4 * GIB, memory_max=8 * GIB, fullest=0.95)
    assert watch().verdict(load).startswith("Redis memory at 95% of maxmemory")
