"""The benchmark's repeated runs: the median and spread of a figure, ratios paired round by round, the
worst-end rule of a target's verdict, the phase selection (``--phases``, ``--repeat``) and how the report
shows them. No servers."""

from __future__ import annotations

import argparse
import json

import pytest

from claimgate.cli import parser
from loadtest.bench.command import run_benchmark
from loadtest.bench.phases import PHASES, activity_key, generators, phase_list, round_activities, select
from loadtest.bench.report import as_json, markdown, summary
from loadtest.bench.results import Figure, Phase, Results
from loadtest.bench.run import Run
from loadtest.bench.stats import MET, MET_AT_MEDIAN, NOT_MEASURED, NOT_MET, Rates, Spread, Target, targets


def test_a_spread_gives_the_median_its_ends_and_the_run_nearest_the_median() -> None:
    odd = Spread((9_000.0, 8_000.0, 10_000.0))
    assert (odd.median, odd.low, odd.high) == (9_000.0, 8_000.0, 10_000.0)
    assert odd.width == pytest.approx(2_000 / 9_000)
    assert odd.median_index == 0
    even = Spread((4.0, 1.0, 2.0, 10.0))
    assert even.median == 3.0  # the mean of the two middle runs
    assert even.median_index == 0  # 4.0 and 2.0 are as near: the first
    assert Spread.of([None, 5.0, None]).runs == (5.0,)
    empty = Spread(())
    assert empty.median is None and empty.low is None and empty.width is None and empty.median_index is None


def test_the_worst_end_is_the_lowest_run_for_at_least_and_the_highest_for_at_most() -> None:
    spread = Spread((0.5, 0.3, 0.4))
    assert spread.worst(">=") == 0.3
    assert spread.worst("<=") == 0.5


@pytest.mark.parametrize(
    ("runs", "op", "threshold", "verdict", "met"),
    [
        ((0.42, 0.45, 0.40), ">=", 0.4, MET, True),  # the worst run sits on the threshold: met
        ((0.42, 0.45, 0.39), ">=", 0.4, MET_AT_MEDIAN, False),  # median 0.42 meets, the worst 0.39 does not
        ((0.30, 0.45, 0.39), ">=", 0.4, NOT_MET, False),  # median 0.39 does not meet
        ((18.0, 24.0, 26.0), "<=", 25.0, MET_AT_MEDIAN, False),  # the worst of a latency is its highest
        ((18.0, 24.0, 25.0), "<=", 25.0, MET, True),
        ((26.0, 30.0, 24.0), "<=", 25.0, NOT_MET, False),
    ],
)
def test_a_target_is_met_only_when_the_worst_run_meets_it(
    runs: tuple[float, ...], op: str, threshold: float, verdict: str, met: bool
) -> None:
    target = Target("t", Spread(runs).median, op, threshold, "x", runs=runs)
    assert target.verdict == verdict
    assert target.met is met


def test_a_target_with_one_value_or_none() -> None:
    assert Target("x", 20.0, "<=", 25.0, "ms").verdict == MET  # no runs: the value is the only one
    assert Target("x", 30.0, "<=", 25.0, "ms").verdict == NOT_MET
    nothing = Target("x", None, ">=", 1.0, "x")
    assert nothing.verdict == NOT_MEASURED and nothing.met is None


def test_ratios_pair_the_figures_of_the_same_round() -> None:
    rounds = [
        Rates(claim=8_000, sold_out=17_000, bare=20_000, naive=1_000, worker=9_000, p99_at_80=20.0),
        Rates(claim=9_000, sold_out=24_000, bare=30_000, naive=800, worker=9_000, p99_at_80=24.0),
        Rates(claim=10_000, sold_out=18_000, bare=20_000, naive=None, worker=None, p99_at_80=26.0),
    ]
    found = {t.name: t for t in targets(rounds)}
    claim_bare = found["claim / bare HTTP"]
    assert claim_bare.runs == pytest.approx((0.4, 0.3, 0.5))
    assert claim_bare.value == pytest.approx(0.4)  # the median ratio, not 9,000 / 20,000 (medians) = 0.45
    assert claim_bare.verdict == MET_AT_MEDIAN
    assert found["sold-out / bare HTTP"].runs == pytest.approx((0.85, 0.8, 0.9))
    assert found["sold-out / bare HTTP"].verdict == MET
    naive = found["claim / naive baseline"]
    assert naive.runs == pytest.approx((8.0, 11.25))  # the round without a naive figure is left out
    assert naive.value == pytest.approx(9.625) and naive.verdict == NOT_MET
    assert found["worker rate / peak claim rate"].runs == pytest.approx((1.125, 1.0))
    assert found["worker rate / peak claim rate"].verdict == MET
    p99 = found["p99 at 80% of peak claim rate"]
    assert p99.runs == (20.0, 24.0, 26.0) and p99.verdict == MET_AT_MEDIAN


