"""The benchmark's pure parts: what wrk, h2load and redis-benchmark print, percentiles, the granian flags the
bare apps copy, the ratios against their targets, the correctness rule and the report. No servers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtest.bench import apps, h2load, redisbench, servers, wrk
from loadtest.bench.checks import Check
from loadtest.bench.report import Figure, Phase, Results, as_json, markdown
from loadtest.bench.stats import Rates, Target, percentile, targets
from loadtest.bench.tokens import TokenFile

WRK_TEXT = """\
Running 12s test @ http://127.0.0.1:40000
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.12ms    2.01ms  40.00ms   90.00%
    Req/Sec     6.10k   300.00     7.00k    70.00%
  Latency Distribution
     50%    4.80ms
     75%    5.90ms
     90%    7.10ms
     99%   12.34ms
  120000 requests in 12.00s, 30.00MB read
  Non-2xx or 3xx responses: 10
Requests/sec:  10000.00
Transfer/sec:      2.50MB
"""


def wrk_line(threads: list[dict[str, object]]) -> str:
    data = {
        "p50": 4800,
        "p75": 5900,
        "p90": 7100,
        "p99": 12340,
        "p999": 25000,
        "max": 40000,
        "mean": 5120.0,
        "stdev": 2010.0,
        "requests": 120000,
        "duration_us": 12000000,
        "errors": {"connect": 0, "read": 0, "write": 0, "status": 10, "timeout": 0},
        "threads": threads,
    }
    return wrk.MARKER + json.dumps(data)


def thread(sent: int, received: int, first: float, last: float, counts: dict[str, int]) -> dict[str, object]:
    return {
        "sent": sent,
        "received": received,
        "wrapped": 0,
        "first": first,
        "last": last,
        "tokens": 200_000,
        "counts": counts,
    }


def test_wrk_counts_every_thread_and_rates_over_the_active_span() -> None:
    out = WRK_TEXT + wrk_line(
        [
            thread(60000, 60000, 100.0, 110.0, {"201": 59990, "409": 10}),
            thread(60000, 60000, 100.5, 109.5, {"201": 60000}),
        ]
    )
    result = wrk.parse(out)
    assert result.requests == 120000 and result.sent == 120000 and result.unanswered == 0
    assert result.statuses == {"201": 119990, "409": 10}
    assert result.seconds == pytest.approx(10.0)
    assert result.rate == pytest.approx(12000.0)
    assert result.latency_ms["p999"] == pytest.approx(25.0)
    assert result.text_rate == pytest.approx(10000.0)
    assert result.text_latency_ms == {"p50": 4.8, "p75": 5.9, "p90": 7.1, "p99": 12.34}
    assert not result.tokens_reused  # 60,000 each of a 100,000-token share
    assert result.socket_errors == 0  # status "errors" are answers, counted by status


def test_wrk_reports_unanswered_requests_and_reused_tokens() -> None:
    out = wrk_line([thread(150_001, 150_000, 0.0, 10.0, {"201": 150_000})])
    result = wrk.parse(out)
    assert result.unanswered == 1
    assert not result.tokens_reused  # one thread: 150,001 requests of 200,000 tokens
    two = wrk.parse(wrk_line([thread(100_001, 100_001, 0.0, 1.0, {}), thread(5, 5, 0.0, 1.0, {})]))
    assert two.tokens_reused  # the first thread ran past its 100,000-token share


def test_wrk_without_the_script_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="CLAIMGATE-WRK"):
        wrk.parse(WRK_TEXT)


@pytest.mark.parametrize(
    ("text", "ms"), [("456.00us", 0.456), ("1.23ms", 1.23), ("1.02s", 1020.0), ("2.00m", 120000.0)]
)
def test_wrk_durations(text: str, ms: float) -> None:
    assert wrk.parse_duration_ms(text) == pytest.approx(ms)


def test_wrk_command_passes_the_script_its_options() -> None:
    from pathlib import Path

    cmd = wrk.command(
        "http://127.0.0.1:1",
        "/v1/activities/A/claim",
        script=Path("/s.lua"),
        tokens=Path("/t"),
        threads=2,
        connections=64,
        seconds=10,
        grace=2,
        marker="sold_out",
    )
    assert cmd[:4] == ["wrk", "-t2", "-c64", "-d12s"]
    assert cmd[cmd.index("--") + 1 :] == [
        "tokens=/t",
        "path=/v1/activities/A/claim",
        "threads=2",
        "seconds=10",
        "marker=sold_out",
    ]


H2LOAD_LOG = "1000000\t201\t2000\n1000100\t201\t1000\n1500000\t201\t3000\n2000000\t503\t500\n"
H2LOAD_OUT = """\
finished in 1.00s, 4.00 req/s, 1.00KB/s
requests: 4 total, 4 started, 4 done, 3 succeeded, 1 failed, 0 errored, 0 timeout
"""


def test_h2load_log_gives_percentiles_statuses_and_span() -> None:
    durations, statuses, span = h2load.parse_log(H2LOAD_LOG + "garbage line\n")
    assert durations == [2.0, 1.0, 3.0, 0.5]
    assert statuses == {"201": 3, "503": 1}
    assert span == pytest.approx(1.0005)
    result = h2load.parse(H2LOAD_LOG, H2LOAD_OUT, offered_rate=4.0)
    assert result.latency_ms["p50"] == 1.0 and result.latency_ms["p99"] == 3.0
    assert result.achieved_rate == pytest.approx(4 / 1.0005)
    assert result.finished_line.startswith("finished in 1.00s")


def test_h2load_command_offers_the_rate_over_its_connections() -> None:
    from pathlib import Path

    cmd = h2load.command("http://h/p", "TOKEN", connections=64, rate=8000.0, seconds=10, log_file=Path("/l"))
    assert "--rps=125.0000" in cmd and "-n80000" in cmd and "-c64" in cmd and "--h1" in cmd
    assert "authorization: Bearer TOKEN" in cmd and ":method: POST" in cmd
    # 125 req/s per connection: one each 8 ms; 8 connections opened a millisecond spread them over it
    assert "-r8" in cmd and "--rate-period=1ms" in cmd
    assert h2load.stagger(64, 2000.0) == 2 and h2load.stagger(4, 10.0) == 1


def test_redis_benchmark_csv() -> None:
    out = (
        '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",'
        '"max_latency_ms"\n"EVALSHA abc 7 k","45123.50","1.2","0.1","1.100","2.0","3.250","9.0"\n'
    )
    assert redisbench.parse_csv(out) == (45123.5, 1.1, 3.25)
    with pytest.raises(ValueError):
        redisbench.parse_csv("Error: connection refused\n")


def test_claim_call_has_the_scripts_keys_and_arguments() -> None:
    call = redisbench.claim_call("A1", "sha", 100, 90000)
    assert call[:3] == ["EVALSHA", "sha", "8"]
    keys, args = call[3:11], call[11:]
    assert all(key.startswith("{a:A1}:") for key in keys)
    assert len(args) == 16 and args[2] == "bu:__rand_int__" and args[14] == "claim"


def test_percentile_is_nearest_rank() -> None:
    samples = [float(x) for x in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 99.9) == 100.0
    assert percentile(list(reversed(samples)), 1) == 1.0
    assert percentile([], 99) == 0.0
    assert percentile([7.0], 99.9) == 7.0


def test_targets_compare_each_ratio_with_its_goal() -> None:
    rates = Rates(claim=8000, sold_out=17000, bare=20000, naive=1000, worker=6000, p99_at_80=30.0)
    found = {t.name: t for t in targets(rates)}
    assert found["claim / bare HTTP"].value == pytest.approx(0.4) and found["claim / bare HTTP"].met
    assert found["sold-out / bare HTTP"].value == pytest.approx(0.85) and found["sold-out / bare HTTP"].met
    assert found["claim / naive baseline"].met is False  # 8x, not 10x
    assert found["p99 at 80% of peak claim rate"].verdict == "not met"
    assert found["worker rate / peak claim rate"].value == pytest.approx(0.75)
    missing = {t.name: t for t in targets(Rates(None, None, None, None, None, None))}
    assert all(t.verdict == "not measured" for t in missing.values())
    assert Target("x", 20.0, "<=", 25.0, "ms").goal == "≤ 25.00 ms"


def test_granian_flags_come_from_the_gateways_command_line() -> None:
    cmdline = [
        "/v/bin/python",
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--factory",
        "--loop",
        "uvloop",
        "--host",
        "127.0.0.1",
        "--port",
        "4000",
        "--workers",
        "2",
        "--no-access-log",
        "gateway.http.app:app_from_env",
    ]
    flags = servers.granian_flags(cmdline)
    assert flags == [
        "--interface",
        "asgi",
        "--factory",
        "--loop",
        "uvloop",
        "--workers",
        "2",
        "--no-access-log",
    ]
    command = servers.granian_command(flags, 5000, "loadtest.bench.apps:raw_app")
    assert command[-5:] == ["--host", "127.0.0.1", "--port", "5000", "loadtest.bench.apps:raw_app"]
    with pytest.raises(ValueError, match="lacks"):
        servers.granian_flags(["python", "-m", "granian", "--interface", "asgi", "--port=1", "app:x"])
    with pytest.raises(ValueError, match="not a granian"):
        servers.granian_flags(["python", "-m", "uvicorn", "app:x"])


def test_a_check_holds_only_when_every_count_agrees() -> None:
    good = Check("claim", "A", 100, 100, 100, 1000, 900, 0, 0)
    assert good.ok and good.lost == 0 and good.problem() == ""
    assert not Check("claim", "A", 100, 100, 99, 1000, 900, 0, 0).ok  # a row short: lost
    assert not Check("claim", "A", 100, 101, 100, 1000, 899, 0, 0).ok  # Redis took one not answered 201
    assert not Check("claim", "A", 100, 100, 100, 1000, 900, 1, 0).ok  # a user over the limit
    assert "rows 99" in Check("claim", "A", 100, 100, 99, 1000, 900, 0, 0).problem()


def test_the_report_renders_figures_targets_and_checks() -> None:
    results = Results(command="claimgate benchmark", started="2026-01-01 00:00 UTC")
    results.figures = [
        Figure("claim_fast", "claim", 8000.0, "req/s", "p99 9 ms", generator_bound=True),
        Figure("bytes", "Redis per coupon", 812.4, "bytes"),
    ]
    results.phases = [Phase("claim", "claim", 10.0, {"app": 9.0, "valkey": 4.0}, "wrk", 1, 9.5, True)]
    results.targets = targets(Rates(8000, 17000, 20000, 1000, 9000, 12.0))
    results.checks = [Check("claim", "A", 5, 5, 5, 10, 5, 0, 0)]
    text = markdown(results)
    assert "8,000 req/s (generator-bound)" in text and "812 bytes" in text
    assert "| claim / naive baseline | 8.00x | ≥ 10.00x | not met |" in text
    assert "| claim | 10.0 | 0.90 | 0.40 | - | - | 0.95 (wrk) | 1 | generator-bound | 0.00 |" in text
    data = json.loads(as_json(results))
    assert data["passed"] is True and data["checks"][0]["ok"] is True
    assert data["targets"][0]["verdict"] == "met"


def test_the_first_tokens_file_holds_the_first_users_in_order(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "tokens.txt", "k" * 40, 600)
    tokens.grow_to(5)
    everyone = tokens.path.read_text().splitlines()
    first = tokens.first(3)
    assert first != tokens.path
    assert first.read_text().splitlines() == everyone[:3]
    assert tokens.first(9).read_text().splitlines() == everyone  # no more than there are


async def _answer(app: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, int]:
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": body, "more_body": False}

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app({"type": "http", "headers": headers}, receive, send)
    return statuses[0], received


async def test_the_raw_app_reads_a_body_only_when_one_is_declared() -> None:
    app = apps.raw_app()
    assert await _answer(app, [(b"content-length", b"0")], b"") == (201, 0)
    assert await _answer(app, [(b"content-length", b"2")], b"{}") == (201, 1)
    assert await _answer(app, [(b"transfer-encoding", b"chunked")], b"{}") == (201, 1)
