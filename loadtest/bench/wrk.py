"""wrk, closed loop: the Lua script (a token per request rotating through a file, each thread from its own
offset; a status count per thread; p99.9 from ``done``), the command line and the parsing of what it prints.

Every request is ``POST <path>`` with ``Authorization: Bearer <token>`` and no body. Each thread stops sending
``seconds`` after its first request (``delay()`` then holds each connection idle), and wrk runs ``grace`` seconds
longer, so every request sent is answered before wrk stops: the statuses counted are every answer the servers
gave, and the rate is the answers over the span from the first request sent to the last answer read. A request
still unanswered when wrk stops is reported (``unanswered``) and fails the phase. (wrk 4.1 calls the first
thread's ``request()`` once before starting, to check that the request parses; that call is not counted.)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "CLAIMGATE-WRK "

SCRIPT = r"""
-- claimgate benchmark (loadtest/bench/wrk.py): POST with a bearer token per request, tokens rotating through a
-- file, each thread from its own offset; status counts per thread; no request sent past the cutoff.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } claimgate_timespec;
int clock_gettime(int clk_id, claimgate_timespec *tp);
]]
local clock = ffi.new("claimgate_timespec")
local function now()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

local threads, created = {}, 0

function setup(thread)
  thread:set("index", created)
  created = created + 1
  table.insert(threads, thread)
end

function init(args)
  local opts = {}
  for _, arg in pairs(args) do
    local key, value = string.match(arg, "^(%w+)=(.*)$")
    if key then opts[key] = value end
  end
  tokens = {}
  for line in io.lines(opts.tokens) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  pos = math.floor(index * #tokens / tonumber(opts.threads))
  seconds = tonumber(opts.seconds)
  marker = opts.marker
  head = "POST " .. opts.path .. " HTTP/1.1\r\nHost: " .. wrk.host .. ":" .. wrk.port ..
    "\r\nAuthorization: Bearer "
  tail = "\r\nContent-Length: 0\r\n\r\n"
  counts, sent, received, wrapped, first, last, cutoff = {}, 0, 0, 0, 0, 0, 0
  ntokens = #tokens
  -- wrk calls thread 1's request() once before it starts, to check the request parses: not a request sent.
  probe = index == 0
end

function request()
  if probe then
    probe = false
    return head .. tokens[pos % ntokens + 1] .. tail
  end
  if sent == 0 then
    first = now()
    cutoff = first + seconds
  end
  sent = sent + 1
  pos = pos + 1
  if pos > ntokens then
    pos = 1
    wrapped = wrapped + 1
  end
  return head .. tokens[pos] .. tail
end

function delay()
  if sent > 0 and now() >= cutoff then return 3600000 end
  return 0
end

function response(status, headers, body)
  received = received + 1
  last = now()
  local key = tostring(status)
  if marker and status == 409 and not string.find(body, marker, 1, true) then key = "409-other" end
  counts[key] = (counts[key] or 0) + 1
end

function done(summary, latency, requests)
  local parts = {}
  for _, thread in ipairs(threads) do
    local c = thread:get("counts")
    local items = {}
    for key, value in pairs(c) do items[#items + 1] = string.format('"%s":%d', key, value) end
    parts[#parts + 1] = string.format(
      '{"sent":%d,"received":%d,"wrapped":%d,"first":%.6f,"last":%.6f,"tokens":%d,"counts":{%s}}',
      thread:get("sent"), thread:get("received"), thread:get("wrapped"), thread:get("first"),
      thread:get("last"), thread:get("ntokens"), table.concat(items, ","))
  end
  local e = summary.errors
  io.write(string.format(
    'CLAIMGATE-WRK {"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f,"stdev":%.1f,' ..
    '"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"threads":[%s]}\n',
    latency:percentile(50), latency:percentile(75), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean, latency.stdev, summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ",")))
end
"""


def write_script(directory: Path) -> Path:
    path = directory / "claim.lua"
    path.write_text(SCRIPT)
    return path


def command(
    url: str,
    path: str,
    *,
    script: Path,
    tokens: Path,
    threads: int,
    connections: int,
    seconds: int,
    grace: int,
    marker: str = "",
) -> list[str]:
    args = [f"tokens={tokens}", f"path={path}", f"threads={threads}", f"seconds={seconds}"]
    if marker:
        args.append(f"marker={marker}")
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds + grace}s",
        "--timeout",
        f"{max(2, grace + 1)}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        *args,
    ]


@dataclass
class WrkResult:
    requests: int  # answers read
    sent: int
    seconds: float  # first request sent .. last answer read (over every thread)
    statuses: dict[str, int]
    latency_ms: dict[str, float]  # p50 p75 p90 p99 p999 max mean
    errors: dict[str, int]
    wrapped: int  # times a thread went past the end of the token file
    tokens: int
    sent_per_thread: list[int] = field(default_factory=list)
    text_rate: float = 0.0  # wrk's own Requests/sec (over -d, grace included): for reference
    text_latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def unanswered(self) -> int:
        return self.sent - self.requests

    @property
    def tokens_reused(self) -> bool:
        """Whether a thread sent more requests than its share of the token file (a token used twice)."""
        share = self.tokens // max(1, len(self.sent_per_thread))
        return any(sent > share for sent in self.sent_per_thread)

    @property
    def socket_errors(self) -> int:
        return sum(v for k, v in self.errors.items() if k != "status")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_duration_ms(text: str) -> float:
    """wrk's ``1.23ms`` / ``456.00us`` / ``1.02s`` -> milliseconds."""
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_text(stdout: str) -> tuple[float, dict[str, float]]:
    """wrk's printed Requests/sec and its ``--latency`` distribution (50/75/90/99, in ms)."""
    rate_match = re.search(r"Requests/sec:\s+([0-9.]+)", stdout)
    rate = float(rate_match[1]) if rate_match else 0.0
    distribution: dict[str, float] = {}
    block = stdout.split("Latency Distribution", 1)
    if len(block) == 2:
        for pct, value in re.findall(r"^\s+([0-9.]+)%\s+(\S+)\s*$", block[1], re.MULTILINE):
            distribution["p" + format(float(pct), "g").replace(".", "")] = parse_duration_ms(value)
    return rate, distribution


def parse(stdout: str) -> WrkResult:
    """The script's ``done`` line (and wrk's own text, for reference)."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith(MARKER)), None)
    if line is None:
        raise ValueError(f"wrk printed no {MARKER.strip()} line:\n{stdout[-2000:]}")
    data = json.loads(line[len(MARKER) :])
    threads = data["threads"]
    statuses: dict[str, int] = {}
    for thread in threads:
        for key, value in thread["counts"].items():
            statuses[key] = statuses.get(key, 0) + int(value)
    started = [t["first"] for t in threads if t["sent"]]
    ended = [t["last"] for t in threads if t["received"]]
    seconds = max(ended) - min(started) if started and ended else 0.0
    rate, distribution = parse_text(stdout)
    return WrkResult(
        requests=sum(int(t["received"]) for t in threads),
        sent=sum(int(t["sent"]) for t in threads),
        seconds=seconds,
        statuses=dict(sorted(statuses.items())),
        latency_ms={k: data[k] / 1000.0 for k in ("p50", "p75", "p90", "p99", "p999", "max", "mean")},
        errors={k: int(v) for k, v in data["errors"].items()},
        wrapped=sum(int(t["wrapped"]) for t in threads),
        tokens=max((int(t["tokens"]) for t in threads), default=0),
        sent_per_thread=[int(t["sent"]) for t in threads],
        text_rate=rate,
        text_latency_ms=distribution,
    )
