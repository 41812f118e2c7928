"""The open-loop phase: h2load offers a share of the round's peak claim rate to the gateway, one user (its own
per round) with a per-user limit it never reaches, and the p99 of the answers is the figure."""

from __future__ import annotations

from gateway.tokens import mint_user_token
from loadtest.bench import h2load
from loadtest.bench.procs import CpuWatch, run_generator
from loadtest.bench.results import Figure, Phase
from loadtest.bench.servers import CLAIM_PATH, Process
from loadtest.bench.session import Session

TOKEN_TTL = 6 * 3600
GENERATOR_BOUND = 0.9  # of h2load's one core


def _run(s: Session, gateway: Process, rate: float) -> tuple[h2load.OpenLoopResult, list[str], bool]:
    """h2load offering ``rate``: its result, its command and whether it was generator-bound (phase recorded)."""
    connections, seconds = s.opt("connections"), s.opt("duration")
    user = f"bench-open-loop-{s.run}"  # each round's own: its wallet starts empty as in the first round
    token = mint_user_token(s.jwt_secret, user, f"{user}-d", ttl_seconds=TOKEN_TTL)
    log = s.dir / "h2load.log"
    log.unlink(missing_ok=True)  # h2load appends
    url = gateway.url + CLAIM_PATH.format(activity_id=s.activity("open_loop").id)
    command = h2load.command(url, token, connections=connections, rate=rate, seconds=seconds, log_file=log)
    with CpuWatch(s.roots(gateway)) as cpu:
        ran = run_generator(command, seconds * 4 + 60, s.dir)
    if ran.returncode != 0:
        raise RuntimeError(f"h2load exited with {ran.returncode}: {ran.stdout[-1000:]} {ran.stderr[-1000:]}")
    result = h2load.parse(log.read_text(), ran.stdout, rate)
    bound = result.seconds > 0 and ran.cpu_seconds / result.seconds >= GENERATOR_BOUND
    label = f"open loop at {s.a.open_loop_share:.0%} of peak"
    phase = Phase("open_loop", label, result.seconds, cpu.used, "h2load", 1, ran.cpu_seconds, bound)
    phase.requests = result.requests
    s.record(cpu, phase)
    return result, command, bound


def open_loop(s: Session, gateway: Process, peak: float) -> None:
    share = float(s.a.open_loop_share)
    rate, connections, seconds = share * peak, s.opt("connections"), s.opt("duration")
    s.say(f"open loop: {rate:,.0f} req/s offered ({share:.0%} of {peak:,.0f}) for {seconds} s by h2load")
    result, command, bound = _run(s, gateway, rate)
    s.activity("open_loop").granted = result.statuses.get("201", 0)
    unexpected = {status: n for status, n in result.statuses.items() if status != "201"}
    if unexpected:
        s.fail(f"open loop: unexpected statuses {unexpected}")
    sent = int(next(arg for arg in command if arg.startswith("-n"))[2:])
    if result.requests != sent:
        s.fail(
            f"open loop: {sent - result.requests} of {sent} requests not answered ({result.finished_line})"
        )
    lat = result.latency_ms
    statuses = ", ".join(f"{status}: {n:,}" for status, n in result.statuses.items())
    s.figure(
        Figure(
            "open_loop_p99",
            f"p99 at {share:.0%} of the peak claim rate (open loop)",
            lat["p99"],
            "ms",
            f"h2load --h1 -c {connections} --rps {rate / connections:.1f} (x {connections} ="
            f" {rate:,.0f} req/s offered, {share:.0%} of the round's claim rate), achieved"
            f" {result.achieved_rate:,.0f} req/s; p50 {lat['p50']:.2f} ms, p99.9 {lat['p999']:.2f} ms, max"
            f" {lat['max']:.1f} ms; {result.requests:,} answers ({statuses}); one user, per_user_limit 10^6",
            bound,
        )
    )
    s.say(
        f"open loop: achieved {result.achieved_rate:,.0f} of {rate:,.0f} req/s; p50 {lat['p50']:.2f} ms,"
        f" p99 {lat['p99']:.2f} ms, p99.9 {lat['p999']:.2f} ms"
    )