def test_phase_names_are_checked_and_kept_in_the_rounds_order() -> None:
    assert phase_list("bare, claim,sold_out") == ("bare", "claim", "sold_out")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown phase"):
        phase_list("claim,sold-out")
    with pytest.raises(argparse.ArgumentTypeError):
        phase_list(",")
    assert select(("bare", "sold_out", "claim"), "both") == ("claim", "sold_out", "bare")
    assert select(None, "both") == tuple(PHASES)
    assert "safe" not in select(None, "fast") and "safe" not in select(None, "safe")
    with pytest.raises(ValueError, match="select claim too"):
        select(("open_loop",), "both")
    with pytest.raises(ValueError, match="durability both"):
        select(("claim", "safe"), "fast")


def test_each_round_claims_from_activities_of_its_own() -> None:
    assert round_activities(("bare", "naive", "raw"), 100) == {}  # none through the gateway
    assert round_activities(("claim", "sold_out", "bare"), 100) == {
        "warm": (10_000_000, 1),
        "claim": (10_000_000, 1),
        "sold_out": (0, 1),
    }
    assert set(round_activities(tuple(PHASES), 500)) == {
        "warm", "claim", "sold_out", "open_loop", "warm_safe", "claim_safe", "backlog",
    }  # fmt: skip
    assert round_activities(("worker",), 500) == {"backlog": (500, 1)}
    assert round_activities(("idle",), 500) == {}  # its ended activities are made once, not per round
    assert activity_key("claim", 2) == "claim-2"


def test_a_run_needs_only_the_load_generators_of_its_phases() -> None:
    assert generators(("idle", "worker")) == {}
    assert generators(("raw", "idle")) == {"redis-benchmark": "redis-tools"}
    assert generators(("claim", "open_loop")) == {"wrk": "wrk", "h2load": "nghttp2-client"}
    assert set(generators(tuple(PHASES))) == {"wrk", "h2load", "redis-benchmark"}


def test_the_idle_phase_takes_its_activities_seconds_and_the_code_it_runs() -> None:
    args = parser().parse_args(
        ["benchmark", "--phases", "idle", "--idle-activities", "10", "--code", "/tmp/x"]
    )
    assert args.phases == ("idle",) and args.idle_activities == 10 and args.code == "/tmp/x"
    defaults = parser().parse_args(["benchmark"])
    assert (defaults.idle_activities, defaults.idle_seconds, defaults.idle_settle) == (1_000, 30, 15)


def test_the_command_line_takes_repeat_phases_and_seconds() -> None:
    args = parser().parse_args(
        ["benchmark", "--phases", "claim,sold_out,bare", "--repeat", "2", "--seconds", "3"]
    )
    assert args.phases == ("claim", "sold_out", "bare") and args.repeat == 2 and args.duration == 3
    defaults = parser().parse_args(["benchmark"])
    assert defaults.repeat == 3 and defaults.phases is None
    for bad in (["--repeat", "0"], ["--phases", "claims"]):
        with pytest.raises(SystemExit):
            parser().parse_args(["benchmark", *bad])


def test_a_selection_that_cannot_run_stops_before_any_server(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Run, "main", lambda self: pytest.fail("the run started"))
    args = parser().parse_args(["benchmark", "--phases", "open_loop,bare"])
    assert run_benchmark(args) == 2
    assert "select claim too" in capsys.readouterr().err


