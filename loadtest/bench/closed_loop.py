"""One closed-loop phase: wrk against a server (the gateway, a bare app, the naive app), its CPU recorded, every
answer judged (an unexpected status, an unanswered request, a socket error or a reused token fails the run), and
the figure it gives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.devstack.pidfile import log_tail
from loadtest.bench import wrk
from loadtest.bench.procs import CpuWatch, Ran, RssSampler, run_generator
from loadtest.bench.results import Figure, Phase
from loadtest.bench.servers import CLAIM_PATH, Process
from loadtest.bench.session import Session

GENERATOR_BOUND = 0.9  # of a core per wrk thread


@dataclass(frozen=True)
class Load:
    """What one wrk run sends: where, how long, what answers are expected."""

    key: str
    label: str
    server: Process
    activity_id: str
    seconds: int
    expect: frozenset[str]
    marker: str = ""  # a 409 whose body lacks it is counted as 409-other
    measured: bool = True  # a warm-up is not recorded, and any problem stops the run
    rss: bool = False  # sample the server's RSS meanwhile
    one_token_each: bool = True  # a token used twice is a problem
    tokens: Path | None = None  # the token file (default: every token minted)


def problems(load: Load, result: wrk.WrkResult) -> list[str]:
    """What is wrong with the answers of one run."""
    found = []
    unexpected = {status: n for status, n in result.statuses.items() if status not in load.expect}
    if unexpected:
        found.append(f"{load.label}: unexpected statuses {unexpected} (expected only {sorted(load.expect)})")
    if result.unanswered:
        found.append(f"{load.label}: {result.unanswered} requests still unanswered when wrk stopped")
    if result.socket_errors:
        found.append(f"{load.label}: socket errors {result.errors}")
    if load.one_token_each and result.tokens_reused:
        found.append(
            f"{load.label}: a token was used twice ({result.sent:,} requests, {result.tokens:,} tokens)"
        )
    return found


def _run_wrk(s: Session, load: Load) -> tuple[Ran, CpuWatch, RssSampler | None]:
    command = wrk.command(
        load.server.url,
        CLAIM_PATH.format(activity_id=load.activity_id),
        script=s.script,
        tokens=load.tokens or s.token_file.path,
        threads=s.opt("threads"),
        connections=s.opt("connections"),
        seconds=load.seconds,
        grace=s.opt("grace"),
        marker=load.marker,
    )
    sampler = RssSampler(load.server.pid) if load.rss else None
    with CpuWatch(s.roots(load.server)) as cpu:
        if sampler is not None:
            sampler.__enter__()
        try:
            ran = run_generator(command, load.seconds + s.opt("grace") + 120, s.dir)
        finally:
            if sampler is not None:
                sampler.__exit__()
    return ran, cpu, sampler


def http_phase(s: Session, load: Load) -> wrk.WrkResult:
    """One wrk run; a measured one is recorded with its CPU. Anything unexpected fails the run."""
    ran, cpu, sampler = _run_wrk(s, load)
    if ran.returncode != 0:
        raise RuntimeError(f"{load.label}: wrk exited with {ran.returncode}: {ran.stderr[-2000:]}")
    result = wrk.parse(ran.stdout)
    threads = s.opt("threads")
    bound = result.seconds > 0 and ran.cpu_seconds / result.seconds >= GENERATOR_BOUND * threads
    if load.measured:
        phase = Phase(load.key, load.label, result.seconds, cpu.used, "wrk", threads, ran.cpu_seconds, bound)
        if sampler is not None:
            phase.rss_max_bytes, phase.rss_processes = sampler.max_bytes, sampler.max_processes
        phase.requests = result.requests
        s.record(cpu, phase)
    found = problems(load, result)
    if found and not load.measured:  # a warm-up: the server is not working, measuring it would say nothing
        raise RuntimeError(
            "; ".join(found) + f"; {load.server.name}'s log ends:\n{log_tail(load.server.log)}"
        )
    for problem in found:
        s.fail(problem)
    lat = result.latency_ms
    s.say(
        f"{load.label}: {result.rate:,.0f} req/s; p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms,"
        f" p99.9 {lat['p999']:.2f} ms; statuses {result.statuses}"
        + (f"; wrk {ran.cpu_seconds / result.seconds:.2f} cores: generator-bound" if bound else "")
    )
    return result


def warm_up(s: Session, server: Process, activity_id: str, what: str, seconds: int) -> wrk.WrkResult:
    """An unmeasured run before a measured one (tokens reused: a 409 is expected once a user has claimed)."""
    load = Load(
        f"warm-{what}",
        f"warm-up ({what})",
        server,
        activity_id,
        max(1, seconds),
        frozenset({"201", "409"}),
        measured=False,
        one_token_each=False,
    )
    return http_phase(s, load)


def http_figure(s: Session, key: str, label: str, result: wrk.WrkResult, extra: str = "") -> Figure:
    """The figure of the phase just recorded."""
    phase = s.results.phases[-1]
    lat = result.latency_ms
    statuses = ", ".join(f"{status}: {n:,}" for status, n in result.statuses.items())
    detail = (
        f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, p99.9 {lat['p999']:.2f} ms, max {lat['max']:.1f} ms;"
        f" {result.requests:,} answers in {result.seconds:.2f} s ({statuses}){extra}"
    )
    return s.figure(Figure(key, label, result.rate, "req/s", detail, phase.generator_bound))
