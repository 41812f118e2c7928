"""h2load, open loop: a fixed offered rate (``--rps`` per connection × connections, the connections opened
staggered so their timers do not fire together), one request per connection in flight (HTTP/1.1), each
request's status and duration in ``--log-file`` (start µs since epoch, status, µs to the end of the answer), from
which the percentiles and the achieved rate are computed here. h2load appends to the log file: start with none."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from loadtest.bench.stats import percentile


def stagger(connections: int, rate: float) -> int:
    """Connections to open per millisecond so that they spread over one per-connection interval.

    Each h2load connection sends on its own timer (period 1 / rps) started when it connects: opened all at once,
    every connection sends in the same instant and the server sees bursts of ``connections`` requests (measured
    here: p50 7 ms at 8% of a bare app's capacity, 0.65 ms once staggered).
    """
    interval_ms = 1000.0 * connections / rate
    return max(1, math.ceil(connections / interval_ms))


def command(
    url: str, token: str, *, connections: int, rate: float, seconds: int, log_file: Path
) -> list[str]:
    """``rate`` requests/s in all over ``connections`` (opened staggered); ``rate × seconds`` requests."""
    total = max(connections, round(rate * seconds))
    return [
        "h2load",
        "--h1",
        "-t1",
        f"-c{connections}",
        f"-r{stagger(connections, rate)}",
        "--rate-period=1ms",
        f"--rps={rate / connections:.4f}",
        f"-n{total}",
        "-H",
        ":method: POST",
        "-H",
        f"authorization: Bearer {token}",
        f"--log-file={log_file}",
        url,
    ]


@dataclass(frozen=True)
class OpenLoopResult:
    requests: int
    seconds: float  # first request sent .. last answer read
    statuses: dict[str, int]
    latency_ms: dict[str, float]
    offered_rate: float
    finished_line: str  # h2load's own summary line

    @property
    def achieved_rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def parse_log(text: str) -> tuple[list[float], dict[str, int], float]:
    """Per-request durations (ms), the count of each status, and the span in seconds."""
    durations: list[float] = []
    statuses: dict[str, int] = {}
    first, last = float("inf"), float("-inf")
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        start, status, micros = int(parts[0]), parts[1], int(parts[2])
        durations.append(micros / 1000.0)
        statuses[status] = statuses.get(status, 0) + 1
        first, last = min(first, start), max(last, start + micros)
    span = (last - first) / 1e6 if durations else 0.0
    return durations, dict(sorted(statuses.items())), span


def parse(log_text: str, stdout: str, offered_rate: float) -> OpenLoopResult:
    durations, statuses, span = parse_log(log_text)
    finished = re.search(r"^finished in .*$", stdout, re.MULTILINE)
    return OpenLoopResult(
        requests=len(durations),
        seconds=span,
        statuses=statuses,
        latency_ms={
            "p50": percentile(durations, 50),
            "p99": percentile(durations, 99),
            "p999": percentile(durations, 99.9),
            "max": max(durations, default=0.0),
        },
        offered_rate=offered_rate,
        finished_line=finished[0] if finished else "",
    )