def three_runs() -> Results:
    results = Results(command="claimgate benchmark --repeat 3", started="2026-01-01 00:00 UTC")
    results.runs = 3
    results.phases_run = ["claim", "bare"]
    results.phases_skipped = [p for p in PHASES if p not in results.phases_run]
    for run, (claim, bare) in enumerate([(9_000.0, 30_000.0), (8_000.0, 20_000.0), (10_000.0, 20_000.0)], 1):
        results.figures += [
            Figure("claim_fast", "claim route", claim, "req/s", f"p99 {run} ms", run=run),
            Figure("bare", "bare HTTP ceiling", bare, "req/s", "raw ASGI", generator_bound=run == 1, run=run),
        ]
        phase = Phase(
            "claim_fast",
            "claim route, in stock",
            10.0,
            {"app": 9.0, "valkey": 3.0 * run},
            "wrk",
            1,
            1.5,
            False,
        )
        phase.requests, phase.run, phase.other_seconds, phase.wall_seconds = 90_000, run, 0.1 * run, 10.0
        results.phases.append(phase)
    rounds = [Rates(9_000, None, 30_000, None, None, None), Rates(8_000, None, 20_000, None, None, None)]
    results.targets = targets([*rounds, Rates(10_000, None, 20_000, None, None, None)])
    return results


def test_the_report_gives_each_figure_its_median_spread_and_runs() -> None:
    text = markdown(three_runs())
    assert "Phases run: claim, bare (not run: raw, sold_out," in text and "3 run(s) of each" in text
    assert (
        "| claim route | 9,000 req/s | 8,000–10,000 (22.2%) | 9,000 / 8,000 / 10,000 |"
        " run 1 (nearest the median): p99 1 ms |" in text
    )
    assert (
        "| bare HTTP ceiling | 20,000 req/s (generator-bound in 1 of 3 runs) | 20,000–30,000 (50.0%) |"
        in text
    )
    assert (
        "| claim / bare HTTP | 0.40x | ≥ 0.40x | met at the median only | 0.30x–0.50x (50.0%) | 0.30x / 0.40x / 0.50x |"
        in text
    )
    assert "| sold-out / bare HTTP | - | ≥ 0.80x | not measured |" in text
    # cores: medians over the runs (valkey 3, 6, 9 s over 10 s); others: the most any run saw
    assert "| claim route, in stock | 10.0 | 0.90 | 0.60 | - | - | 0.15 (wrk) | 1 | no | 0.03 |" in text
    # CPU per answer: 9 s / 90,000 = 100 µs; valkey's median 6 s / 90,000; the generator 1.5 s; all of them
    assert "| claim route, in stock | 90,000 | 100.0 | 66.7 | - | - | 16.7 | 183.3 |" in text
    data = json.loads(as_json(three_runs()))
    assert data["medians"]["claim_fast"] == {
        "median": 9000.0,
        "low": 8000.0,
        "high": 10000.0,
        "runs": [9000.0, 8000.0, 10000.0],
    }
    assert data["targets"][0]["verdict"] == MET_AT_MEDIAN and data["targets"][0]["met"] is False
    assert (
        "claim / bare HTTP: 0.40x (runs 0.30 / 0.40 / 0.50; target ≥ 0.40x): met at the median only"
        in summary(three_runs())
    )


def test_the_idle_figures_are_targets_of_at_most_two_percent_of_a_core() -> None:
    rounds = [
        Rates(None, None, None, None, None, None, idle_worker=1.0, idle_gateway=1.5),
        Rates(None, None, None, None, None, None, idle_worker=1.2, idle_gateway=2.5),
    ]
    found = {t.name: t for t in targets(rounds)}
    worker = found["idle worker, ended activities (% of a core)"]
    gateway = found["idle gateway, ended activities (% of a core)"]
    assert (worker.verdict, worker.shown(worker.value), worker.goal) == (MET, "1.10%", "≤ 2.00%")
    assert gateway.verdict == MET_AT_MEDIAN  # median 2.0 meets it, the worst run does not
    assert targets(Rates(1, 1, 1, 1, 1, 1))[-1].verdict == NOT_MEASURED  # a run without the idle phase
